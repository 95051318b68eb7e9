package main

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/depproxy/depproxy/proxy/nodeconfig"
	"github.com/depproxy/depproxy/proxy/settings"
)

// nodeFlags are what `hosts` and `node` both take: which registries, the
// cache's address as the node reaches it, and the files' form.
type nodeFlags struct {
	endpoint     string
	registries   stringList
	servers      settings.KeyedList
	dir          string
	format       string
	dialTimeout  time.Duration
	ca           string
	allowDefault bool
	stargzConfig string
	// local is the node's own mirror (`node --store`), named first.
	local string
}

func (f *nodeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.endpoint, "endpoint", "", "the cache as the node's runtime reaches it, e.g. http://cache.example:5000 (required)")
	fs.Var(&f.registries, "registry", "a registry to pull through the cache, e.g. docker.io; repeatable (required)")
	fs.Var(&f.servers, "server", "REGISTRY=URL: where the runtime falls back to when the cache does not answer (default https://REGISTRY, https://registry-1.docker.io for docker.io); repeatable")
	fs.StringVar(&f.dir, "dir", "/etc/containerd/certs.d", "where the files go: containerd's config_path, or /etc/containers/registries.conf.d")
	fs.StringVar(&f.format, "format", string(nodeconfig.ContainerdHosts), "hosts.toml (containerd) or registries.conf (CRI-O, podman)")
	fs.DurationVar(&f.dialTimeout, "dial-timeout", time.Second, "how long containerd waits to connect to the cache before falling back")
	fs.StringVar(&f.ca, "ca", "", "CA certificate file, as the node's runtime sees it, for an https endpoint whose issuer the node does not trust")
	fs.BoolVar(&f.allowDefault, "allow-default", false, "allow --registry _default, containerd's catch-all: every registry without a file of its own pulls through the cache")
	fs.StringVar(&f.stargzConfig, "stargz-config", "", "also the stargz snapshotter's config file (e.g. /etc/containerd-stargz-grpc/config.toml): its registry mirrors, over the admin's settings; containerd-stargz-grpc reads it when it starts")
}

// files renders every registry's file.
func (f *nodeFlags) files() ([]nodeconfig.File, error) {
	if f.endpoint == "" || len(f.registries) == 0 {
		return nil, errors.New("--endpoint and at least one --registry are required, e.g. --endpoint http://cache.example:5000 --registry docker.io")
	}
	for _, k := range f.servers.Items {
		if !slices.Contains(f.registries, k.Registry) {
			return nil, fmt.Errorf("--server %s: %s is not a --registry", k, k.Registry)
		}
	}
	o := nodeconfig.NodeOptions{Endpoint: f.endpoint, DialTimeout: f.dialTimeout, CA: f.ca, AllowDefault: f.allowDefault, Local: f.local}
	var out []nodeconfig.File
	for _, r := range f.registries {
		path, content, err := nodeconfig.RenderNodeFile(nodeconfig.NodeFormat(f.format), f.dir, nodeconfig.NodeMirror{Registry: r, Server: f.servers.For(r, false)}, o)
		if err != nil {
			return nil, err
		}
		out = append(out, nodeconfig.File{Path: path, Content: content})
	}
	if f.stargzConfig != "" {
		merge, err := nodeconfig.StargzConfig(f.registries, o)
		if err != nil {
			return nil, fmt.Errorf("--stargz-config: %w", err)
		}
		out = append(out, nodeconfig.File{Path: f.stargzConfig, Merge: merge})
	}
	return out, nil
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
