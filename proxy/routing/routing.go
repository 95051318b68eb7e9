// Package routing is the one rule of which upstream serves a name, and
// under which repository: containerd's ?ns=, the path form
// (/v2/ghcr.io/org/app/...), mirrorOf, Docker Hub's aliases and its
// library/ namespace. The proxy's /v2 surface, its keeper and the
// operator (on the very settings it renders) all route through it, so
// that what the operator keeps, and what the access rules hold, is what
// the proxy serves.
package routing

import (
	"fmt"
	"slices"
	"strings"

	"github.com/depproxy/depproxy/proxy/registryname"
)

// Upstream is one registry the proxy pulls through, as routing sees it.
type Upstream struct {
	// Registry is the name clients give it, and where its tags live.
	Registry string
	// Host is its URL's host.
	Host string
	// MirrorOf are the other registries it stands in for.
	MirrorOf []string
}

// dockerHub: Docker Hub's naming (nginx is library/nginx) applies to the
// upstream: it is Docker Hub, is called so, or stands in for it.
func (u Upstream) dockerHub() bool {
	return registryname.IsDockerHub(u.Registry) || registryname.IsDockerHub(u.Host) || slices.ContainsFunc(u.MirrorOf, registryname.IsDockerHub)
}

// Serves says whether ns (containerd's ?ns=, or a path prefix) names
// this upstream: its name, its URL's host, a registry it mirrors, or one
// of Docker Hub's names for Docker Hub.
func (u Upstream) Serves(ns string) bool {
	if ns == "" {
		return false
	}
	return ns == u.Registry || ns == u.Host || slices.Contains(u.MirrorOf, ns) || (u.dockerHub() && registryname.IsDockerHub(ns))
}

// Names are every name the upstream goes by: the access rules hold for
// each.
func (u Upstream) Names() []string {
	names := []string{u.Registry}
	if u.Host != "" && u.Host != u.Registry {
		names = append(names, u.Host)
	}
	return append(names, u.MirrorOf...)
}

// Repository is a client's repository as the upstream names it.
func (u Upstream) Repository(name string) string {
	return registryname.Repository(u.dockerHub(), name)
}

// Table routes over a proxy's upstreams, the first the default.
type Table []Upstream

// Route is where a name goes.
type Route struct {
	// Upstream is the index of the upstream that serves it.
	Upstream int
	// Named is the registry the client named ("" when it named none and
	// the default serves it).
	Named string
	// Repository is the repository as that upstream names it.
	Repository string
}

// NotMirroredError is a registry no upstream serves or mirrors: nothing
// is dialled for it, since another registry's image of the same name
// would be the wrong image.
type NotMirroredError struct{ Registry string }

func (e *NotMirroredError) Error() string {
	return "this cache does not mirror " + e.Registry + "; configure it as a mirror only for the registries it pulls through"
}

// Route routes a request for name (the repository path as the client
// sent it) with containerd's ?ns= ("" without): ?ns= names the registry
// (the path may repeat it, as a mirror configured with the path form
// too); else a first path element that is a host name names it (what
// CRI-O, podman and `docker pull cache/ghcr.io/org/app` send); else the
// default upstream serves it.
func (t Table) Route(ns, name string) (Route, error) {
	if len(t) == 0 {
		return Route{}, fmt.Errorf("no upstream")
	}
	first, rest, nested := strings.Cut(name, "/")
	if ns != "" {
		i, ok := t.Serving(ns)
		if !ok {
			return Route{}, &NotMirroredError{Registry: ns}
		}
		if nested && t[i].Serves(first) {
			name = rest
		}
		return Route{Upstream: i, Named: ns, Repository: t[i].Repository(name)}, nil
	}
	if nested && registryname.LooksLikeHost(first) {
		i, ok := t.Serving(first)
		if !ok {
			return Route{}, &NotMirroredError{Registry: first}
		}
		return Route{Upstream: i, Named: first, Repository: t[i].Repository(rest)}, nil
	}
	return Route{Upstream: 0, Repository: t[0].Repository(name)}, nil
}

// Serving is the upstream that serves registry, by any of its names.
func (t Table) Serving(registry string) (int, bool) {
	for i, u := range t {
		if u.Serves(registry) {
			return i, true
		}
	}
	return 0, false
}

// Names are the names the access rules hold a route to: the registry
// the client named, and every name of the upstream serving it.
func (t Table) Names(r Route) []string {
	names := t[r.Upstream].Names()
	if r.Named != "" && !slices.Contains(names, r.Named) {
		names = append([]string{r.Named}, names...)
	}
	return names
}

// AllNames are every name of every upstream: a rule naming none of them
// can never match.
func (t Table) AllNames() []string {
	var names []string
	for _, u := range t {
		names = append(names, u.Names()...)
	}
	return names
}
