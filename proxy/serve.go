package main

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/cleanup"
	"github.com/depproxy/depproxy/proxy/config"
	"github.com/depproxy/depproxy/proxy/registry"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/token"
	"github.com/depproxy/depproxy/proxy/upstream"
)

func serve(cfg *config.Serve, log logr.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	store, err := openStorage(ctx, cfg, log)
	if err != nil {
		return err
	}
	var upOpts []upstream.Option
	if cfg.UpstreamCreds != "" {
		upOpts = append(upOpts, upstream.WithCredentialsDir(cfg.UpstreamCreds))
	}
	if cfg.UpstreamMirrorOf != "" {
		upOpts = append(upOpts, upstream.WithMirrorOf(strings.Split(cfg.UpstreamMirrorOf, ",")...))
	}
	up, err := upstream.New(cfg.Upstream, upOpts...)
	if err != nil {
		return err
	}
	platforms, err := parsePlatforms(cfg.PrefetchPlatforms)
	if err != nil {
		return err
	}
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		cleanup.NewCollector(store))
	c := cache.New(up, store,
		cache.WithLogger(log.WithName("cache")),
		cache.WithRecheckInterval(cfg.RecheckInterval),
		cache.WithPrefetch(platforms),
		cache.WithRedirect(cfg.S3Redirect),
		cache.WithMetrics(metrics),
	)

	guard, tokens, err := tokenService(cfg, metrics, log)
	if err != nil {
		return err
	}
	handler := routes(registry.New(c, guard, log.WithName("registry")), promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}),
		summaryHandler(c, cfg.SummaryInterval, log), tokens)
	if cfg.LogLevel >= 1 {
		handler = accessLog(handler, log.WithName("http"))
	}

	trackCtx, stopTracking := context.WithCancel(context.Background())
	tracked := make(chan struct{})
	go func() { c.TrackReads(trackCtx, time.Minute); close(tracked) }()
	defer func() { stopTracking(); <-tracked }() // the last reads are written before exit

	srv := &http.Server{Addr: cfg.Listen, Handler: handler, ReadHeaderTimeout: 30 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("serving", "listen", cfg.Listen, "upstream", cfg.Upstream, "storage", cfg.Storage, "recheckInterval", cfg.RecheckInterval.String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// routes sends every path that is not an operational endpoint to the
// registry, which answers unknown ones with OCI errors. (http.ServeMux
// would answer them in plain text, and redirect paths with "..".)
func routes(reg, metrics, summary, tokens http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/token":
			tokens.ServeHTTP(w, r)
		case "/metrics":
			metrics.ServeHTTP(w, r)
		case "/status/summary":
			summary.ServeHTTP(w, r)
		case "/healthz", "/readyz":
			w.Write([]byte("ok\n"))
		default:
			reg.ServeHTTP(w, r)
		}
	})
}

// tokenService builds the login side: who may pull, and the tokens that
// say so.
func tokenService(cfg *config.Serve, reg prometheus.Registerer, log logr.Logger) (*token.Guard, *token.Server, error) {
	var key *ecdsa.PrivateKey
	var err error
	if cfg.TokenKey != "" {
		if key, err = token.LoadKey(cfg.TokenKey); err != nil {
			return nil, nil, err
		}
	} else {
		if key, _, err = token.GenerateKey(); err != nil {
			return nil, nil, err
		}
		log.Info("no --token-key: generated a signing key; tokens will not survive a restart or work across replicas")
	}
	var users *token.Users
	if cfg.Users != "" {
		if users, err = token.LoadUsers(cfg.Users); err != nil {
			return nil, nil, err
		}
	}
	signer := token.NewSigner(key, cfg.Tenant, nil)
	return token.NewGuard(signer, users == nil, cfg.ExternalURL, cfg.Tenant),
		token.NewServer(signer, users, reg, log.WithName("token")), nil
}

// summaryHandler reports what the cache holds, for the operator's status.
func summaryHandler(c *cache.Cache, maxAge time.Duration, log logr.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := c.Summary(r.Context(), maxAge)
		if err != nil {
			log.Error(err, "cache summary failed")
			http.Error(w, "cache summary failed: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s)
	})
}

func openStorage(ctx context.Context, cfg *config.Serve, log logr.Logger) (storage.Storage, error) {
	if !strings.HasPrefix(cfg.Storage, "s3://") {
		return storage.NewFilesystem(cfg.Storage)
	}
	bucket, prefix, err := storage.ParseS3URL(cfg.Storage)
	if err != nil {
		return nil, err
	}
	s3, err := storage.NewS3(bucket, prefix, storage.S3Options{Endpoint: cfg.S3Endpoint, Insecure: cfg.S3Insecure, Region: cfg.S3Region})
	if err != nil {
		return nil, err
	}
	// The bucket may be down at start: the proxy still serves, passing
	// through, and storage is retried on every request.
	if err := s3.EnsureBucket(ctx); err != nil {
		log.Error(err, "storage not ready at start; passing through until it is")
	}
	return s3, nil
}

func parsePlatforms(list string) ([]v1.Platform, error) {
	var out []v1.Platform
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := v1.ParsePlatform(s)
		if err != nil {
			return nil, fmt.Errorf("prefetch-platforms %q: %w", s, err)
		}
		out = append(out, *p)
	}
	return out, nil
}

func accessLog(next http.Handler, log logr.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		next.ServeHTTP(w, r)
		log.V(1).Info("request", "method", r.Method, "path", r.URL.Path, "duration", time.Since(start).String())
	})
}
