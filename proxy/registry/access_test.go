package registry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/routing"
)

// countedAccess refuses the registries in deny, and records each
// question as registry/repository.
type countedAccess struct {
	deny  []string
	asked []string
}

func (a *countedAccess) Denied(names []string, repo, _ string) string {
	a.asked = append(a.asked, names[0]+"/"+repo)
	if slices.Contains(a.deny, names[0]) {
		return "denied by the rule " + names[0] + "/**"
	}
	return ""
}

func (a *countedAccess) Enforced() bool { return true }

// origin says every blob came from one registry.
type origin string

func (o origin) Origin(context.Context, digest.Digest) string { return string(o) }

// The access rules are asked once per registry a request could go to,
// never twice about the same one: a blob that names no registry, with
// several upstreams, asks about the default and, when it came from
// another, about that one.
func TestAccessAskedOncePerRegistry(t *testing.T) {
	blob := "/v2/org/app/blobs/sha256:" + strings.Repeat("0", 64)
	for _, c := range []struct {
		name   string
		path   string
		origin string
		deny   []string
		denied bool
		asked  []string
	}{
		{name: "a manifest", path: "/v2/org/app/manifests/v1", asked: []string{"docker.io/org/app"}},
		{name: "a denied manifest", path: "/v2/org/app/manifests/v1", deny: []string{"docker.io"},
			denied: true, asked: []string{"docker.io/org/app"}},
		{name: "a blob of the default", path: blob, origin: "docker.io", asked: []string{"docker.io/org/app"}},
		{name: "a blob of another registry", path: blob, origin: "ghcr.io", asked: []string{"docker.io/org/app", "ghcr.io/org/app"}},
		{name: "a blob of another registry that is denied", path: blob, origin: "ghcr.io", deny: []string{"ghcr.io"},
			denied: true, asked: []string{"docker.io/org/app", "ghcr.io/org/app"}},
		{name: "a blob denied everywhere", path: blob, origin: "ghcr.io", deny: []string{"docker.io", "ghcr.io"},
			denied: true, asked: []string{"docker.io/org/app", "ghcr.io/org/app"}},
		{name: "a blob of a registry the client named", path: "/v2/ghcr.io/org/app/blobs/sha256:" + strings.Repeat("0", 64),
			origin: "docker.io", asked: []string{"ghcr.io/org/app"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := &countedAccess{deny: c.deny}
			routes := routing.Table{{Registry: registryname.DockerHub, Host: "index.docker.io"}, {Registry: "ghcr.io", Host: "ghcr.io"}}
			reg := New(routes, []Cache{&askedCache{}, &askedCache{}}, Options{Access: a, Origins: origin(c.origin)}, logr.Discard())
			w := httptest.NewRecorder()
			reg.ServeHTTP(w, httptest.NewRequest(http.MethodGet, c.path, nil))
			if denied := w.Code == http.StatusForbidden; denied != c.denied {
				t.Errorf("%s: %d %s, want denied %v", c.path, w.Code, w.Body, c.denied)
			}
			if !slices.Equal(a.asked, c.asked) {
				t.Errorf("the rules were asked about %v, want %v", a.asked, c.asked)
			}
		})
	}
}
