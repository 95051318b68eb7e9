package upstream

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"time"
)

// pingCache answers the registry handshake's GET /v2/ from a recent
// answer: its status and challenge are the same for every repository,
// and a new token per repository should not cost a ping as well.
type pingCache struct {
	inner http.RoundTripper
	ttl   time.Duration

	mu      sync.Mutex
	answers map[string]pingAnswer // by URL
}

type pingAnswer struct {
	status int
	header http.Header
	at     time.Time
}

func (p *pingCache) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet || r.URL.Path != "/v2/" || r.Header.Get("Authorization") != "" {
		return p.inner.RoundTrip(r)
	}
	key := r.URL.String()
	p.mu.Lock()
	a, ok := p.answers[key]
	p.mu.Unlock()
	if ok && time.Since(a.at) < p.ttl {
		return &http.Response{StatusCode: a.status, Status: http.StatusText(a.status), Header: a.header.Clone(),
			Body: io.NopCloser(bytes.NewReader(nil)), Request: r, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}, nil
	}
	resp, err := p.inner.RoundTrip(r)
	if err != nil || (resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized) {
		return resp, err
	}
	p.mu.Lock()
	if p.answers == nil {
		p.answers = map[string]pingAnswer{}
	}
	p.answers[key] = pingAnswer{status: resp.StatusCode, header: resp.Header.Clone(), at: time.Now()}
	p.mu.Unlock()
	return resp, nil
}

// forget drops the answers: after a network failure the registry may
// have moved or changed.
func (p *pingCache) forget() {
	p.mu.Lock()
	p.answers = nil
	p.mu.Unlock()
}
