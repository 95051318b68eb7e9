package integration

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/wire"
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

func (tr *twoRegistries) settings(t *testing.T) wire.Settings {
	s := wire.Defaults()
	s.Upstream = wire.Keys("docker.io="+tr.hub.front.URL(), "ghcr.io="+tr.ghcr.front.URL())
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
	base, _ := runServer(t, tr.settings(t))
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
	base, _ := runServer(t, tr.settings(t))
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

// A cache written by the release before several upstreams keeps serving
// its tags, with the upstream down, as the default upstream's.
func TestUpgradeKeepsOldTags(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	idx := ociIndex(t, ociImage(t, 1), ociImage(t, 1))
	pushIndex(t, e.registry.Addr, repo, "v1", idx)
	want, objects := pullAll(t, e.registry.URL(), repo, "v1")

	// The old layout, as that release wrote it: tags under repositories/.
	dir := t.TempDir()
	store := openStorageAt(t, dir)
	ctx := context.Background()
	for d, o := range objects {
		resp, body := get(t, e.registry.URL()+"/v2/"+repo+"/"+map[bool]string{true: "manifests", false: "blobs"}[o.contentType != ""]+"/"+d, acceptAll)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s", d, resp.Status)
		}
		if o.contentType != "" {
			rec := layout.ManifestRecord(o.contentType, body)
			store.Put(ctx, layout.Manifest(digest.Digest(d)), strings.NewReader(string(rec)), int64(len(rec)))
		} else {
			store.Put(ctx, layout.Blob(digest.Digest(d)), strings.NewReader(string(body)), int64(len(body)))
		}
	}
	store.Put(ctx, "repositories/"+repo+"/_tags/v1", strings.NewReader(want), int64(len(want)))

	e.front.Stop() // the upstream is down
	s := wire.Defaults()
	s.Upstream = wire.Keys(e.front.URL(), "ghcr.io=http://127.0.0.1:1")
	s.Storage = dir
	srv, err := server.New(ctx, s, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	base := startHandler(t, srv)
	if got, _ := pullAll(t, base, repo, "v1"); got != want {
		t.Fatalf("after the upgrade: %s, want %s", got, want)
	}
	sum, err := srv.Summary().Summary(ctx, 0)
	if err != nil || sum.ImageCount != 1 || len(sum.Images) != 1 || sum.Images[0].Registry != wire.RegistryOf(e.front.URL()) {
		t.Fatalf("summary after the upgrade: %+v, %v", sum, err)
	}
	// The other registry never gets the old tag.
	resp, body := get(t, base+"/v2/ghcr.io/"+repo+"/manifests/v1", acceptAll)
	if resp.StatusCode == 200 {
		t.Fatal("the old release's tag was served for another registry")
	}
	ociError(t, resp, body, resp.StatusCode, "")
}

func openStorageAt(t *testing.T, dir string) storage.Storage {
	t.Helper()
	fs, err := storage.NewFilesystem(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	return fs
}

// startHandler serves a server's registry port on loopback.
func startHandler(t *testing.T, srv *server.Server) string {
	t.Helper()
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return hs.URL
}
