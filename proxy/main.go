// Command depproxy is a pull-through cache for container images.
//
//	depproxy serve [flags]
//	depproxy cleanup --ttl 720h [flags]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/go-logr/logr"

	"github.com/depproxy/depproxy/proxy/config"
)

const usage = `depproxy is a pull-through cache for container images.

Usage:
  depproxy serve [flags]               serve the OCI /v2 pull API
  depproxy cleanup --ttl 720h [flags]  delete what was not pulled within the TTL

Run 'depproxy serve --help' or 'depproxy cleanup --help' for the flags.
`

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "serve" && os.Args[1] != "cleanup") {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	fs := flag.NewFlagSet("depproxy "+os.Args[1], flag.ExitOnError)
	cfg := config.Flags(fs)
	var cl cleanupFlags
	if os.Args[1] == "cleanup" {
		cl.register(fs)
	}
	if err := config.Load(fs, os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "depproxy:", err)
		os.Exit(2)
	}
	log := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(-cfg.LogLevel)}))
	var err error
	if os.Args[1] == "cleanup" {
		err = cleanupCommand(cfg, cl, log)
	} else {
		err = serve(cfg, log)
	}
	if err != nil {
		// One plain line: it is what a person (or a failed Job's
		// termination message) reads.
		fmt.Fprintln(os.Stderr, "depproxy:", err)
		os.Exit(1)
	}
}
