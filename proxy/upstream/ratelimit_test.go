package upstream

import (
	"errors"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// The rate-limit headers as Docker Hub sends them, and as it might: the
// window, a reset, a 429's Retry-After in seconds or as a date.
func TestRateLimitHeaders(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	answer := func(status int, h ...string) *http.Response {
		resp := &http.Response{StatusCode: status, Header: http.Header{}}
		for i := 0; i+1 < len(h); i += 2 {
			resp.Header.Set(h[i], h[i+1])
		}
		return resp
	}
	for _, c := range []struct {
		name     string
		resp     *http.Response
		reserve  int
		throttle bool
		until    time.Time
	}{
		{"plenty left", answer(200, "Ratelimit-Limit", "100;w=21600", "Ratelimit-Remaining", "76;w=21600"), 10, false, time.Time{}},
		{"at the reserve", answer(200, "Ratelimit-Limit", "100;w=21600", "Ratelimit-Remaining", "10;w=21600"), 10, true, now.Add(6 * time.Hour)},
		{"a reset sooner than the window", answer(200, "Ratelimit-Limit", "100;w=21600", "Ratelimit-Remaining", "0;w=21600", "Ratelimit-Reset", "90"), 10, true, now.Add(90 * time.Second)},
		{"no headers", answer(200), 10, false, time.Time{}},
		{"garbage", answer(200, "Ratelimit-Limit", "lots", "Ratelimit-Remaining", "-1"), 10, false, time.Time{}},
		{"429 in seconds", answer(429, "Retry-After", "30"), 10, true, now.Add(30 * time.Second)},
		{"429 as a date", answer(429, "Retry-After", now.Add(2*time.Minute).Format(http.TimeFormat)), 10, true, now.Add(2 * time.Minute)},
		{"429 saying nothing", answer(429), 10, true, now.Add(time.Minute)},
	} {
		l := rateLimit{limit: -1}
		l.observe(c.resp, now)
		until, ok := l.throttled(c.reserve, now)
		if ok != c.throttle || !until.Equal(c.until) {
			t.Errorf("%s: throttled %v until %v, want %v until %v", c.name, ok, until, c.throttle, c.until)
		}
		if _, ok := l.throttled(c.reserve, c.until.Add(time.Second)); ok && c.throttle {
			t.Errorf("%s: still throttled after %v", c.name, c.until)
		}
	}
}

func TestReason(t *testing.T) {
	for err, want := range map[error]string{
		&StatusError{StatusCode: 429}:                                     Reason429,
		fmt.Errorf("x: %w", &StatusError{StatusCode: 503}):                Reason5xx,
		fmt.Errorf("%w: %w", ErrUnreachable, ErrNotRegistry):              ReasonHTML,
		fmt.Errorf("%w: %w", ErrUnreachable, syscall.ECONNREFUSED):        ReasonRefused,
		fmt.Errorf("%w: %w", ErrUnreachable, errors.New("weird failure")): ReasonOther,
	} {
		if got := Reason(err); got != want {
			t.Errorf("Reason(%v) = %s, want %s", err, got, want)
		}
	}
}
