package integration

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/depproxy/depproxy/proxy/cache"
)

// TestPrefetch: when a tag brings an index, the children of the chosen
// platforms and their blobs are cached without a client asking, so they
// pull with the upstream gone; other platforms are not fetched.
func TestPrefetch(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	amd, arm := ociImage(t, 2), ociImage(t, 2) // ociIndex: amd64, arm64
	pushIndex(t, e.registry.Addr, repo, "v1", ociIndex(t, amd, arm))
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil),
		cache.WithPrefetch([]v1.Platform{{OS: "linux", Architecture: "amd64"}}))

	pullManifest0(t, p.URL, repo, "v1")
	m, _ := amd.Manifest()
	deadline := time.Now().Add(30 * time.Second)
	for _, l := range m.Layers {
		for _, err := p.Server.Storage().Stat(context.Background(), blobKey(l.Digest)); err != nil; _, err = p.Server.Storage().Stat(context.Background(), blobKey(l.Digest)) {
			if time.Now().After(deadline) {
				t.Fatalf("prefetch did not cache the amd64 image's layer %s: %v", l.Digest, err)
			}
			sleep()
		}
	}
	e.front.Stop()
	defer e.front.Start()
	pullManifest(t, p.URL, repo, digestOf(t, amd).String(), map[string]object{})
	resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/"+digestOf(t, arm).String(), acceptAll)
	ociError(t, resp, body, http.StatusServiceUnavailable, "UNAVAILABLE")
}

// pullManifest0 fetches only the manifest itself, not what it references.
func pullManifest0(t *testing.T, base, repo, ref string) {
	t.Helper()
	resp, body := get(t, base+"/v2/"+repo+"/manifests/"+ref, acceptAll)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s:%s: %s %s", repo, ref, resp.Status, body)
	}
}

// TestTokenChallengeAndRedirects: behind a Docker-Hub-like token
// challenge, the proxy fetches one token and reuses it; a blob redirected
// to another host (a CDN) is fetched there without the registry's token.
func TestTokenChallengeAndRedirects(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	data, d := pushBlob(t, e.registry.Addr, repo, 1<<20)
	var mu sync.Mutex
	var cdnAuth []string
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		cdnAuth = append(cdnAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Write(data)
	}))
	defer cdn.Close()
	e.front.RequireToken()
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
			http.Redirect(w, r, cdn.URL+"/layer", http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	for i := 0; i < 3; i++ {
		_, body := get(t, p.URL+"/v2/"+repo+"/blobs/"+d.String(), "")
		if sha(body) != sha(data) {
			t.Fatalf("got %d bytes hashing to %s", len(body), sha(body))
		}
	}
	if n := e.front.Count("GET", "token"); n != 1 {
		t.Errorf("%d token fetches, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(cdnAuth) != 1 {
		t.Errorf("the CDN was asked %d times, want once (then cached)", len(cdnAuth))
	}
	for _, a := range cdnAuth {
		if a != "" {
			t.Errorf("the registry's credentials went to the CDN: %q", a)
		}
	}
}

// TestRecheckInterval: within the interval a cached tag is served with no
// upstream call at all; with 0, each tag request costs one HEAD.
func TestRecheckInterval(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	for _, c := range []struct {
		interval  time.Duration
		wantHEADs int
	}{{0, 3}, {time.Hour, 0}} {
		p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil), cache.WithRecheckInterval(c.interval))
		pullManifest0(t, p.URL, repo, "v1")
		e.front.Reset()
		for i := 0; i < 3; i++ {
			pullManifest0(t, p.URL, repo, "v1")
		}
		if n := e.front.Count("HEAD", "manifests"); n != c.wantHEADs {
			t.Errorf("recheck %s: %d HEADs for 3 pulls, want %d", c.interval, n, c.wantHEADs)
		}
		if n := e.front.Count("GET", "manifests"); n != 0 {
			t.Errorf("recheck %s: %d GETs, want 0", c.interval, n)
		}
	}
}

// TestAcceptForwarded: the upstream is asked with the client's Accept
// plus every type depproxy serves, so a narrow client never makes the
// upstream fall back to schema 1.
func TestAcceptForwarded(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	var accept []string
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			accept = r.Header.Values("Accept")
		}
		return false
	})
	defer e.front.Fault(nil)
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	resp, _ := get(t, p.URL+"/v2/"+repo+"/manifests/v1", "application/vnd.example.custom+json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s", resp.Status)
	}
	all := strings.Join(accept, ",")
	for _, want := range []string{"application/vnd.example.custom+json", "application/vnd.oci.image.index.v1+json",
		"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
		"application/vnd.docker.distribution.manifest.v2+json"} {
		if !strings.Contains(all, want) {
			t.Errorf("upstream Accept %q lacks %s", all, want)
		}
	}
}

// TestSummary: the summary lists a cached index with each platform image
// (seed 000: the index and its children both show), and counts hits.
func TestSummary(t *testing.T) {
	e := newEnv(t)
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			repo := repoName(t)
			amd, arm := ociImage(t, 1), ociImage(t, 1)
			pushIndex(t, e.registry.Addr, repo, "v1", ociIndex(t, amd, arm))
			p := startProxy(t, e.front.URL(), openStorage(t, backend, e.minio))
			pullAll(t, p.URL, repo, "v1")
			pullAll(t, p.URL, repo, "v1")
			s, err := p.Server.Summary().Summary(context.Background(), 0)
			if err != nil {
				t.Fatal(err)
			}
			if s.ImageCount != 1 || len(s.Images) != 1 || s.Images[0].Repository != repo || s.Images[0].Tag != "v1" {
				t.Fatalf("summary images: %+v", s)
			}
			img := s.Images[0]
			if img.MediaType != "application/vnd.oci.image.index.v1+json" || len(img.Platforms) != 2 ||
				img.Platforms[0].Platform != "linux/amd64" || img.Platforms[0].Digest != digestOf(t, amd).String() ||
				img.Platforms[1].Platform != "linux/arm64" {
				t.Errorf("summary of the index: %+v", img)
			}
			if s.Bytes <= 0 || s.Hits == 0 || s.Misses == 0 {
				t.Errorf("summary counters: bytes %d, hits %d, misses %d", s.Bytes, s.Hits, s.Misses)
			}
		})
	}
}

// A summary is reused for its interval, except that a newly cached tag
// shows at once: a tenant who just pulled sees it in the status.
func TestSummaryShowsNewTags(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushIndex(t, e.registry.Addr, repo, "v1", ociIndex(t, ociImage(t, 1)))
	pushIndex(t, e.registry.Addr, repo, "v2", ociIndex(t, ociImage(t, 1)))
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", e.minio))
	count := func() int64 {
		s, err := p.Server.Summary().Summary(context.Background(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return s.ImageCount
	}
	pullAll(t, p.URL, repo, "v1")
	if n := count(); n != 1 {
		t.Fatalf("after v1: %d images", n)
	}
	pullAll(t, p.URL, repo, "v1")
	pullAll(t, p.URL, repo, "v2")
	if n := count(); n != 2 {
		t.Fatalf("after v2, within the reuse interval: %d images, want 2", n)
	}
}
