package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/go-logr/logr"

	"github.com/depproxy/depproxy/proxy/cleanup"
	"github.com/depproxy/depproxy/proxy/pins"
	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
)

// cleanupFlags are the flags `cleanup` has besides the storage settings it
// shares with `serve` (so both read the same --config file).
type cleanupFlags struct {
	ttl         time.Duration
	grace       time.Duration
	dryRun      bool
	summaryFile string
}

func (f *cleanupFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&f.ttl, "ttl", 0, "delete what was not pulled for this long, e.g. 720h (required unless --max-size is set)")
	fs.DurationVar(&f.grace, "grace", time.Hour, "never delete what was written this recently (a pull in progress)")
	fs.BoolVar(&f.dryRun, "dry-run", false, "print what would be deleted, delete nothing")
	fs.StringVar(&f.summaryFile, "summary-file", "", "also write the JSON summary here (in Kubernetes: /dev/termination-log)")
}

// cleanupCommand runs one cleanup and prints its JSON summary as the last
// line of its output.
func cleanupCommand(ctx context.Context, conf settings.Settings, f cleanupFlags, log logr.Logger) error {
	if f.ttl < 0 || (f.ttl == 0 && conf.MaxSize <= 0) {
		return errors.New("--ttl is required (e.g. --ttl 720h for 30 days), unless --max-size sets a budget")
	}
	var pinned []pins.Ref
	if conf.Pinned != "" {
		var err error
		if pinned, err = pins.Read(conf.Pinned); err != nil {
			return err
		}
	}
	store, err := server.OpenStorage(ctx, conf, log)
	if err != nil {
		return err
	}
	sum, err := cleanup.Run(ctx, store, cleanup.Options{TTL: f.ttl, MaxSize: int64(conf.MaxSize), Pinned: pinned,
		Grace: f.grace, DryRun: f.dryRun, Log: os.Stdout})
	if err != nil {
		return err
	}
	line, _ := json.Marshal(sum)
	fmt.Println(string(line))
	if f.summaryFile != "" {
		if err := os.WriteFile(f.summaryFile, line, 0o644); err != nil {
			return fmt.Errorf("writing the summary: %w", err)
		}
	}
	return nil
}
