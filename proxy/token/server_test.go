package token

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Failed and throttled logins are counted.
func TestFailureMetric(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "alice"), []byte("s3cret"), 0o600)
	users, err := LoadUsers(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s := NewServer(NewSigner(newKey(t), "t", nil), users, WithMetrics(reg))
	for i := 0; i < 12; i++ {
		req := httptest.NewRequest(http.MethodGet, "/token", nil)
		req.SetBasicAuth("alice", "wrong")
		s.ServeHTTP(httptest.NewRecorder(), req)
	}
	if got := testutil.ToFloat64(s.failures.WithLabelValues("bad_credentials")); got != 10 {
		t.Errorf("bad_credentials %v, want 10", got)
	}
	if got := testutil.ToFloat64(s.failures.WithLabelValues("throttled")); got != 2 {
		t.Errorf("throttled %v, want 2", got)
	}
	// Another user from another source is not throttled by alice's.
	req := httptest.NewRequest(http.MethodGet, "/token", nil)
	req.RemoteAddr = "192.0.2.9:1234"
	w := httptest.NewRecorder()
	s.ServeHTTP(w, req)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("an anonymous request where logins are required: %d, want 401", w.Code)
	}
}

// An open cache lets in clients that send credentials anyway (stored for
// the host, or set in containerd's hosts.toml).
func TestAnonymousIgnoresCredentials(t *testing.T) {
	signer := NewSigner(newKey(t), "t", nil)
	s := NewServer(signer, nil)
	req := httptest.NewRequest(http.MethodGet, "/token?scope=repository:a:pull", nil)
	req.SetBasicAuth("someone", "whatever")
	w := httptest.NewRecorder()
	s.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("token with credentials at an open cache: %d %s", w.Code, w.Body)
	}
	g := NewGuard(signer, GuardOptions{Anonymous: true, Service: "t"})
	v2 := httptest.NewRequest(http.MethodGet, "/v2/a/manifests/x", nil)
	v2.SetBasicAuth("someone", "whatever")
	if user, err := g.Authorize(v2, "a"); err != nil || user != "anonymous" {
		t.Fatalf("Basic credentials at an open cache: %q, %v", user, err)
	}
	v2.Header.Set("Authorization", "Bearer forged")
	if _, err := g.Authorize(v2, "a"); err == nil {
		t.Fatal("a forged bearer token passed at an open cache")
	}
}
