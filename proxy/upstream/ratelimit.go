package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultRateLimitReserve is how many requests of the upstream's rate
// limit are kept for content that is not cached, unless
// WithRateLimitReserve says otherwise.
const DefaultRateLimitReserve = 10

// Bounds on what an upstream can make the cache wait: a hostile or
// broken Retry-After, Ratelimit-Reset or window never freezes rechecks
// for longer.
const (
	// maxRetryAfter caps a 429's wait.
	maxRetryAfter = time.Hour
	// defaultRetryAfter is a 429's wait when it gives none: short, for
	// the next answer tells more.
	defaultRetryAfter = 5 * time.Second
	// maxReset caps how far off a window's end is believed.
	maxReset = 6 * time.Hour
)

// rateLimit is what the registry last said of its rate limit (Docker
// Hub's ratelimit-limit and ratelimit-remaining headers, "100;w=21600"),
// and until when a 429 asked to wait. Only the registry's own answers
// move it: not a CDN's it redirects to, not the token realm's.
type rateLimit struct {
	mu        sync.Mutex
	limit     int // -1: not said by the last answer
	remaining int
	resetAt   time.Time // when the window is over, as far as is known
	waitUntil time.Time // a 429's Retry-After
}

// RateLimit is the upstream's rate limit as last heard; Limit is -1 when
// its last answer did not say.
type RateLimit struct {
	Limit, Remaining int
	// Reset is when the window ends, as far as is known.
	Reset time.Time
}

// observe reads an answer of the registry's. The figure is the last
// answer's: Docker Hub's window is rolling, and its HEADs (free) keep
// saying what is left; an answer without the headers forgets it. A 429
// waits its Retry-After, capped; any other answer ends a wait.
func (l *rateLimit) observe(resp *http.Response, now time.Time) {
	limit, _, okLimit := rateHeader(resp.Header.Get("Ratelimit-Limit"))
	remaining, window, okRemaining := rateHeader(resp.Header.Get("Ratelimit-Remaining"))
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case okLimit && okRemaining:
		l.limit, l.remaining = limit, remaining
		reset := window
		if s, err := strconv.Atoi(resp.Header.Get("Ratelimit-Reset")); err == nil && s >= 0 {
			reset = time.Duration(min(int64(s), int64(maxReset/time.Second))) * time.Second
		}
		l.resetAt = now.Add(min(reset, maxReset))
	case resp.StatusCode < 400:
		l.limit = -1
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		l.waitUntil = now.Add(retryAfter(resp.Header.Get("Retry-After"), now))
	case resp.StatusCode < 400:
		l.waitUntil = time.Time{}
	}
}

// rateHeader parses "76;w=21600": the count, and the window.
func rateHeader(v string) (int, time.Duration, bool) {
	if v == "" {
		return 0, 0, false
	}
	parts := strings.Split(v, ";")
	n, err := strconv.Atoi(strings.TrimSpace(parts[0]))
	if err != nil || n < 0 {
		return 0, 0, false
	}
	var window time.Duration
	for _, p := range parts[1:] {
		if k, val, ok := strings.Cut(strings.TrimSpace(p), "="); ok && k == "w" {
			if s, err := strconv.Atoi(val); err == nil && s > 0 {
				window = time.Duration(min(int64(s), int64(maxReset/time.Second))) * time.Second
			}
		}
	}
	return n, window, true
}

// retryAfter reads a Retry-After header (seconds or an HTTP date),
// capped at maxRetryAfter; a 429 without one waits defaultRetryAfter.
func retryAfter(v string, now time.Time) time.Duration {
	if s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && s >= 0 {
		return time.Duration(min(s, int64(maxRetryAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), maxRetryAfter)
	}
	return defaultRetryAfter
}

func (l *rateLimit) state() RateLimit {
	l.mu.Lock()
	defer l.mu.Unlock()
	return RateLimit{Limit: l.limit, Remaining: l.remaining, Reset: l.resetAt}
}

// waiting: a 429 asked to wait, until the time given.
func (l *rateLimit) waiting(now time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waitUntil, now.Before(l.waitUntil)
}

// sparing: the last answer left no more than reserve requests.
func (l *rateLimit) sparing(reserve int, now time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.resetAt, l.limit >= 0 && l.remaining <= reserve && now.Before(l.resetAt)
}

// Waiting reports whether a 429 asked to wait, and until when: cached
// tags are then served without asking the upstream at all.
func (c *Client) Waiting() (until time.Time, ok bool) { return c.limits.waiting(time.Now()) }

// Sparing reports whether what is left of the upstream's rate limit is
// down to the reserve: HEADs (free on Docker Hub) still go, and keep the
// figure fresh; GETs are kept for what is not cached.
func (c *Client) Sparing() bool {
	_, ok := c.limits.sparing(c.reserve, time.Now())
	return ok
}

// Throttled reports whether the upstream is being spared, for the
// status: a 429's wait, or a rate limit down to the reserve (until the
// window's end, as far as is known).
func (c *Client) Throttled() (until time.Time, ok bool) {
	now := time.Now()
	if until, ok := c.limits.waiting(now); ok {
		return until, true
	}
	return c.limits.sparing(c.reserve, now)
}

// RateLimit is the upstream's rate limit as last heard.
func (c *Client) RateLimit() RateLimit { return c.limits.state() }

// Reasons a cached tag is served without the upstream's word.
const (
	ReasonRefused   = "refused"
	ReasonTimeout   = "timeout"
	Reason5xx       = "5xx"
	Reason429       = "429"
	ReasonHTML      = "html"
	ReasonRateLimit = "ratelimit"
	ReasonOther     = "other"
)

// Reason classifies why the upstream did not answer a request.
func Reason(err error) string {
	var se *StatusError
	var netErr net.Error
	switch {
	case errors.As(err, &se) && se.StatusCode == http.StatusTooManyRequests:
		return Reason429
	case errors.As(err, &se) && se.StatusCode >= 500:
		return Reason5xx
	case errors.Is(err, ErrNotRegistry):
		return ReasonHTML
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return ReasonTimeout
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH):
		return ReasonRefused
	}
	return ReasonOther
}
