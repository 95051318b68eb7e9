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

// rateLimit is what the upstream last said of its rate limit (Docker
// Hub's ratelimit-limit and ratelimit-remaining headers, "100;w=21600"),
// and until when a 429 asked to wait.
type rateLimit struct {
	mu        sync.Mutex
	limit     int // -1: never said
	remaining int
	resetAt   time.Time // when the window is over, as far as is known
	waitUntil time.Time // a 429's Retry-After
}

// RateLimit is the upstream's rate limit as last heard; Limit is -1 when
// it never said.
type RateLimit struct {
	Limit, Remaining int
	// Reset is when the window ends, as far as is known.
	Reset time.Time
}

// observe reads a response's rate-limit headers.
func (l *rateLimit) observe(resp *http.Response, now time.Time) {
	limit, _, okLimit := rateHeader(resp.Header.Get("Ratelimit-Limit"))
	remaining, window, okRemaining := rateHeader(resp.Header.Get("Ratelimit-Remaining"))
	l.mu.Lock()
	defer l.mu.Unlock()
	if okLimit && okRemaining {
		l.limit, l.remaining = limit, remaining
		reset := window
		if s, err := strconv.Atoi(resp.Header.Get("Ratelimit-Reset")); err == nil && s >= 0 {
			reset = time.Duration(s) * time.Second
		}
		l.resetAt = now.Add(reset)
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		l.waitUntil = now.Add(retryAfter(resp.Header.Get("Retry-After"), now))
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
				window = time.Duration(s) * time.Second
			}
		}
	}
	return n, window, true
}

// retryAfter reads a Retry-After header (seconds or an HTTP date); a
// 429 without one waits a minute.
func retryAfter(v string, now time.Time) time.Duration {
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return time.Minute
}

func (l *rateLimit) state() RateLimit {
	l.mu.Lock()
	defer l.mu.Unlock()
	return RateLimit{Limit: l.limit, Remaining: l.remaining, Reset: l.resetAt}
}

// throttled: a 429 asked to wait, or no more than reserve requests are
// left of the window. It ends when the wait or the window does.
func (l *rateLimit) throttled(reserve int, now time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	until := time.Time{}
	if now.Before(l.waitUntil) {
		until = l.waitUntil
	}
	if l.limit >= 0 && l.remaining <= reserve && now.Before(l.resetAt) && l.resetAt.After(until) {
		until = l.resetAt
	}
	return until, !until.IsZero()
}

// Throttled reports whether requests that can do without the upstream
// should, and until when: the upstream answered 429, or what is left of
// its rate limit is down to the reserve.
func (c *Client) Throttled() (until time.Time, ok bool) {
	return c.limits.throttled(c.reserve, time.Now())
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
