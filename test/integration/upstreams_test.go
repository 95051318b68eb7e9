package integration

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// twoRegistries are two upstreams standing in for docker.io and
// ghcr.io, holding different images under the same repository name.
type twoRegistries struct {
	hub, ghcr           *env
	repo                string
	hubImage, ghcrImage string // digests
}

func newTwoRegistries(t *testing.T) *twoRegistries {
	t.Helper()
	tr := &twoRegistries{hub: newEnv(t), repo: "team/app"}
	ghcrReg := testenv.StartRegistry(t)
	tr.ghcr = &env{registry: ghcrReg, front: testenv.StartFront(t, ghcrReg.URL())}
	hubImg, ghcrImg := ociImage(t, 1), ociImage(t, 2)
	pushImage(t, tr.hub.registry.Addr, tr.repo, "v1", hubImg)
	pushImage(t, ghcrReg.Addr, tr.repo, "v1", ghcrImg)
	tr.hubImage, tr.ghcrImage = digestOf(t, hubImg).String(), digestOf(t, ghcrImg).String()
	return tr
}

func (tr *twoRegistries) settings(t *testing.T) settings.Settings {
	s := settings.Defaults()
	s.Upstream = settings.Keys("docker.io="+tr.hub.front.URL(), "ghcr.io="+tr.ghcr.front.URL())
	s.Storage = t.TempDir()
	return s
}

func (tr *twoRegistries) upstreamRequests() int {
	n := 0
	for _, f := range []*testenv.Front{tr.hub.front, tr.ghcr.front} {
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			for _, kind := range []string{"manifests", "blobs", "tags", "referrers", "ping", "other"} {
				n += f.Count(m, kind)
			}
		}
	}
	return n
}

// One proxy serves two registries: containerd's ?ns= and the path form
// pick the upstream, a request naming none goes to the default, and the
// same repository name on the two is two images.
func TestSeveralUpstreams(t *testing.T) {
	tr := newTwoRegistries(t)
	base := proxytest.Start(t, tr.settings(t)).URL
	cases := []struct {
		name, path, ns, want string
		front                *testenv.Front
	}{
		{"ns=docker.io", tr.repo, "docker.io", tr.hubImage, tr.hub.front},
		{"ns=index.docker.io", tr.repo, "index.docker.io", tr.hubImage, tr.hub.front},
		{"ns=ghcr.io", tr.repo, "ghcr.io", tr.ghcrImage, tr.ghcr.front},
		{"path prefix ghcr.io", "ghcr.io/" + tr.repo, "", tr.ghcrImage, tr.ghcr.front},
		{"path prefix docker.io", "docker.io/" + tr.repo, "", tr.hubImage, tr.hub.front},
		{"no registry named: the default", tr.repo, "", tr.hubImage, tr.hub.front},
	}
	for _, c := range cases {
		for round := 0; round < 2; round++ { // cold, then from the cache
			before := c.front.Count(http.MethodGet, "manifests") + c.front.Count(http.MethodHead, "manifests")
			url := base + "/v2/" + c.path + "/manifests/v1"
			if c.ns != "" {
				url += "?ns=" + c.ns
			}
			resp, body := get(t, url, acceptAll)
			if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != c.want {
				t.Fatalf("%s (round %d): %s, digest %s, want %s: %s", c.name, round, resp.Status, resp.Header.Get("Docker-Content-Digest"), c.want, body)
			}
			if after := c.front.Count(http.MethodGet, "manifests") + c.front.Count(http.MethodHead, "manifests"); after == before {
				t.Errorf("%s (round %d): the tag was not checked with its own upstream", c.name, round)
			}
		}
	}
	for _, p := range []string{"ghcr.io/" + tr.repo, tr.repo} {
		if got, _ := pullAll(t, base, p, "v1"); got != map[bool]string{true: tr.ghcrImage, false: tr.hubImage}[strings.HasPrefix(p, "ghcr.io/")] {
			t.Errorf("pulling %s: %s", p, got)
		}
	}
}

