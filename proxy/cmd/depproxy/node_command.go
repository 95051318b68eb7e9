package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/depproxy/depproxy/proxy/hot"
	"github.com/depproxy/depproxy/proxy/localmirror"
	"github.com/depproxy/depproxy/proxy/nodeconfig"
	"github.com/depproxy/depproxy/proxy/settings"
)

// nodeCommand runs on every node (the operator's DaemonSet): it keeps the
// node's runtime pulling through the cache while the cache answers.
func nodeCommand(args []string) error {
	fs := flag.NewFlagSet("depproxy node", flag.ExitOnError)
	var nf nodeFlags
	nf.register(fs)
	unreachable := fs.Duration("unreachable", time.Minute, "how long the cache may not answer before the files come out")
	interval := fs.Duration("interval", 2*time.Second, "how often the cache is asked")
	listen := fs.String("listen", ":9092", "address of /readyz (ready while the node's files are in place) and /metrics")
	store := fs.String("store", "", "the node's own mirror keeps the blobs and manifests the node pulled here, and serves them first (named before the cache in the node's files), also while the cache is down; empty: none")
	var storeSize settings.Size
	fs.Var(&storeSize, "store-size", "with --store: the most it keeps (e.g. 50Gi), least recently read out first; it also leaves 5% of the disk (at most 1 GiB) free")
	localListen := fs.String("local-listen", "127.0.0.1:5050", "with --store: where the node's own mirror listens, on the node's loopback, as the node's files name it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, nil)).WithName("node")
	metrics := prometheus.NewRegistry()
	probe := strings.TrimSuffix(nf.endpoint, "/") + "/v2/"
	var local *http.Server
	if *store != "" {
		mirror, err := openLocalMirror(nf.endpoint, *store, int64(storeSize), nf.dialTimeout, metrics, log)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", *localListen)
		if err != nil {
			return fmt.Errorf("--local-listen: %w", err)
		}
		local = &http.Server{Handler: mirror, ReadHeaderTimeout: 10 * time.Second}
		go local.Serve(ln)
		defer mirror.Close()
		defer local.Close()
		// The node's files stay while the agent itself serves: with the
		// cache down, its store still does, and the runtime falls back
		// past it to the cache and the registry.
		nf.local = "http://" + ln.Addr().String()
		probe = nf.local + "/v2/"
	}
	files, err := nf.files()
	if err != nil {
		return err
	}
	agent := &nodeconfig.Agent{
		Files: files, Probe: probe, Unreachable: *unreachable, Interval: *interval,
		Log:    log,
		Client: &http.Client{Timeout: 2 * time.Second},
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !agent.Configured() {
			http.Error(w, "the node is not configured: the cache does not answer", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Addr: *listen, ReadHeaderTimeout: 10 * time.Second, Handler: mux}
	go srv.ListenAndServe()
	defer srv.Close()
	return agent.Run(ctx)
}

// openLocalMirror opens the node's store and the mirror in front of the
// cache that serves from it.
func openLocalMirror(endpoint, dir string, size int64, dialTimeout time.Duration, metrics prometheus.Registerer, log logr.Logger) (*localmirror.Mirror, error) {
	if size <= 0 {
		return nil, errors.New("--store needs --store-size, the most it may keep (e.g. 50Gi)")
	}
	tier, err := hot.Open(dir, size, hot.WithLogger(log.WithName("store")), hot.WithMetrics(hot.NewMetrics(metrics)))
	if err != nil {
		return nil, fmt.Errorf("--store: %w", err)
	}
	m, err := localmirror.New(endpoint, tier, localmirror.WithLogger(log.WithName("mirror")),
		localmirror.WithMetrics(localmirror.NewMetrics(metrics)), localmirror.WithDialTimeout(dialTimeout))
	if err != nil {
		return nil, fmt.Errorf("--endpoint: %w", err)
	}
	return m, nil
}
