// Command depproxy is a pull-through cache for container images.
//
//	depproxy serve [flags]
//	depproxy cleanup --ttl 720h [flags]
//	depproxy hosts --endpoint URL --registry NAME [flags]
//	depproxy node --endpoint URL --registry NAME [flags]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"

	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
)

const usage = `depproxy is a pull-through cache for container images.

Usage:
  depproxy serve [flags]               serve the OCI /v2 pull API
  depproxy cleanup --ttl 720h [flags]  delete what was not pulled within the TTL (or --max-size: over the budget)
  depproxy hosts --endpoint URL --registry docker.io [flags]
                                       make this node's containerd (or CRI-O, podman) pull through the cache
  depproxy node --endpoint URL --registry docker.io [flags]
                                       keep this node pulling through the cache while it answers (the operator's DaemonSet)

Run 'depproxy COMMAND --help' for the flags.
`

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "hosts" {
		exit(hostsCommand(os.Args[2:]))
	}
	if len(os.Args) >= 2 && os.Args[1] == "node" {
		exit(nodeCommand(os.Args[2:]))
	}
	if len(os.Args) < 2 || (os.Args[1] != "serve" && os.Args[1] != "cleanup") {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	fs := flag.NewFlagSet("depproxy "+os.Args[1], flag.ExitOnError)
	conf := settings.Defaults()
	var cl cleanupFlags
	if os.Args[1] == "cleanup" {
		// Its own flags only; a --config file of serve's is read whole.
		conf.BindCleanup(fs)
		cl.register(fs)
	} else {
		conf.Bind(fs)
	}
	if err := conf.Load(fs, os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "depproxy:", err)
		os.Exit(2)
	}
	log := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(-conf.LogLevel)}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	if os.Args[1] == "cleanup" {
		err = cleanupCommand(ctx, conf, cl, log)
	} else {
		err = serve(ctx, conf, fs.Lookup("config").Value.String(), log)
	}
	exit(err)
}

// exit ends the program: one plain line for an error, which is what a
// person (or a failed Job's termination message) reads.
func exit(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "depproxy:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func serve(ctx context.Context, conf settings.Settings, configFile string, log logr.Logger) error {
	s, err := server.New(ctx, conf, log, server.WithConfigFile(configFile))
	if err != nil {
		return err
	}
	return s.Run(ctx)
}
