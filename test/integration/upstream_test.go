package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTagMovedUpstream: after the tag is pushed again, the next pull
// returns the new digest.
func TestTagMovedUpstream(t *testing.T) {
	e := newEnv(t)
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			repo := repoName(t)
			pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
			p := startProxy(t, e.front.URL(), openStorage(t, backend, e.minio))
			first, _ := pullAll(t, p.URL, repo, "v1")

			pushIndex(t, e.registry.Addr, repo, "v1", ociIndex(t, ociImage(t, 1), ociImage(t, 1)))
			want, _ := pullAll(t, e.registry.URL(), repo, "v1")
			got, _ := pullAll(t, p.URL, repo, "v1")
			if got == first || got != want {
				t.Fatalf("after the tag moved: got %s, want %s (was %s)", got, want, first)
			}
		})
	}
}

// TestUpstreamDown: with the upstream gone, everything cached (the index
// by tag, its children and blobs by digest) still pulls, and an uncached
// image is a prompt OCI error.
func TestUpstreamDown(t *testing.T) {
	e := newEnv(t)
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			repo := repoName(t)
			pushIndex(t, e.registry.Addr, repo, "v1", ociIndex(t, ociImage(t, 2), dockerImage(t, 2)))
			pushImage(t, e.registry.Addr, repo, "never-pulled", ociImage(t, 1))
			p := startProxy(t, e.front.URL(), openStorage(t, backend, e.minio))
			wantRoot, want := pullAll(t, p.URL, repo, "v1")

			e.front.Stop()
			defer e.front.Start()
			gotRoot, got := pullAll(t, p.URL, repo, "v1")
			if gotRoot != wantRoot || len(got) != len(want) {
				t.Fatalf("with the upstream down: root %s (want %s), %d objects (want %d)", gotRoot, wantRoot, len(got), len(want))
			}
			for d := range want {
				if strings.HasPrefix(want[d].contentType, "application/") {
					pullManifest(t, p.URL, repo, d, map[string]object{})
				}
			}

			start := time.Now()
			resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/never-pulled", acceptAll)
			ociError(t, resp, body, http.StatusServiceUnavailable, "UNAVAILABLE")
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("an uncached pull with the upstream down took %s", d)
			}
			resp, body = get(t, p.URL+"/v2/"+repo+"/blobs/sha256:"+strings.Repeat("ab", 32), "")
			ociError(t, resp, body, http.StatusServiceUnavailable, "UNAVAILABLE")
		})
	}
}

// TestUpstreamErrorPages: an upstream that rate-limits or answers with an
// HTML page does not stop cached content, and never reaches the client as
// HTML.
func TestUpstreamErrorPages(t *testing.T) {
	e := newEnv(t)
	html := func(status int) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/v2/" {
				return false
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(status)
			io.WriteString(w, "<!DOCTYPE html>\n<html><title>The page you're looking for could not be found</title></html>")
			return true
		}
	}
	cases := []struct {
		name       string
		fault      func(w http.ResponseWriter, r *http.Request) bool
		wantStatus int
		wantCode   string
	}{
		{"429", func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/v2/" {
				return false
			}
			w.Header().Set("Retry-After", "60")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}`)
			return true
		}, http.StatusTooManyRequests, "TOOMANYREQUESTS"},
		{"html 404", html(http.StatusNotFound), http.StatusNotFound, "MANIFEST_UNKNOWN"},
		{"html 200", html(http.StatusOK), http.StatusServiceUnavailable, "UNAVAILABLE"},
		{"500", func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/v2/" {
				return false
			}
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}, http.StatusBadGateway, "UNAVAILABLE"},
	}
	for _, backend := range backends {
		for _, c := range cases {
			t.Run(backend+"/"+c.name, func(t *testing.T) {
				repo := repoName(t)
				pushIndex(t, e.registry.Addr, repo, "v1", ociIndex(t, ociImage(t, 1), ociImage(t, 1)))
				pushImage(t, e.registry.Addr, repo, "never-pulled", ociImage(t, 1))
				p := startProxy(t, e.front.URL(), openStorage(t, backend, e.minio))
				wantRoot, want := pullAll(t, p.URL, repo, "v1")

				e.front.Fault(c.fault)
				defer e.front.Fault(nil)
				gotRoot, got := pullAll(t, p.URL, repo, "v1")
				if gotRoot != wantRoot || len(got) != len(want) {
					t.Fatalf("root %s (want %s), %d objects (want %d)", gotRoot, wantRoot, len(got), len(want))
				}
				resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/never-pulled", acceptAll)
				ociError(t, resp, body, c.wantStatus, c.wantCode)
				if c.wantStatus == http.StatusTooManyRequests && resp.Header.Get("Retry-After") != "60" {
					t.Errorf("Retry-After %q, want the upstream's 60", resp.Header.Get("Retry-After"))
				}
			})
		}
	}
}

// TestGenericContentType: an upstream that serves manifests as
// application/json or with no Content-Type still gives clients the right
// type, detected from the body; the bytes are unchanged.
func TestGenericContentType(t *testing.T) {
	e := newEnv(t)
	for _, ct := range []string{"application/json", "text/plain", ""} {
		t.Run(fmt.Sprintf("%q", ct), func(t *testing.T) {
			repo := repoName(t)
			a, b := ociImage(t, 1), ociImage(t, 1)
			pushImage(t, e.registry.Addr, repo, "", a)
			pushImage(t, e.registry.Addr, repo, "", b)
			raw := fmt.Sprintf(`{"schemaVersion":2,"manifests":[%s,%s]}`, descriptorJSON(t, a, nil), descriptorJSON(t, b, nil))
			pushRaw(t, e.registry.Addr, repo, "v1", "application/vnd.oci.image.index.v1+json", []byte(raw))

			e.front.Fault(e.front.Alter("manifests", func(w http.ResponseWriter, resp *http.Response) {
				for k, v := range resp.Header {
					w.Header()[k] = v
				}
				w.Header().Del("Content-Type")
				if ct != "" {
					w.Header().Set("Content-Type", ct)
				}
				w.WriteHeader(resp.StatusCode)
				io.Copy(w, resp.Body)
			}))
			defer e.front.Fault(nil)
			p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
			resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/v1", acceptAll)
			if got := resp.Header.Get("Content-Type"); got != "application/vnd.oci.image.index.v1+json" {
				t.Errorf("Content-Type %q, want the OCI index type", got)
			}
			if string(body) != raw {
				t.Errorf("body changed:\n%s\nwant\n%s", body, raw)
			}
			resp, _ = get(t, p.URL+"/v2/"+repo+"/manifests/"+digestOf(t, a).String(), acceptAll)
			if got := resp.Header.Get("Content-Type"); got != "application/vnd.oci.image.manifest.v1+json" {
				t.Errorf("child Content-Type %q, want the OCI manifest type", got)
			}
		})
	}
}

// TestSchema1 is refused with a clear error, never served as something
// else.
func TestSchema1(t *testing.T) {
	e := newEnv(t)
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			return false
		}
		w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
		io.WriteString(w, `{"schemaVersion":1,"name":"old","tag":"v1","fsLayers":[],"history":[],"signatures":[]}`)
		return true
	})
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	resp, body := get(t, p.URL+"/v2/old/manifests/v1", acceptAll)
	ociError(t, resp, body, http.StatusBadRequest, "MANIFEST_INVALID")
	if !strings.Contains(string(body), "schema 1") {
		t.Errorf("error does not say why: %s", body)
	}
}
