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
// window, a reset, a 429's Retry-After in seconds or as a date, and
// values that would freeze the cache for years, capped.
func TestRateLimitHeaders(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name         string
		resp         *http.Response
		sparing      bool
		sparingUntil time.Time
		waitingUntil time.Time // zero: not waiting
	}{
		{"plenty left", answer(200, "Ratelimit-Limit", "100;w=21600", "Ratelimit-Remaining", "76;w=21600"), false, time.Time{}, time.Time{}},
		{"at the reserve", answer(200, "Ratelimit-Limit", "100;w=21600", "Ratelimit-Remaining", "10;w=21600"), true, now.Add(6 * time.Hour), time.Time{}},
		{"a reset sooner than the window", answer(200, "Ratelimit-Limit", "100;w=21600", "Ratelimit-Remaining", "0;w=21600", "Ratelimit-Reset", "90"), true, now.Add(90 * time.Second), time.Time{}},
		{"a window of decades", answer(200, "Ratelimit-Limit", "100;w=999999999", "Ratelimit-Remaining", "0;w=999999999"), true, now.Add(maxReset), time.Time{}},
		{"a reset of decades", answer(200, "Ratelimit-Limit", "100", "Ratelimit-Remaining", "0", "Ratelimit-Reset", "999999999"), true, now.Add(maxReset), time.Time{}},
		{"no headers", answer(200), false, time.Time{}, time.Time{}},
		{"garbage", answer(200, "Ratelimit-Limit", "lots", "Ratelimit-Remaining", "-1"), false, time.Time{}, time.Time{}},
		{"429 in seconds", answer(429, "Retry-After", "30"), false, time.Time{}, now.Add(30 * time.Second)},
		{"429 as a date", answer(429, "Retry-After", now.Add(2*time.Minute).Format(http.TimeFormat)), false, time.Time{}, now.Add(2 * time.Minute)},
		{"429 saying nothing", answer(429), false, time.Time{}, now.Add(defaultRetryAfter)},
		{"429 for decades", answer(429, "Retry-After", "999999999"), false, time.Time{}, now.Add(maxRetryAfter)},
		{"429 until 2058", answer(429, "Retry-After", now.AddDate(32, 0, 0).Format(http.TimeFormat)), false, time.Time{}, now.Add(maxRetryAfter)},
	} {
		l := rateLimit{limit: -1}
		l.observe(c.resp, now)
		until, sparing := l.sparing(10, now)
		if sparing != c.sparing || (sparing && !until.Equal(c.sparingUntil)) {
			t.Errorf("%s: sparing %v until %v, want %v until %v", c.name, sparing, until, c.sparing, c.sparingUntil)
		}
		until, waiting := l.waiting(now)
		if waiting != !c.waitingUntil.IsZero() || (waiting && !until.Equal(c.waitingUntil)) {
			t.Errorf("%s: waiting %v until %v, want until %v", c.name, waiting, until, c.waitingUntil)
		}
	}
}

func answer(status int, h ...string) *http.Response {
	resp := &http.Response{StatusCode: status, Header: http.Header{}}
	for i := 0; i+1 < len(h); i += 2 {
		resp.Header.Set(h[i], h[i+1])
	}
	return resp
}

// One 429 with "0 left in a 6 h window" does not freeze anything: the
// next answers say what is left (Docker Hub's window rolls), an answer
// without the headers forgets the figure, and a good answer ends a 429's
// wait early.
func TestRateLimitFollowsTheAnswers(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	l := rateLimit{limit: -1}
	l.observe(answer(429, "Ratelimit-Limit", "100;w=21600", "Ratelimit-Remaining", "0;w=21600", "Retry-After", "600"), now)
	if _, ok := l.waiting(now); !ok {
		t.Fatal("a 429 did not wait")
	}
	if _, ok := l.sparing(10, now); !ok {
		t.Fatal("0 left is not sparing")
	}
	now = now.Add(10 * time.Second)
	l.observe(answer(200, "Ratelimit-Limit", "100;w=21600", "Ratelimit-Remaining", "40;w=21600"), now)
	if _, ok := l.waiting(now); ok {
		t.Error("a good answer did not end the wait")
	}
	if _, ok := l.sparing(10, now); ok {
		t.Error("40 left is still sparing: the figure of the 429 was assumed for the whole window")
	}
	l.observe(answer(200, "Ratelimit-Limit", "100;w=21600", "Ratelimit-Remaining", "2;w=21600"), now)
	l.observe(answer(200), now)
	if _, ok := l.sparing(10, now); ok {
		t.Error("an answer without the headers kept an old figure")
	}
	l.observe(answer(429), now)
	l.observe(answer(404), now)
	if _, ok := l.waiting(now); !ok {
		t.Error("a 404 ended a 429's wait: only a good answer does")
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
