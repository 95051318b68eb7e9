// Package nodeconfig writes what makes a node's container runtime pull
// through the cache: containerd's hosts.toml, one directory per registry,
// or a containers registries.conf.d drop-in for CRI-O and podman. Files
// are written atomically and marked as depproxy's; a file that was there
// before is kept aside and put back when depproxy's is removed.
package nodeconfig

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Format is what the files are for.
type Format string

const (
	// Containerd writes DIR/<registry>/hosts.toml (config_path).
	Containerd Format = "hosts.toml"
	// Containers writes DIR/depproxy-<registry>.conf, a
	// registries.conf.d drop-in.
	Containers Format = "registries.conf"
)

// marker starts every file depproxy writes: a file without it is not
// ours, and is kept aside rather than overwritten.
const marker = "# Written by depproxy"

// savedSuffix names a file kept aside.
const savedSuffix = ".depproxy-saved"

// Mirror is one registry to pull through the cache.
type Mirror struct {
	// Registry is the name images use: docker.io, ghcr.io.
	Registry string
	// Server is the registry itself, which containerd falls back to
	// when the cache does not answer (https://<registry> by default;
	// https://registry-1.docker.io for docker.io).
	Server string
}

// Options are the settings every file shares.
type Options struct {
	// Endpoint is the cache as the node reaches it: http://10.0.0.5:30500.
	Endpoint string
	// DialTimeout bounds containerd's connect to the cache, so that a
	// dead cache costs that long before the fallback.
	DialTimeout time.Duration
	// CA is a CA certificate file for an HTTPS endpoint, if its issuer is
	// not trusted by the node.
	CA string
}

// DefaultServer is where a registry's images come from without a mirror.
func DefaultServer(registry string) string {
	if registry == "docker.io" {
		return "https://registry-1.docker.io"
	}
	return "https://" + registry
}

// Render returns the file for one registry and where it goes under dir.
func Render(f Format, dir string, m Mirror, o Options) (path string, content []byte, err error) {
	ep, err := url.Parse(o.Endpoint)
	if err != nil || ep.Host == "" || (ep.Scheme != "http" && ep.Scheme != "https") || (ep.Path != "" && ep.Path != "/") {
		return "", nil, fmt.Errorf("endpoint %q: want http(s)://host:port", o.Endpoint)
	}
	if m.Registry == "" || strings.ContainsAny(m.Registry, "/\\ \n\"") || m.Registry == "." || m.Registry == ".." {
		return "", nil, fmt.Errorf("registry %q: want a host name such as docker.io", m.Registry)
	}
	if m.Server == "" {
		m.Server = DefaultServer(m.Registry)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s: the cache at %s mirrors %s.\n# `depproxy hosts --remove` takes it out and puts back what was here.\n", marker, ep.Host, m.Registry)
	switch f {
	case Containerd:
		fmt.Fprintf(&b, "server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", m.Server, strings.TrimSuffix(o.Endpoint, "/"))
		if o.DialTimeout > 0 {
			fmt.Fprintf(&b, "  dial_timeout = %q\n", o.DialTimeout.String())
		}
		if o.CA != "" {
			fmt.Fprintf(&b, "  ca = %q\n", o.CA)
		}
		return filepath.Join(dir, m.Registry, "hosts.toml"), b.Bytes(), nil
	case Containers:
		fmt.Fprintf(&b, "[[registry]]\nprefix = %q\nlocation = %q\n\n[[registry.mirror]]\nlocation = %q\n", m.Registry, m.Registry, ep.Host+"/"+m.Registry)
		if ep.Scheme == "http" {
			b.WriteString("insecure = true\n")
		}
		return filepath.Join(dir, "depproxy-"+m.Registry+".conf"), b.Bytes(), nil
	}
	return "", nil, fmt.Errorf("format %q: want %s or %s", f, Containerd, Containers)
}

// Write puts content at path atomically. A file there that depproxy did
// not write is kept aside first, once.
func Write(path string, content []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if old, err := os.ReadFile(path); err == nil {
		if bytes.Equal(old, content) {
			return nil
		}
		if !ours(old) {
			if err := os.Rename(path, path+savedSuffix); err != nil {
				return fmt.Errorf("keeping %s aside: %w", path, err)
			}
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".depproxy-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Remove takes out depproxy's file at path and puts back the one kept
// aside, if any. A file at path that is not depproxy's is left alone.
func Remove(path string) error {
	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	case !ours(old):
		return nil
	default:
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	if _, err := os.Stat(path + savedSuffix); err == nil {
		return os.Rename(path+savedSuffix, path)
	}
	// The directory depproxy made for hosts.toml goes if it is empty.
	if filepath.Base(path) == "hosts.toml" {
		os.Remove(filepath.Dir(path))
	}
	return nil
}

// Present reports whether depproxy's file is at path.
func Present(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && ours(b)
}

func ours(b []byte) bool { return bytes.HasPrefix(b, []byte(marker)) }
