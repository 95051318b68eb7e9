package integration

import (
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/depproxy/depproxy/proxy/settings"
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
	base := start(t, tr.settings(t)).URL
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
	base := start(t, tr.settings(t)).URL
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
