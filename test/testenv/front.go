package testenv

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Front sits between the proxy under test and the real upstream registry.
// It counts what the upstream is asked, and it can make the upstream fail
// in the ways a real registry cannot be made to: stop answering on the
// same port, rate-limit, answer HTML, cut or corrupt a blob.
type Front struct {
	t        T
	Addr     string
	target   *url.URL
	rp       *httputil.ReverseProxy
	mu       sync.Mutex
	counts   map[string]int
	fault    func(w http.ResponseWriter, r *http.Request) bool
	srv      *http.Server
	listener net.Listener
	bytes    map[string]int64
	token    bool
}

// StartFront starts a front for the registry at target.
func StartFront(t T, target string) *Front {
	t.Helper()
	return StartFrontAt(t, FreeAddr(t), target)
}

// StartFrontAt is StartFront on addr.
func StartFrontAt(t T, addr, target string) *Front {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	f := &Front{t: t, Addr: addr, target: u, counts: map[string]int{}, bytes: map[string]int64{}}
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

// Bytes returns how many body bytes the upstream sent for this kind of
// path.
func (f *Front) Bytes(kind string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bytes[kind]
}

// Reset zeroes the counters.
func (f *Front) Reset() {
	f.mu.Lock()
	f.counts = map[string]int{}
	f.bytes = map[string]int64{}
	f.mu.Unlock()
}

// RequireToken makes the upstream challenge like Docker Hub: /v2/ and
// every request without a Bearer token get a 401 pointing at /token,
// which hands out tokens to anyone.
func (f *Front) RequireToken() {
	f.mu.Lock()
	f.token = true
	f.mu.Unlock()
}

func (f *Front) serve(w http.ResponseWriter, r *http.Request) {
	kind := PathKind(r.URL.Path)
	f.mu.Lock()
	f.counts[r.Method+" "+kind]++
	fault, token := f.fault, f.token
	f.mu.Unlock()
	if token && kind == "token" {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"token":"anonymous-pull","access_token":"anonymous-pull","expires_in":300}`))
		return
	}
	if token && r.Header.Get("Authorization") != "Bearer anonymous-pull" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+f.Addr+`/token",service="registry.test"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
		return
	}
	// Counted as they go out, a fault's bytes too: a test reads the
	// count while a long response is still being sent.
	cw := &countingWriter{ResponseWriter: w, front: f, kind: kind}
	if fault != nil && fault(cw, r) {
		return
	}
	f.rp.ServeHTTP(cw, r)
}

type countingWriter struct {
	http.ResponseWriter
	front *Front
	kind  string
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.front.mu.Lock()
	c.front.bytes[c.kind] += int64(n)
	c.front.mu.Unlock()
	return n, err
}

// Hijack is for faults that cut the connection.
func (c *countingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(c.ResponseWriter).Hijack()
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (c *countingWriter) Flush() {
	if fl, ok := c.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
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
	case p == "/token":
		return "token"
	}
	return "other"
}

// Alter returns a fault that lets the registry answer requests to this
// kind of path ("blobs", "manifests"), then hands the answer to fn to
// send the client, altered.
func (f *Front) Alter(kind string, fn func(w http.ResponseWriter, resp *http.Response)) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if PathKind(r.URL.Path) != kind {
			return false
		}
		out := r.Clone(r.Context())
		out.URL.Scheme, out.URL.Host, out.Host, out.RequestURI = f.target.Scheme, f.target.Host, f.target.Host, ""
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		fn(w, resp)
		return true
	}
}

// TrickleBlobs makes whole-blob downloads arrive at about 1 MB/s, while
// ranged requests go at full speed: a registry far away, whose round
// trips are short next to what its bandwidth costs a big layer.
func (f *Front) TrickleBlobs() {
	f.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || r.Header.Get("Range") != "" {
			return false
		}
		return f.Alter("blobs", func(w http.ResponseWriter, resp *http.Response) {
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(resp.StatusCode)
			buf := make([]byte, 64<<10)
			for {
				n, err := resp.Body.Read(buf)
				if _, werr := w.Write(buf[:n]); werr != nil || err != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(64 * time.Millisecond)
			}
		})(w, r)
	})
}

// CutBlobsEvery makes every blob GET's answer, ranged ones too, stop
// after n bytes, the connection closed and the rest unsent: an upstream
// whose long transfers break, which a cache must resume.
func (f *Front) CutBlobsEvery(n int64) {
	f.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet {
			return false
		}
		return f.Alter("blobs", func(w http.ResponseWriter, resp *http.Response) {
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(resp.StatusCode)
			buf := make([]byte, 1<<20)
			if sent, _ := io.CopyBuffer(w, io.LimitReader(resp.Body, n), buf); sent < n {
				return
			}
			if more, _ := resp.Body.Read(buf[:1]); more == 0 {
				return // it ended there
			}
			Cut(w)
		})(w, r)
	})
}

// Cut closes a response's connection where it stands, after sending what
// was written so far.
func Cut(w http.ResponseWriter) {
	w.(http.Flusher).Flush()
	if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
		conn.Close()
	}
}
