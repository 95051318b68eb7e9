package testenv

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// Front sits between the proxy under test and the real upstream registry.
// It counts what the upstream is asked, and it can make the upstream fail
// in the ways a real registry cannot be made to: stop answering on the
// same port, rate-limit, answer HTML, cut or corrupt a blob.
type Front struct {
	t        testing.TB
	Addr     string
	target   *url.URL
	rp       *httputil.ReverseProxy
	mu       sync.Mutex
	counts   map[string]int
	fault    func(w http.ResponseWriter, r *http.Request) bool
	srv      *http.Server
	listener net.Listener
}

// StartFront starts a front for the registry at target.
func StartFront(t testing.TB, target string) *Front {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	f := &Front{t: t, Addr: FreeAddr(t), target: u, counts: map[string]int{}}
	f.rp = httputil.NewSingleHostReverseProxy(u)
	f.Start()
	t.Cleanup(f.Stop)
	return f
}

// URL is the front's base URL, to give the proxy as its upstream.
func (f *Front) URL() string { return "http://" + f.Addr }

// Start (re)opens the front on its address.
func (f *Front) Start() {
	f.t.Helper()
	l, err := net.Listen("tcp", f.Addr)
	if err != nil {
		f.t.Fatal(err)
	}
	f.listener = l
	f.srv = &http.Server{Handler: http.HandlerFunc(f.serve)}
	go f.srv.Serve(l)
}

// Stop closes the front and every connection: the upstream is gone, and
// connecting to it is refused.
func (f *Front) Stop() {
	if f.srv != nil {
		f.srv.Close()
		f.srv = nil
	}
}

// Fault installs a function that may answer a request itself (returning
// true) instead of the registry. nil removes it.
func (f *Front) Fault(fn func(w http.ResponseWriter, r *http.Request) bool) {
	f.mu.Lock()
	f.fault = fn
	f.mu.Unlock()
}

// Count returns how many requests with this method went to this kind of
// path ("manifests", "blobs", "tags", "referrers", "ping").
func (f *Front) Count(method, kind string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[method+" "+kind]
}

// Reset zeroes the counters.
func (f *Front) Reset() {
	f.mu.Lock()
	f.counts = map[string]int{}
	f.mu.Unlock()
}

func (f *Front) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.counts[r.Method+" "+PathKind(r.URL.Path)]++
	fault := f.fault
	f.mu.Unlock()
	if fault != nil && fault(w, r) {
		return
	}
	f.rp.ServeHTTP(w, r)
}

// PathKind classifies a /v2 path.
func PathKind(p string) string {
	switch {
	case p == "/v2/" || p == "/v2":
		return "ping"
	case strings.Contains(p, "/manifests/"):
		return "manifests"
	case strings.Contains(p, "/blobs/"):
		return "blobs"
	case strings.HasSuffix(p, "/tags/list"):
		return "tags"
	case strings.Contains(p, "/referrers/"):
		return "referrers"
	}
	return "other"
}

// Passthrough returns the upstream's answer to r, for faults that alter it.
func (f *Front) Passthrough(ctx context.Context, r *http.Request) (*http.Response, error) {
	out := r.Clone(ctx)
	out.URL.Scheme, out.URL.Host, out.Host, out.RequestURI = f.target.Scheme, f.target.Host, f.target.Host, ""
	return http.DefaultTransport.RoundTrip(out)
}