// A registry no upstream is configured for, by ?ns= or by path prefix,
// and the tricks, are refused with an OCI error, and nothing is dialled
// for them.
func TestUnknownRegistriesDialNothing(t *testing.T) {
	tr := newTwoRegistries(t)
	var dialled atomic.Int64
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			dialled.Add(1)
			c.Close()
		}
	}()
	base := proxytest.Start(t, tr.settings(t)).URL
	before := tr.upstreamRequests()
	d := "sha256:" + strings.Repeat("0", 64)
	for _, path := range []string{
		"/v2/" + tr.repo + "/manifests/v1?ns=" + l.Addr().String(),
		"/v2/" + tr.repo + "/manifests/v1?ns=127.0.0.1:22",
		"/v2/" + tr.repo + "/manifests/v1?ns=evil.example/..",
		"/v2/" + tr.repo + "/manifests/v1?ns=quay.io",
		"/v2/" + tr.repo + "/blobs/" + d + "?ns=quay.io",
		"/v2/quay.io/" + tr.repo + "/manifests/v1",
		"/v2/evil.example/../" + tr.repo + "/manifests/v1",
		"/v2/localhost/" + tr.repo + "/tags/list",
	} {
		resp, body := get(t, base+path, acceptAll)
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("%s: %s", path, resp.Status)
		}
		ociError(t, resp, body, resp.StatusCode, "")
	}
	if n := dialled.Load(); n != 0 {
		t.Errorf("the listener named in ?ns= was dialled %d times", n)
	}
	if after := tr.upstreamRequests(); after != before {
		t.Errorf("the upstreams saw %d requests for registries nobody configured", after-before)
	}
}

// A blob asked for with no registry named (SOCI sends ?ns= with manifests
// only) goes to the upstream whose manifest, fetched through the cache,
// named it: the GET and the HEAD, after a restart too, and through
// another replica of the storage that never fetched the manifest.
func TestBlobsGoWhereTheirManifestCameFrom(t *testing.T) {
	tr := newTwoRegistries(t)
	s := tr.settings(t)
	first := proxytest.Start(t, s)
	resp, body := get(t, first.URL+"/v2/"+tr.repo+"/manifests/v1?ns=ghcr.io", acceptAll)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != tr.ghcrImage {
		t.Fatalf("the ghcr.io manifest: %s %s", resp.Status, body)
	}
	var m struct {
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(body, &m); err != nil || len(m.Layers) != 2 {
		t.Fatalf("layers: %v %s", err, body)
	}
	blob := func(base, method, d string) int {
		req, _ := http.NewRequest(method, base+"/v2/"+tr.repo+"/blobs/"+d, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if method == http.MethodGet && resp.StatusCode == 200 && "sha256:"+sha(got) != d {
			t.Fatalf("blob %s: the bytes hash to sha256:%s", d, sha(got))
		}
		return resp.StatusCode
	}
	if c := blob(first.URL, http.MethodHead, m.Layers[0].Digest); c != 200 {
		t.Errorf("HEAD without ns: %d", c)
	}
	if c := blob(first.URL, http.MethodGet, m.Layers[0].Digest); c != 200 {
		t.Errorf("GET without ns: %d", c)
	}
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	// Restarted, and a second replica of the same storage: neither
	// fetched the manifest; the second layer is cold for both.
	again, other := proxytest.Start(t, s), proxytest.Start(t, s)
	tr.hub.front.Reset()
	if c := blob(again.URL, http.MethodHead, m.Layers[1].Digest); c != 200 {
		t.Errorf("HEAD without ns after a restart: %d", c)
	}
	if c := blob(other.URL, http.MethodGet, m.Layers[1].Digest); c != 200 {
		t.Errorf("GET without ns through another replica: %d", c)
	}
	if n := tr.hub.front.Count(http.MethodGet, "blobs") + tr.hub.front.Count(http.MethodHead, "blobs"); n != 0 {
		t.Errorf("the default upstream was asked %d times for ghcr.io's blobs", n)
	}
	// A blob no manifest named still goes to the default.
	if c := blob(again.URL, http.MethodHead, "sha256:"+strings.Repeat("0", 64)); c != 404 || tr.hub.front.Count(http.MethodHead, "blobs") != 1 {
		t.Errorf("an unknown blob: %d, the default upstream asked %d times", c, tr.hub.front.Count(http.MethodHead, "blobs"))
	}
}
