package settings

import (
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/routing"

	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Keyed is a setting for one upstream registry, "ghcr.io=https://ghcr.io",
// or, without a registry, for the default (first) upstream.
type Keyed struct {
	Registry string
	Value    string
}

func (k Keyed) String() string {
	if k.Registry == "" {
		return k.Value
	}
	return k.Registry + "=" + k.Value
}

func parseKeyed(s string) Keyed {
	key, value, ok := strings.Cut(s, "=")
	// A URL's scheme comes before any "=": "https://x?a=b" has no key.
	if !ok || strings.Contains(key, "/") || key == "" {
		return Keyed{Value: s}
	}
	return Keyed{Registry: key, Value: value}
}

// KeyedList is a repeatable setting of Keyed values. On the command line
// the first value given replaces the default, and the next ones add to
// it; in a file it is a list of strings (or, as older files have it, a
// single string).
type KeyedList struct {
	Items    []Keyed
	replaced bool
}

// Keys makes a KeyedList of "REGISTRY=VALUE" or bare values.
func Keys(values ...string) KeyedList {
	var l KeyedList
	for _, v := range values {
		l.Items = append(l.Items, parseKeyed(v))
	}
	return l
}

// String implements flag.Value; Set reads it back.
func (l *KeyedList) String() string {
	parts := make([]string, len(l.Items))
	for i, k := range l.Items {
		parts[i] = k.String()
	}
	return strings.Join(parts, "\n")
}

// Set implements flag.Value.
func (l *KeyedList) Set(v string) error {
	if !l.replaced {
		l.Items, l.replaced = nil, true
	}
	for _, line := range strings.Split(v, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			l.Items = append(l.Items, parseKeyed(line))
		}
	}
	return nil
}

// For returns the value for registry: its own, or, for the default
// registry, a bare one.
func (l KeyedList) For(registry string, isDefault bool) string {
	for _, k := range l.Items {
		if k.Registry == registry || (isDefault && k.Registry == "") {
			return k.Value
		}
	}
	return ""
}

// MarshalJSON writes a list of strings.
func (l KeyedList) MarshalJSON() ([]byte, error) {
	parts := make([]string, len(l.Items))
	for i, k := range l.Items {
		parts[i] = k.String()
	}
	return json.Marshal(parts)
}

// UnmarshalJSON reads a list of strings or a single string.
func (l *KeyedList) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*l = Keys(one)
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New(`want a string or a list of strings such as "ghcr.io=https://ghcr.io"`)
	}
	*l = Keys(many...)
	return nil
}

// IsZero lets omitempty leave out an empty list.
func (l KeyedList) IsZero() bool { return len(l.Items) == 0 }

// Upstream is one registry a proxy pulls through.
type Upstream struct {
	// Registry is the name clients and containerd give it (docker.io,
	// ghcr.io): containerd's ?ns=, the path prefix, and where its tags
	// live in storage.
	Registry string
	URL      string
	// Credentials is a directory of credentials, if any.
	Credentials string
	// MirrorOf are other registries it stands in for.
	MirrorOf []string
	// Default: requests naming no registry go here.
	Default bool
	// CredentialProvider is the credential provider plugin it is bound
	// to (--upstream-credential-provider), if any.
	CredentialProvider string
	// ProvidersBound: some upstream is bound to a provider, and one that
	// is not gets no plugin's credentials.
	ProvidersBound bool
	// Helm: the upstream is a classic Helm chart repository at URL (its
	// index.yaml there), served as OCI charts.
	Helm bool
}

// Route is the upstream as routing sees it.
func (u Upstream) Route() routing.Upstream {
	r := routing.Upstream{Registry: u.Registry, MirrorOf: u.MirrorOf}
	parse := registryname.ServerURL
	if u.Helm {
		parse = registryname.ChartRepoURL
	}
	if url, ok := parse(u.URL); ok {
		r.Host = url.Host
	}
	return r
}

// Routes are the routing table of the upstreams: what the proxy routes
// requests with, and what the operator decides what it keeps with.
func (s *Settings) Routes() (routing.Table, error) {
	ups, err := s.Upstreams()
	if err != nil {
		return nil, err
	}
	t := make(routing.Table, len(ups))
	for i, u := range ups {
		t[i] = u.Route()
	}
	return t, nil
}

// Upstreams resolves the upstream settings: each registry with its URL,
// credentials and the registries it stands in for, the first the default.
func (s *Settings) Upstreams() ([]Upstream, error) {
	var out []Upstream
	seen := map[string]bool{}
	for i, k := range s.Upstream.Items {
		raw, helm := strings.CutPrefix(k.Value, registryname.HelmScheme)
		if _, ok := registryname.ChartRepoURL(raw); helm && !ok {
			return nil, fmt.Errorf("upstream %q: want a Helm repository's URL like %shttps://charts.example.com/stable", k, registryname.HelmScheme)
		}
		if _, ok := registryname.ServerURL(raw); !helm && !ok {
			return nil, fmt.Errorf("upstream %q: want a URL like %s, or REGISTRY=URL", k, registryname.DockerHubURL)
		}
		reg := k.Registry
		if reg == "" {
			reg = registryname.Of(raw)
		}
		if !registryname.Valid(reg) {
			return nil, fmt.Errorf("upstream %q: %q is not a registry host name", k, reg)
		}
		if seen[reg] {
			return nil, fmt.Errorf("upstream: %s is configured twice", reg)
		}
		seen[reg] = true
		up := Upstream{Registry: reg, URL: raw, Helm: helm, Default: i == 0,
			Credentials: s.UpstreamCreds.For(reg, i == 0), CredentialProvider: s.UpstreamProvider.For(reg, i == 0),
			ProvidersBound: !s.UpstreamProvider.IsZero()}
		if helm && up.CredentialProvider != "" {
			return nil, fmt.Errorf("upstream-credential-provider %s: %s is a Helm repository, whose credentials are a username and password (--upstream-credentials)", up.CredentialProvider, reg)
		}
		if m := s.UpstreamMirrorOf.For(reg, i == 0); m != "" {
			for _, name := range strings.Split(m, ",") {
				if name = strings.TrimSpace(name); name != "" {
					up.MirrorOf = append(up.MirrorOf, name)
				}
			}
		}
		out = append(out, up)
	}
	if len(out) == 0 {
		return nil, errors.New("upstream: at least one is needed")
	}
	for _, l := range []struct {
		flag string
		list KeyedList
	}{{"upstream-credentials", s.UpstreamCreds}, {"upstream-mirror-of", s.UpstreamMirrorOf}, {"upstream-credential-provider", s.UpstreamProvider}} {
		for _, k := range l.list.Items {
			if k.Registry != "" && !seen[k.Registry] {
				return nil, fmt.Errorf("%s %q: no upstream is configured for %s", l.flag, k, k.Registry)
			}
		}
	}
	return out, nil
}
