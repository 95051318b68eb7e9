package registry

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/routing"
	"github.com/depproxy/depproxy/proxy/upstream"
)

// askedCache records what reached it and has nothing.
type askedCache struct{ repos []string }

func (c *askedCache) CountServed(context.Context, string, int64) {}

func (c *askedCache) CountRange(context.Context, bool, time.Duration) {}

func (c *askedCache) Linked(context.Context, string, digest.Digest, bool) error { return nil }

func (c *askedCache) Link(context.Context, string, *cache.Manifest) {}

func (c *askedCache) Manifest(_ context.Context, repo string, _ manifest.Ref, _ []string) (*cache.Manifest, error) {
	c.repos = append(c.repos, repo)
	return nil, upstream.ErrNotFound
}

func (c *askedCache) Blob(_ context.Context, repo string, _ digest.Digest) (*cache.Blob, error) {
	c.repos = append(c.repos, repo)
	return nil, upstream.ErrNotFound
}

func (c *askedCache) StatBlob(_ context.Context, repo string, _ digest.Digest) (int64, error) {
	c.repos = append(c.repos, repo)
	return 0, upstream.ErrNotFound
}

func (c *askedCache) Tags(_ context.Context, repo string, _ url.Values) ([]byte, error) {
	c.repos = append(c.repos, repo)
	return nil, upstream.ErrNotFound
}

func (c *askedCache) Referrers(_ context.Context, repo string, _ digest.Digest, _ url.Values) ([]byte, bool, error) {
	c.repos = append(c.repos, repo)
	return []byte(`{"manifests":[]}`), false, nil
}

// FuzzSourceSelection: whatever the path and containerd's ?ns=, a
// request reaches a cache only for a registry that cache mirrors, named
// by ?ns=, by a path prefix, or by neither for the default; under the
// name its upstream knows; everything else is an OCI error.
func FuzzSourceSelection(f *testing.F) {
	f.Add("/v2/library/alpine/manifests/latest", "docker.io")
	f.Add("/v2/alpine/manifests/latest", "")
	f.Add("/v2/ghcr.io/org/app/manifests/latest", "")
	f.Add("/v2/quay.io/org/app/manifests/latest", "")
	f.Add("/v2/alpine/manifests/latest", "127.0.0.1:22")
	f.Add("/v2/alpine/blobs/sha256:"+"0000000000000000000000000000000000000000000000000000000000000000", "evil.example/..")
	f.Add("/v2/ghcr.io/org/app/tags/list", "ghcr.io")
	routes := routing.Table{{Registry: registryname.DockerHub, Host: "index.docker.io"}, {Registry: "ghcr.io", Host: "ghcr.io"}}
	hub, ghcr := routes[0], routes[1]
	f.Fuzz(func(t *testing.T, path, ns string) {
		hubCache, ghcrCache := &askedCache{}, &askedCache{}
		reg := New(routes, []Cache{hubCache, ghcrCache}, Options{}, logr.Discard())
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.URL = &url.URL{Path: path, RawQuery: url.Values{"ns": {ns}}.Encode()}
		w := httptest.NewRecorder()
		reg.ServeHTTP(w, req)
		if len(hubCache.repos) > 0 && len(ghcrCache.repos) > 0 {
			t.Fatalf("%s ns=%q reached both caches", path, ns)
		}
		rt, _ := parseRoute(path)
		first, rest, nested := strings.Cut(rt.name, "/")
		for _, c := range []struct {
			up    routing.Upstream
			asked []string
		}{{hub, hubCache.repos}, {ghcr, ghcrCache.repos}} {
			if len(c.asked) == 0 {
				continue
			}
			switch {
			case ns != "" && !c.up.Serves(ns):
				t.Fatalf("ns %q reached the cache of an upstream that does not mirror it", ns)
			case ns == "" && nested && registryname.LooksLikeHost(first) && !c.up.Serves(first):
				t.Fatalf("path prefix %q reached the cache of an upstream that does not mirror it", first)
			case ns == "" && !(nested && registryname.LooksLikeHost(first)) && c.up.Registry != hub.Registry:
				t.Fatalf("%s named no registry and did not go to the default", path)
			}
			if want, wantRest := c.up.Repository(rt.name), c.up.Repository(rest); c.asked[0] != want && c.asked[0] != wantRest {
				t.Fatalf("the cache got %q for %q", c.asked[0], rt.name)
			}
		}
		if w.Code != http.StatusOK {
			var e struct {
				Errors []struct{ Code string } `json:"errors"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || len(e.Errors) == 0 {
				t.Fatalf("%s ns=%q: %d with a body that is no OCI error: %q", path, ns, w.Code, w.Body)
			}
		}
	})
}
