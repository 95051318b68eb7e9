package nodeconfig

import (
	"bytes"
	"fmt"

	"github.com/pelletier/go-toml/v2"

	"github.com/depproxy/depproxy/proxy/registryname"
)

// The stargz snapshotter's daemon (containerd-stargz-grpc) fetches the
// layers it mounts itself, by the registry mirrors of its own config file
// ([[resolver.host."<registry>".mirrors]]), not containerd's hosts.toml.
// That file holds the admin's other settings too, so depproxy's version is
// the admin's file with the cache put first among each registry's
// mirrors; the admin's is kept aside, and put back on removal, as for
// every node file.

// StargzConfig returns the merge that makes the stargz snapshotter's
// config (original: the admin's file, or nil) fetch the registries'
// layers through the cache, falling back to the admin's own mirrors and
// then to each registry.
func StargzConfig(registries []string, o NodeOptions) (func(original []byte) ([]byte, error), error) {
	ep, ok := registryname.ServerURL(o.Endpoint)
	if !ok {
		return nil, fmt.Errorf("endpoint %q: want http(s)://host:port", o.Endpoint)
	}
	for _, r := range registries {
		if !registryname.Valid(r) {
			return nil, fmt.Errorf("registry %q: the stargz snapshotter has no catch-all; want a host name, such as docker.io", r)
		}
	}
	mirror := map[string]any{"host": ep.Host}
	if ep.Scheme == "http" {
		mirror["insecure"] = true
	}
	return func(original []byte) ([]byte, error) {
		cfg := map[string]any{}
		if err := toml.Unmarshal(original, &cfg); err != nil {
			return nil, fmt.Errorf("the stargz snapshotter's config: %w", err)
		}
		resolver, err := table(cfg, "resolver")
		if err != nil {
			return nil, err
		}
		hosts, err := table(resolver, "host")
		if err != nil {
			return nil, err
		}
		for _, r := range registries {
			host, err := table(hosts, r)
			if err != nil {
				return nil, err
			}
			mirrors := []any{mirror}
			if theirs, ok := host["mirrors"].([]any); ok {
				for _, m := range theirs {
					if mm, ok := m.(map[string]any); !ok || mm["host"] != ep.Host {
						mirrors = append(mirrors, m)
					}
				}
			}
			host["mirrors"] = mirrors
		}
		body, err := toml.Marshal(cfg)
		if err != nil {
			return nil, err
		}
		var b bytes.Buffer
		fmt.Fprintf(&b, "%s: the cache at %s mirrors %v for the stargz snapshotter,\n# over the admin's config, kept aside. Restart containerd-stargz-grpc to read it.\n# `depproxy hosts --remove` takes it out and puts back what was here.\n", NodeFileMarker, ep.Host, registries)
		b.Write(body)
		return b.Bytes(), nil
	}, nil
}

// table returns m[key] as a table, made if missing.
func table(m map[string]any, key string) (map[string]any, error) {
	switch v := m[key].(type) {
	case nil:
		t := map[string]any{}
		m[key] = t
		return t, nil
	case map[string]any:
		return v, nil
	default:
		return nil, fmt.Errorf("the stargz snapshotter's config: %s is a %T, not a table", key, v)
	}
}
