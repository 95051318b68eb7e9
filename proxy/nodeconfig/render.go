package nodeconfig

import (
	"github.com/depproxy/depproxy/proxy/registryname"

	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// NodeFormat is what a node file is for.
type NodeFormat string

const (
	// ContainerdHosts is DIR/<registry>/hosts.toml (config_path).
	ContainerdHosts NodeFormat = "hosts.toml"
	// ContainersConf is DIR/depproxy-<registry>.conf, a
	// registries.conf.d drop-in.
	ContainersConf NodeFormat = "registries.conf"
)

// NodeFileMarker starts every node file depproxy writes: a file without it is not
// ours, and is kept aside rather than overwritten.
const NodeFileMarker = "# Written by depproxy"

// NodeMirror is one registry to pull through the cache.
type NodeMirror struct {
	// Registry is the name images use: docker.io, ghcr.io.
	Registry string
	// Server is the registry itself, which containerd falls back to
	// when the cache does not answer (https://<registry> by default;
	// https://registry-1.docker.io for docker.io).
	Server string
}

// NodeOptions are the settings every node file shares.
type NodeOptions struct {
	// Endpoint is the cache as the node reaches it: http://10.0.0.5:30500.
	Endpoint string
	// DialTimeout bounds containerd's connect to the cache, so that a
	// dead cache costs that long before the fallback.
	DialTimeout time.Duration
	// CA is a CA certificate file for an HTTPS endpoint, if its issuer is
	// not trusted by the node.
	CA string
	// AllowDefault lets the registry be containerd's _default, the
	// catch-all that sends every registry without a file of its own
	// through the cache.
	AllowDefault bool
	// Local, when set, is the node agent's own mirror on the node's
	// loopback (http://127.0.0.1:5050): named first, before the cache,
	// so that what the node pulled before comes from its own disk.
	Local string
}

// DefaultRegistry is containerd's catch-all hosts directory.
const DefaultRegistry = "_default"

// RenderNodeFile returns the file for one registry and where it goes
// under dir. The operator shows it in status; `depproxy hosts` and
// `depproxy node` write it.
func RenderNodeFile(f NodeFormat, dir string, m NodeMirror, o NodeOptions) (path string, content []byte, err error) {
	ep, ok := registryname.ServerURL(o.Endpoint)
	if !ok {
		return "", nil, fmt.Errorf("endpoint %q: want http(s)://host:port", o.Endpoint)
	}
	catchAll := m.Registry == DefaultRegistry
	switch {
	case catchAll && !o.AllowDefault:
		return "", nil, fmt.Errorf("registry %s is containerd's catch-all: every registry without a file of its own would pull through the cache; ask for it with --allow-default", DefaultRegistry)
	case catchAll && f != ContainerdHosts:
		return "", nil, fmt.Errorf("registry %s is containerd's alone: %s has no catch-all", DefaultRegistry, f)
	case !catchAll && !registryname.Valid(m.Registry):
		return "", nil, fmt.Errorf("registry %q: want a host name, optionally with a port, such as docker.io or registry.internal:5000", m.Registry)
	}
	if o.Local != "" {
		if _, ok := registryname.ServerURL(o.Local); !ok {
			return "", nil, fmt.Errorf("local mirror %q: want http://host:port", o.Local)
		}
	}
	for what, v := range map[string]string{"endpoint": o.Endpoint, "server": m.Server, "ca": o.CA, "local mirror": o.Local} {
		if strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '"' || r == '\\' }) >= 0 {
			return "", nil, fmt.Errorf("%s %q: control characters, quotes and backslashes have no place in it", what, v)
		}
	}
	if m.Server == "" && !catchAll {
		m.Server = registryname.Server(m.Registry)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s: the cache at %s mirrors %s.\n# `depproxy hosts --remove` takes it out and puts back what was here.\n", NodeFileMarker, ep.Host, m.Registry)
	switch f {
	case ContainerdHosts:
		if m.Server != "" {
			// The catch-all has none: each pull falls back to its own
			// registry.
			fmt.Fprintf(&b, "server = %q\n\n", m.Server)
		}
		if o.Local != "" {
			// The node's own store first; a dead agent costs the dial
			// timeout, then the cache answers.
			fmt.Fprintf(&b, "[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", strings.TrimSuffix(o.Local, "/"))
			if o.DialTimeout > 0 {
				fmt.Fprintf(&b, "  dial_timeout = %q\n", o.DialTimeout.String())
			}
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", strings.TrimSuffix(o.Endpoint, "/"))
		if o.DialTimeout > 0 {
			fmt.Fprintf(&b, "  dial_timeout = %q\n", o.DialTimeout.String())
		}
		if o.CA != "" {
			fmt.Fprintf(&b, "  ca = %q\n", o.CA)
		}
		return filepath.Join(dir, m.Registry, "hosts.toml"), b.Bytes(), nil
	case ContainersConf:
		fmt.Fprintf(&b, "[[registry]]\nprefix = %q\nlocation = %q\n", m.Registry, m.Registry)
		if local, ok := registryname.ServerURL(o.Local); ok && o.Local != "" {
			fmt.Fprintf(&b, "\n[[registry.mirror]]\nlocation = %q\ninsecure = true\n", local.Host+"/"+m.Registry)
		}
		fmt.Fprintf(&b, "\n[[registry.mirror]]\nlocation = %q\n", ep.Host+"/"+m.Registry)
		if ep.Scheme == "http" {
			b.WriteString("insecure = true\n")
		}
		return filepath.Join(dir, "depproxy-"+m.Registry+".conf"), b.Bytes(), nil
	}
	return "", nil, fmt.Errorf("format %q: want %s or %s", f, ContainerdHosts, ContainersConf)
}
