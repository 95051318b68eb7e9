package token

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Failed logins are limited per source, per user and source, and per
// user: ten failures, then one more try a minute. That is slow for a
// guesser and invisible to a person who mistyped.
const (
	failureBurst = 10
	failureEvery = time.Minute
)

// throttle limits failed logins. A login takes a slot in each bucket that
// applies before its password is checked, and gives them back when the
// password is right: however many guesses arrive at once, no more are
// checked than the buckets hold.
//
// The per-user bucket is what stops guessing spread over many sources;
// a source that has logged in as the user before skips it, so that an
// attack on a user does not lock that user out of the machines it uses.
type throttle struct {
	bySource, byUserSource, byUser *limiter

	mu    sync.Mutex
	known map[string]bool // user + "\x00" + source that logged in
}

func newThrottle() *throttle {
	every := rate.Every(failureEvery)
	return &throttle{
		bySource:     newLimiter(every, failureBurst),
		byUserSource: newLimiter(every, failureBurst),
		byUser:       newLimiter(every, failureBurst),
		known:        map[string]bool{},
	}
}

// attempt is one login holding its slots.
type attempt struct {
	t            *throttle
	user, source string
	slots        []*rate.Reservation
}

// begin takes the slots for a login of user from source; false (and no
// slots taken) when any bucket is empty.
func (t *throttle) begin(user, source string) (*attempt, bool) {
	user = userKey(user)
	a := &attempt{t: t, user: user, source: source}
	type slot struct {
		l   *limiter
		key string
	}
	buckets := []slot{{t.bySource, source}, {t.byUserSource, user + "\x00" + source}}
	if !t.isKnown(user, source) {
		buckets = append(buckets, slot{t.byUser, user})
	}
	now := time.Now()
	for _, b := range buckets {
		r := b.l.bucket(b.key).ReserveN(now, 1)
		if !r.OK() || r.DelayFrom(now) > 0 {
			r.CancelAt(now)
			a.release(now)
			return nil, false
		}
		a.slots = append(a.slots, r)
	}
	return a, true
}

// userKey is the name a user's buckets go by: a name as long as a
// request may carry (a megabyte) is kept as its hash, so that a spray
// of them costs the buckets' memory no more than short ones.
func userKey(user string) string {
	if len(user) <= 256 {
		return user
	}
	sum := sha256.Sum256([]byte(user))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// succeeded gives the slots back and remembers the source for the user.
func (a *attempt) succeeded() {
	a.release(time.Now())
	a.t.mu.Lock()
	defer a.t.mu.Unlock()
	if len(a.t.known) >= maxLimiterKeys {
		a.t.known = map[string]bool{}
	}
	a.t.known[a.user+"\x00"+a.source] = true
}

// failed keeps the slots taken: the failure counts.
func (a *attempt) failed() {}

func (a *attempt) release(now time.Time) {
	for _, r := range a.slots {
		r.CancelAt(now)
	}
	a.slots = nil
}

func (t *throttle) isKnown(user, source string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.known[user+"\x00"+source]
}

// limiter holds a token bucket per key.
type limiter struct {
	mu      sync.Mutex
	every   rate.Limit
	burst   int
	buckets map[string]*rate.Limiter
}

// maxLimiterKeys bounds memory under a spray of sources or user names;
// forgetting only gives the keys a fresh bucket.
const maxLimiterKeys = 100_000

func newLimiter(every rate.Limit, burst int) *limiter {
	return &limiter{every: every, burst: burst, buckets: map[string]*rate.Limiter{}}
}

func (l *limiter) bucket(key string) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxLimiterKeys {
			l.buckets = map[string]*rate.Limiter{}
		}
		b = rate.NewLimiter(l.every, l.burst)
		l.buckets[key] = b
	}
	return b
}

// Sources finds the client of a request: its peer address, or, when the
// peer is a trusted proxy (an ingress), the address that proxy put in
// X-Forwarded-For.
type Sources struct {
	trusted []*net.IPNet
}

// TrustProxies believes the X-Forwarded-For of peers in nets (the
// settings' --trusted-proxies, checked there).
func TrustProxies(nets []*net.IPNet) Sources { return Sources{trusted: nets} }

// Of returns the client address of r. X-Forwarded-For is read from the
// right, where the nearest proxy appended: the first address that is not
// a trusted proxy is the client. A client cannot forge its way past a
// trusted proxy, whose entry it cannot write.
func (s Sources) Of(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if len(s.trusted) == 0 {
		return host
	}
	var hops []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		for _, part := range strings.Split(h, ",") {
			if part = strings.TrimSpace(part); part != "" {
				hops = append(hops, part)
			}
		}
	}
	for i := len(hops); s.isTrusted(host) && i > 0; i-- {
		host = hops[i-1]
	}
	return host
}

func (s Sources) isTrusted(addr string) bool {
	ip := net.ParseIP(addr)
	if ip == nil {
		return false
	}
	for _, n := range s.trusted {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}
