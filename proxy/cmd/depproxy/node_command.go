package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
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
	"github.com/depproxy/depproxy/proxy/share"
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
	var sf shareFlags
	sf.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, nil)).WithName("node")
	metrics := prometheus.NewRegistry()
	probe := strings.TrimSuffix(nf.endpoint, "/") + "/v2/"
	var local *http.Server
	if *store != "" {
		sharing, err := sf.option()
		if err != nil {
			return err
		}
		mirror, err := openLocalMirror(nf.endpoint, *store, int64(storeSize), nf.dialTimeout, metrics, log, sharing...)
		if err != nil {
			return err
		}
		if sf.listen != "" {
			peers, err := net.Listen("tcp", sf.listen)
			if err != nil {
				return fmt.Errorf("--share-listen: %w", err)
			}
			peerServer := &http.Server{Handler: mirror.PeerHandler(), ReadHeaderTimeout: 10 * time.Second}
			go peerServer.Serve(peers)
			defer peerServer.Close()
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
func openLocalMirror(endpoint, dir string, size int64, dialTimeout time.Duration, metrics prometheus.Registerer, log logr.Logger, opts ...localmirror.Option) (*localmirror.Mirror, error) {
	if size <= 0 {
		return nil, errors.New("--store needs --store-size, the most it may keep (e.g. 50Gi)")
	}
	tier, err := hot.Open(dir, size, hot.WithLogger(log.WithName("store")), hot.WithMetrics(hot.NewMetrics(metrics)))
	if err != nil {
		return nil, fmt.Errorf("--store: %w", err)
	}
	m, err := localmirror.New(endpoint, tier, append([]localmirror.Option{localmirror.WithLogger(log.WithName("mirror")),
		localmirror.WithMetrics(localmirror.NewMetrics(metrics)), localmirror.WithDialTimeout(dialTimeout)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("--endpoint: %w", err)
	}
	return m, nil
}

// shareFlags make the node one of the nodes that share what they pulled.
type shareFlags struct {
	listen, advertise, name, zone, key string
}

func (f *shareFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "share-listen", "", "with --store and --node-key: where other nodes fetch this node's blobs, with the cache's ticket (e.g. :30601); empty: the node does not serve peers")
	fs.StringVar(&f.advertise, "advertise", "", "how other nodes reach --share-listen, e.g. http://10.0.0.7:30601")
	fs.StringVar(&f.name, "node-name", "", "this node's name, as the cache's tickets name it (the Node's name)")
	fs.StringVar(&f.zone, "zone", "", "this node's zone (topology.kubernetes.io/zone): the cache sends it to holders of its own zone only")
	fs.StringVar(&f.key, "node-key", "", "the file of the key the nodes and the cache share (depproxy serve --node-key): the nodes' trust domain")
}

// option is the mirror's sharing, when asked for.
func (f *shareFlags) option() ([]localmirror.Option, error) {
	if f.key == "" {
		if f.listen != "" || f.advertise != "" {
			return nil, errors.New("--share-listen and --advertise need --node-key, the key the nodes and the cache share")
		}
		return nil, nil
	}
	if f.name == "" {
		return nil, errors.New("--node-key needs --node-name, this node's name")
	}
	if (f.listen == "") != (f.advertise == "") {
		return nil, errors.New("--share-listen and --advertise go together: where peers connect, and the URL they use")
	}
	if f.advertise != "" {
		if u, err := url.Parse(f.advertise); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("--advertise %q: want http(s)://host:port, as other nodes reach --share-listen", f.advertise)
		}
	}
	secret, err := os.ReadFile(f.key)
	if err != nil {
		return nil, fmt.Errorf("--node-key: %w", err)
	}
	key, err := share.NewKey(secret)
	if err != nil {
		return nil, fmt.Errorf("--node-key %s: %w", f.key, err)
	}
	return []localmirror.Option{localmirror.WithSharing(key, share.Node{Name: f.name, Zone: f.zone, Peer: f.advertise})}, nil
}
