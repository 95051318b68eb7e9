// Package server assembles a depproxy from its settings: storage, the
// upstream, the cache in front of it, logins, the cache summary, and the
// HTTP routes that expose them. `depproxy serve` and the tests build the
// proxy the same way, here.
package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/depproxy/depproxy/proxy/audit"
	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/keep"
	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/summary"
	"github.com/depproxy/depproxy/proxy/token"
	"github.com/depproxy/depproxy/proxy/ui"
	"github.com/depproxy/depproxy/proxy/upstream"
	"github.com/depproxy/depproxy/proxy/verify"
)

// Server is one depproxy, ready to serve.
type Server struct {
	settings settings.Settings
	log      logr.Logger
	caches   []*cache.Cache // one per upstream, the default first
	store    storage.Storage
	summary  *summary.Scanner
	keep     *keep.Keeper
	access   *accessGate
	verifier *verify.Verifier // nil: no --verify-policy
	closers  []func() error   // what Run releases at the end
	handler  http.Handler     // the registry port
	ops      http.Handler     // the metrics port

	idleTimeout, writeTimeout time.Duration
	certs                     *certReloader // nil: plain HTTP
	replicas                  *replicas     // nil: this is the only replica
	// stopping: the server was told to stop, and says it is not ready
	// while it still serves for --shutdown-delay.
	stopping atomic.Bool
}

// Option adjusts what the settings build.
type Option func(*options)

type options struct {
	store                     storage.Storage
	cache                     []cache.Option
	keepTiming                keep.Timing
	configFile                string
	idleTimeout, writeTimeout time.Duration
}

// WithTimeouts sets how long a keep-alive connection may idle and a
// response write may take (tests shorten them).
func WithTimeouts(idle, write time.Duration) Option {
	return func(o *options) { o.idleTimeout, o.writeTimeout = idle, write }
}

// WithKeepTiming looks at the pins files and the budget this often, and
// spares from eviction what was written within grace (tests shorten
// keep.DefaultTiming).
func WithKeepTiming(every, grace time.Duration) Option {
	return func(o *options) { o.keepTiming = keep.Timing{Files: every, Budget: every, Grace: grace} }
}

// WithConfigFile names the --config file the settings came from: its
// access rules are applied again whenever it changes, without a restart.
func WithConfigFile(path string) Option { return func(o *options) { o.configFile = path } }

// keeperKey is the key whose owner among the replicas warms the pins and
// evicts over the budget.
const keeperKey = "depproxy.dev/keeper"

// WithStorage uses store instead of the storage the settings name.
func WithStorage(store storage.Storage) Option { return func(o *options) { o.store = store } }

// WithCacheOptions passes options to the cache after those the settings
// make (tests set a clock).
func WithCacheOptions(opts ...cache.Option) Option {
	return func(o *options) { o.cache = append(o.cache, opts...) }
}

