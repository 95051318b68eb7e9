package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// The Content-Type of a manifest is never the upstream's or the author's
// choice when that is not a manifest type: a browser would render
// text/html or SVG from this origin.
func TestManifestContentTypeIsAManifestType(t *testing.T) {
	e := newEnv(t)
	body := `{"schemaVersion":2,"mediaType":"text/html","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` +
		strings.Repeat("a", 64) + `","size":2},"layers":[],"annotations":{"x":"<script>alert(1)</script>"}}`
	sum := sha256.Sum256([]byte(body))
	d := "sha256:" + hex.EncodeToString(sum[:])
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			return false
		}
		w.Header().Set("Content-Type", "image/svg+xml")
		w.Header().Set("Docker-Content-Digest", d)
		if r.Method == http.MethodGet {
			w.Write([]byte(body))
		}
		return true
	})
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	for _, ref := range []string{"v1", d, d} { // the tag, the digest, and the digest from storage
		resp, got := get(t, p.URL+"/v2/evil/page/manifests/"+ref, acceptAll)
		if resp.StatusCode != 200 || string(got) != body || resp.Header.Get("Docker-Content-Digest") != d {
			t.Fatalf("%s: %s, %d bytes, digest %s", ref, resp.Status, len(got), resp.Header.Get("Docker-Content-Digest"))
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/vnd.oci.image.manifest.v1+json" {
			t.Errorf("%s: served as %q", ref, ct)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no X-Content-Type-Options: nosniff", ref)
		}
	}
}

// A blob HEAD whose upstream HEAD gave no length answers without one,
// never with a negative Content-Length.
func TestBlobHeadWithoutUpstreamLength(t *testing.T) {
	e := newEnv(t)
	d := "sha256:" + strings.Repeat("b", 64)
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodHead || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Docker-Content-Digest", d)
		w.WriteHeader(http.StatusOK)
		return true
	})
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	resp, err := http.Head(p.URL + "/v2/some/repo/blobs/" + d)
	if err != nil {
		t.Fatalf("HEAD: %v (a malformed Content-Length?)", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d {
		t.Fatalf("HEAD: %s %v", resp.Status, resp.Header)
	}
	if cl := resp.Header.Get("Content-Length"); strings.HasPrefix(cl, "-") {
		t.Fatalf("Content-Length %s", cl)
	}
}

// An upstream's redirect to another service on this machine is not
// followed: its bytes never reach the client, and it sees no request.
func TestRedirectToLoopbackServiceRefused(t *testing.T) {
	e := newEnv(t)
	var hits atomic.Int64
	secret := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write([]byte("internal secret: the admin password is hunter2"))
	}))
	defer secret.Close()
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		http.Redirect(w, r, secret.URL+"/admin", http.StatusTemporaryRedirect)
		return true
	})
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	d := "sha256:" + strings.Repeat("c", 64)
	resp, body := get(t, p.URL+"/v2/some/repo/blobs/"+d, "")
	if strings.Contains(string(body), "secret") || hits.Load() != 0 {
		t.Fatalf("the redirect was followed: %d requests to the other service, the client got %q", hits.Load(), body)
	}
	ociError(t, resp, body, http.StatusBadGateway, "UNAVAILABLE")
}
