package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/depproxy/depproxy/proxy/nodeconfig"
	"github.com/depproxy/depproxy/proxy/wire"
)

// hostsCommand writes (or, with --remove, takes out) the files that make
// a node's container runtime pull the registries through the cache.
func hostsCommand(args []string) error {
	fs := flag.NewFlagSet("depproxy hosts", flag.ExitOnError)
	var registries stringList
	var servers wire.KeyedList
	endpoint := fs.String("endpoint", "", "the cache as the node reaches it, e.g. http://cache.example:5000 (required)")
	fs.Var(&registries, "registry", "a registry to pull through the cache, e.g. docker.io; repeatable (required)")
	fs.Var(&servers, "server", "REGISTRY=URL: where the runtime falls back to when the cache does not answer (default https://REGISTRY, https://registry-1.docker.io for docker.io); repeatable")
	dir := fs.String("dir", "/etc/containerd/certs.d", "where the files go: containerd's config_path, or /etc/containers/registries.conf.d")
	format := fs.String("format", string(nodeconfig.Containerd), "hosts.toml (containerd) or registries.conf (CRI-O, podman)")
	dialTimeout := fs.Duration("dial-timeout", time.Second, "how long containerd waits to connect to the cache before falling back")
	ca := fs.String("ca", "", "CA certificate file for an https endpoint whose issuer the node does not trust")
	remove := fs.Bool("remove", false, "take the files out, and put back what was there before")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *endpoint == "" || len(registries) == 0 {
		return errors.New("--endpoint and at least one --registry are required, e.g. depproxy hosts --endpoint http://cache.example:5000 --registry docker.io")
	}
	o := nodeconfig.Options{Endpoint: *endpoint, DialTimeout: *dialTimeout, CA: *ca}
	for _, k := range servers.Items {
		if !slices.Contains(registries, k.Registry) {
			return fmt.Errorf("--server %s: %s is not a --registry", k, k.Registry)
		}
	}
	var errs []error
	for _, r := range registries {
		m := nodeconfig.Mirror{Registry: r, Server: servers.For(r, false)}
		path, content, err := nodeconfig.Render(nodeconfig.Format(*format), *dir, m, o)
		if err != nil {
			return err
		}
		if *remove {
			err = nodeconfig.Remove(path)
		} else {
			err = nodeconfig.Write(path, content)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
			continue
		}
		fmt.Fprintln(os.Stdout, map[bool]string{true: "removed", false: "wrote"}[*remove], path)
	}
	return errors.Join(errs...)
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
