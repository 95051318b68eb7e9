package main

import (
	"context"
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
)

// nodeCommand runs on every node (the operator's DaemonSet): it keeps the
// node's runtime pulling through the cache while the cache answers.
func nodeCommand(args []string) error {
	fs := flag.NewFlagSet("depproxy node", flag.ExitOnError)
	var nf nodeFlags
	nf.register(fs)
	unreachable := fs.Duration("unreachable", time.Minute, "how long the cache may not answer before the files come out")
	interval := fs.Duration("interval", 2*time.Second, "how often the cache is asked")
	listen := fs.String("listen", ":9092", "address of /readyz: ready while the node's files are in place")
	if err := fs.Parse(args); err != nil {
		return err
	}
	files, err := nf.files()
	if err != nil {
		return err
	}
	agent := &nodeconfig.Agent{
		Files: files, Probe: strings.TrimSuffix(nf.endpoint, "/") + "/v2/", Unreachable: *unreachable, Interval: *interval,
		Log:    logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, nil)).WithName("node"),
		Client: &http.Client{Timeout: 2 * time.Second},
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
