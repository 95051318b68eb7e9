package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"

	"github.com/depproxy/depproxy/proxy/nodeconfig"
	"github.com/depproxy/depproxy/proxy/wire"
)

// nodeCommand runs on every node (the operator's DaemonSet): it keeps the
// node's runtime pulling through the cache while the cache answers.
func nodeCommand(args []string) error {
	fs := flag.NewFlagSet("depproxy node", flag.ExitOnError)
	var registries stringList
	var servers wire.KeyedList
	endpoint := fs.String("endpoint", "", "the cache as this node's runtime reaches it, e.g. http://10.0.0.5:30500 (required)")
	fs.Var(&registries, "registry", "a registry to pull through the cache; repeatable (required)")
	fs.Var(&servers, "server", "REGISTRY=URL: where the runtime falls back to when the cache does not answer; repeatable")
	dir := fs.String("dir", "/etc/containerd/certs.d", "where the files go, as this process sees the node's directory")
	format := fs.String("format", string(nodeconfig.Containerd), "hosts.toml (containerd) or registries.conf (CRI-O, podman)")
	dialTimeout := fs.Duration("dial-timeout", time.Second, "how long containerd waits to connect to the cache before falling back")
	ca := fs.String("ca", "", "CA certificate file, as the node's runtime sees it, for an https endpoint")
	unreachable := fs.Duration("unreachable", time.Minute, "how long the cache may not answer before the files come out")
	interval := fs.Duration("interval", 2*time.Second, "how often the cache is asked")
	listen := fs.String("listen", ":9092", "address of /readyz: ready while the node's files are in place")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *endpoint == "" || len(registries) == 0 {
		return errors.New("--endpoint and at least one --registry are required")
	}
	o := nodeconfig.Options{Endpoint: *endpoint, DialTimeout: *dialTimeout, CA: *ca}
	agent := &nodeconfig.Agent{
		Probe: strings.TrimSuffix(*endpoint, "/") + "/v2/", Unreachable: *unreachable, Interval: *interval,
		Log:    logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, nil)).WithName("node"),
		Client: &http.Client{Timeout: 2 * time.Second},
	}
	for _, r := range registries {
		path, content, err := nodeconfig.Render(nodeconfig.Format(*format), *dir, nodeconfig.Mirror{Registry: r, Server: servers.For(r, false)}, o)
		if err != nil {
			return err
		}
		agent.Files = append(agent.Files, nodeconfig.File{Path: path, Content: content})
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Addr: *listen, ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !agent.Configured() {
			http.Error(w, "the node is not configured: the cache does not answer", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})}
	go srv.ListenAndServe()
	defer srv.Close()
	return agent.Run(ctx)
}
