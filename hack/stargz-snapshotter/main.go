// Command containerd-stargz-grpc is the stargz snapshotter as containerd
// runs it, a proxy snapshotter plugin on a unix socket, built from the
// snapshotter's own library (its command lives in a module the Go module
// proxy does not serve). It takes the daemon's flags and reads the
// daemon's config file: the stargz settings, and the registry mirrors
// under [resolver] that `depproxy hosts --stargz-config` writes.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "address for the snapshotter's gRPC server")
	configPath := flag.String("config", "/etc/containerd-stargz-grpc/config.toml", "path to the configuration file")
	root := flag.String("root", "/var/lib/containerd-stargz-grpc", "path to the root directory for this snapshotter")
	level := flag.String("log-level", "info", "set the logging level [trace, debug, info, warn, error, fatal, panic]")
	flag.Parse()
	if err := run(*address, *configPath, *root, *level); err != nil {
		fmt.Fprintln(os.Stderr, "containerd-stargz-grpc:", err)
		os.Exit(1)
	}
}

func run(address, configPath, root, level string) error {
	if err := log.SetLevel(level); err != nil {
		return err
	}
	var cfg service.Config
	switch b, err := os.ReadFile(configPath); {
	case err == nil:
		if err := toml.Unmarshal(b, &cfg); err != nil {
			return fmt.Errorf("%s: %w", configPath, err)
		}
	case !os.IsNotExist(err):
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sn, err := service.NewStargzSnapshotterService(ctx, root, &cfg)
	if err != nil {
		return err
	}
	defer sn.Close()
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return err
	}
	os.Remove(address)
	l, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	go func() {
		<-ctx.Done()
		rpc.GracefulStop()
	}()
	return rpc.Serve(l)
}