// New builds a proxy from its settings, step by step (assemble.go).
func New(ctx context.Context, s settings.Settings, log logr.Logger, opts ...Option) (*Server, error) {
	o := options{idleTimeout: idleTimeout, writeTimeout: writeTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	a := &assembly{s: s, log: log, o: o}
	for _, step := range []func(context.Context) error{a.openStorage, a.settle, a.observe, a.keeping, a.pullThrough, a.nodeSharing, a.connect} {
		if err := step(ctx); err != nil {
			a.release()
			return nil, err
		}
	}
	handler, err := a.serving()
	if err != nil {
		a.release()
		return nil, err
	}
	srv := &Server{settings: s, log: log, caches: a.caches, store: a.store, summary: a.scanner, keep: a.keeper, access: a.gate, verifier: a.verifier,
		closers: a.closers, handler: handler, idleTimeout: o.idleTimeout, writeTimeout: o.writeTimeout, certs: a.certs, replicas: a.peering}
	srv.ops = opsRoutes(promhttp.HandlerFor(a.metrics, promhttp.HandlerOpts{}), a.scanner.Handler(s.SummaryInterval.Std(), log.WithName("summary")),
		func() bool { return !srv.stopping.Load() && a.peering.ready() })
	return srv, nil
}

// Handler is what the registry port serves: the pull API and logins.
func (s *Server) Handler() http.Handler { return s.handler }

// OpsHandler is what the metrics port serves: /metrics, the summary and
// the probes. None of it is behind a login, so none of it is on the
// registry port, which faces the tenants.
func (s *Server) OpsHandler() http.Handler { return s.ops }

// Cache is the default upstream's cache.
func (s *Server) Cache() *cache.Cache { return s.caches[0] }

// Storage is where the proxy keeps the cache.
func (s *Server) Storage() storage.Storage { return s.store }

// Summary is the proxy's cache summary.
func (s *Server) Summary() *summary.Scanner { return s.summary }

// Run serves until ctx ends, then shuts down cleanly: requests in flight
// finish and the last reads are recorded.
func (s *Server) Run(ctx context.Context) error {
	trackCtx, stopTracking := context.WithCancel(context.Background())
	var tracking sync.WaitGroup
	for _, c := range s.caches {
		tracking.Go(func() { c.TrackReads(trackCtx, time.Minute) })
	}
	tracking.Go(func() { s.replicas.watch(trackCtx, s.log.WithName("replicas")) })
	tracking.Go(func() { s.summary.Journal(trackCtx) })
	tracking.Go(func() { s.keep.Run(trackCtx) })
	tracking.Go(func() { s.access.follow(trackCtx) })
	if s.verifier != nil {
		tracking.Go(func() { s.verifier.Follow(trackCtx) })
	}

	servers := []*http.Server{
		{Addr: s.settings.Listen, Handler: progressDeadlines(s.handler, s.writeTimeout), ReadHeaderTimeout: 30 * time.Second, IdleTimeout: s.idleTimeout},
		{Addr: s.settings.MetricsListen, Handler: s.ops, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: s.idleTimeout, WriteTimeout: time.Minute},
	}
	errc := make(chan error, len(servers))
	if s.certs != nil {
		servers[0].TLSConfig = s.certs.config()
	}
	// Both ports listen before either serves: /readyz never answers
	// while the registry port still refuses connections.
	listeners, err := listen(servers)
	if err == nil {
		for i, srv := range servers {
			go func() {
				if srv.TLSConfig != nil {
					errc <- srv.ServeTLS(listeners[i], "", "")
					return
				}
				errc <- srv.Serve(listeners[i])
			}()
		}
		s.log.Info("serving", "listen", s.settings.Listen, "metricsListen", s.settings.MetricsListen, "upstream", s.settings.Upstream.String(),
			"storage", s.settings.Storage, "recheckInterval", s.settings.RecheckInterval.Std().String())
		select {
		case err = <-errc:
		case <-ctx.Done():
			// Unready first, still serving: load balancers and kube-proxy
			// stop sending new connections before the listeners close.
			s.stopping.Store(true)
			s.log.Info("shutting down", "after", s.settings.ShutdownDelay.Std().String())
			time.Sleep(s.settings.ShutdownDelay.Std())
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, srv := range servers {
		if serr := srv.Shutdown(shutdownCtx); serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
	}
	stopTracking()
	tracking.Wait() // the last reads are written before exit
	// Downloads nobody waits for any more are cancelled, and their spool
	// files go with them.
	for _, c := range s.closers {
		if cerr := c(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

// storedOrigins reads where a blob came from out of the storage, so
// that every replica, and a restarted one, routes it alike.
type storedOrigins struct{ store storage.Storage }

func (o storedOrigins) Origin(ctx context.Context, d digest.Digest) string {
	raw, err := storage.ReadAll(ctx, o.store, layout.Origin(d), 256)
	if err != nil {
		return ""
	}
	return string(raw)
}

// listen opens every server's address, or none.
func listen(servers []*http.Server) ([]net.Listener, error) {
	var ls []net.Listener
	for _, srv := range servers {
		l, err := net.Listen("tcp", srv.Addr)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// registryRoutes sends everything but /token and the cache browser to
// the registry, which answers unknown paths with OCI errors.
// (http.ServeMux would answer them in plain text, and redirect paths
// with "..".)
func registryRoutes(reg, tokens, browser http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/token":
			tokens.ServeHTTP(w, r)
		case r.URL.Path == strings.TrimSuffix(ui.Path, "/") || strings.HasPrefix(r.URL.Path, ui.Path):
			browser.ServeHTTP(w, r)
		default:
			reg.ServeHTTP(w, r)
		}
	})
}

// opsRoutes are the operational endpoints; /readyz fails until the
// replica knows the others, and once the server is stopping.
func opsRoutes(metrics, summary http.Handler, ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics)
	mux.Handle(report.SummaryPath, summary)
	mux.Handle("/healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }))
	mux.Handle("/readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready() {
			http.Error(w, "not ready: stopping, or not knowing the other replicas yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	}))
	return mux
}

// signingKey is the --token-key, or one made up for this process.
func signingKey(s settings.Settings, log logr.Logger) (*ecdsa.PrivateKey, error) {
	if s.TokenKey != "" {
		return token.LoadKey(s.TokenKey)
	}
	key, _, err := token.NewSigningKey()
	if err == nil {
		log.Info("no --token-key: generated a signing key; tokens will not survive a restart or work across replicas")
	}
	return key, err
}

// summaryChange is what a cache's write changes in the summary.
func summaryChange(registry string, st cache.Stored) summary.Change {
	c := summary.Change{Bytes: st.Bytes}
	if st.Tag != "" {
		c.Tag = &report.SummaryImage{Registry: registry, Repository: st.Repo, Tag: st.Tag, CachedAt: time.Now().UTC()}
		if st.NewTag {
			c.Images = 1
		}
	}
	return c
}

// throttled lists the upstreams spared for their rate limit.
func throttled(upstreams []settings.Upstream, clients []*upstream.Client) []report.ThrottledUpstream {
	var out []report.ThrottledUpstream
	for i, c := range clients {
		if c == nil {
			continue // a Helm repository
		}
		until, ok := c.Throttled()
		if !ok {
			continue
		}
		t := report.ThrottledUpstream{Registry: upstreams[i].Registry, Until: until.UTC().Truncate(time.Second)}
		if l := c.RateLimit(); l.Limit >= 0 {
			t.Limit, t.Remaining = l.Limit, l.Remaining
		}
		out = append(out, t)
	}
	return out
}

// logins builds the login side: who may pull, and the tokens that say so.
func logins(s settings.Settings, key *ecdsa.PrivateKey, sources token.Sources, auditLog *audit.Log, reg prometheus.Registerer, log logr.Logger) (*token.Guard, *token.Server, error) {
	var users *token.Users
	if s.Users != "" {
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		if users, err = token.LoadUsers(s.Users, der); err != nil {
			return nil, nil, err
		}
	}
	signer := token.NewSigner(key, s.Tenant, nil)
	opts := []token.ServerOption{token.WithMetrics(reg), token.WithSources(sources), token.WithLogger(log.WithName("token"))}
	if auditLog != nil {
		opts = append(opts, token.WithAudit(auditLog))
	}
	return token.NewGuard(signer, token.GuardOptions{Anonymous: users == nil, ExternalURL: s.ExternalURL, Service: s.Tenant}),
		token.NewServer(signer, users, opts...), nil
}

// OpenStorage opens the storage the settings name. An S3 bucket that is
// down at start is not an error: the proxy passes through until it is up.
func OpenStorage(ctx context.Context, s settings.Settings, log logr.Logger) (storage.Storage, error) {
	if !strings.HasPrefix(s.Storage, "s3://") {
		return storage.NewFilesystem(s.Storage)
	}
	bucket, prefix, err := s.S3Location()
	if err != nil {
		return nil, err
	}
	s3, err := storage.NewS3(bucket, prefix, storage.S3Options{Endpoint: s.S3Endpoint, Insecure: s.S3Insecure, Region: s.S3Region,
		Timeout: s.StorageTimeout.Std()})
	if err != nil {
		return nil, err
	}
	if err := s3.EnsureBucket(ctx); err != nil {
		log.Error(err, "storage not ready at start; passing through until it is")
	}
	return s3, nil
}

func accessLog(next http.Handler, log logr.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		next.ServeHTTP(w, r)
		log.V(1).Info("request", "method", r.Method, "path", r.URL.Path, "duration", time.Since(start).String())
	})
}
