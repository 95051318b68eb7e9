package routing

import (
	"errors"
	"strings"
	"testing"

	"github.com/depproxy/depproxy/proxy/registryname"
)

// The table of docs/configuration.md's routing, row by row: Docker Hub
// (the default), ghcr.io, and an internal mirror of quay.io on loopback.
var table = Table{
	{Registry: "docker.io", Host: "registry-1.docker.io"},
	{Registry: "ghcr.io", Host: "ghcr.io"},
	{Registry: "127.0.0.1:5001", Host: "127.0.0.1:5001", MirrorOf: []string{"quay.io"}},
	{Registry: "127.0.0.1:5002", Host: "127.0.0.1:5002", MirrorOf: []string{"hub.mirror"}},
}

// An internal mirror of Docker Hub: Docker Hub's naming applies to it.
func TestMirrorOfDockerHub(t *testing.T) {
	mirror := Table{{Registry: "127.0.0.1:5000", Host: "127.0.0.1:5000", MirrorOf: []string{"docker.io"}}}
	for _, c := range [][2]string{{"docker.io", "nginx"}, {"", "index.docker.io/nginx"}, {"", "nginx"}} {
		to, err := mirror.Route(c[0], c[1])
		if err != nil || to.Repository != "library/nginx" {
			t.Errorf("ns=%q %s: %+v %v, want library/nginx", c[0], c[1], to, err)
		}
	}
}

func TestRoute(t *testing.T) {
	for _, c := range []struct {
		ns, name    string
		upstream    int
		named, repo string
		notMirrored string
	}{
		{"", "alpine", 0, "", "library/alpine", ""},                           // a short name: Docker Hub's library/
		{"", "grafana/mimir", 0, "", "grafana/mimir", ""},                     // no host: the default's
		{"docker.io", "library/alpine", 0, "docker.io", "library/alpine", ""}, // containerd's ?ns=
		{"docker.io", "alpine", 0, "docker.io", "library/alpine", ""},
		{"index.docker.io", "alpine", 0, "index.docker.io", "library/alpine", ""}, // Docker Hub's aliases
		{"registry-1.docker.io", "x/y", 0, "registry-1.docker.io", "x/y", ""},
		{"", "docker.io/alpine", 0, "docker.io", "library/alpine", ""}, // the path form
		{"", "ghcr.io/org/app", 1, "ghcr.io", "org/app", ""},
		{"ghcr.io", "org/app", 1, "ghcr.io", "org/app", ""},
		{"ghcr.io", "ghcr.io/org/app", 1, "ghcr.io", "org/app", ""}, // ?ns= and the path form at once
		{"quay.io", "team/app", 2, "quay.io", "team/app", ""},       // mirrorOf
		{"", "quay.io/team/app", 2, "quay.io", "team/app", ""},
		{"", "127.0.0.1:5001/team/app", 2, "127.0.0.1:5001", "team/app", ""}, // the URL's host
		{"", "localhost/x", 0, "", "", "localhost"},
		{"evil.example", "x", 0, "", "", "evil.example"}, // nothing is dialled for it
		{"", "gcr.io/x", 0, "", "", "gcr.io"},
		{"", "library/alpine", 0, "", "library/alpine", ""},
	} {
		got, err := table.Route(c.ns, c.name)
		var nm *NotMirroredError
		switch {
		case c.notMirrored != "":
			if !errors.As(err, &nm) || nm.Registry != c.notMirrored {
				t.Errorf("ns=%q %s: %+v %v, want %s not mirrored", c.ns, c.name, got, err, c.notMirrored)
			}
		case err != nil || got != (Route{Upstream: c.upstream, Named: c.named, Repository: c.repo}):
			t.Errorf("ns=%q %s: %+v %v, want upstream %d named %q repository %q", c.ns, c.name, got, err, c.upstream, c.named, c.repo)
		}
	}
}

func TestNames(t *testing.T) {
	to, _ := table.Route("quay.io", "team/app")
	if got := strings.Join(table.Names(to), ","); got != "127.0.0.1:5001,quay.io" {
		t.Errorf("names of a mirror: %s", got)
	}
	to, _ = table.Route("index.docker.io", "x")
	if got := strings.Join(table.Names(to), ","); got != "index.docker.io,docker.io,registry-1.docker.io" {
		t.Errorf("names of Docker Hub named by an alias: %s", got)
	}
	if got := len(table.AllNames()); got != 7 {
		t.Errorf("all names: %v", table.AllNames())
	}
}

// FuzzRoute: whatever the name and ?ns=, a route goes to an upstream
// that serves the registry named (by ?ns= or a host-like first element),
// to the default when none is named, and its repository is a suffix of
// the name, library/ added only on Docker Hub.
func FuzzRoute(f *testing.F) {
	for _, seed := range [][2]string{{"", "alpine"}, {"docker.io", "library/x"}, {"", "ghcr.io/a/b"}, {"quay.io", "quay.io/a"}, {"evil", "x"}, {"", "a:1/b"}} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, ns, name string) {
		to, err := table.Route(ns, name)
		first, _, nested := strings.Cut(name, "/")
		named := ns
		if named == "" && nested && registryname.LooksLikeHost(first) {
			named = first
		}
		if err != nil {
			var nm *NotMirroredError
			if !errors.As(err, &nm) || nm.Registry != named {
				t.Fatalf("ns=%q %q: %v", ns, name, err)
			}
			if _, ok := table.Serving(named); ok {
				t.Fatalf("ns=%q %q refused though %s is served", ns, name, named)
			}
			return
		}
		if to.Named != named {
			t.Fatalf("ns=%q %q: named %q, want %q", ns, name, to.Named, named)
		}
		if named == "" && to.Upstream != 0 {
			t.Fatalf("ns=%q %q named no registry and went to upstream %d", ns, name, to.Upstream)
		}
		if named != "" && !table[to.Upstream].Serves(named) {
			t.Fatalf("ns=%q %q went to an upstream that does not serve %s", ns, name, named)
		}
		repo := strings.TrimPrefix(to.Repository, "library/")
		if !strings.HasSuffix(name, repo) || (to.Repository != repo && to.Upstream != 0) {
			t.Fatalf("ns=%q %q: repository %q", ns, name, to.Repository)
		}
	})
}
