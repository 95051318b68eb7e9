package token

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Failed and throttled logins are counted.
func TestFailureMetric(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "alice"), []byte("s3cret"), 0o600)
	users, err := LoadUsers(dir)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s := NewServer(NewSigner(newKey(t), "t", nil), users, reg, logr.Discard())
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
