package server

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/depproxy/depproxy/proxy/audit"
	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/cleanup"
	"github.com/depproxy/depproxy/proxy/credprovider"
	"github.com/depproxy/depproxy/proxy/helmrepo"
	"github.com/depproxy/depproxy/proxy/hot"
	"github.com/depproxy/depproxy/proxy/keep"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/peers"
	"github.com/depproxy/depproxy/proxy/pins"
	"github.com/depproxy/depproxy/proxy/registry"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/routing"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/summary"
	"github.com/depproxy/depproxy/proxy/token"
	"github.com/depproxy/depproxy/proxy/ui"
	"github.com/depproxy/depproxy/proxy/upstream"
	"github.com/depproxy/depproxy/proxy/verify"
)

// assembly is a proxy being built from its settings, one step at a time
// (New lists them): what each step makes, the next ones use.
type assembly struct {
	s       settings.Settings
	log     logr.Logger
	o       options
	closers []func() error // what was opened, released in reverse

	store     storage.Storage
	spoolDir  string
	upstreams []settings.Upstream
	routes    routing.Table
	platforms []v1.Platform // prefetched
	warm      []v1.Platform // what is kept is warmed for
	key       *ecdsa.PrivateKey
	certs     *certReloader // nil: plain HTTP
	peering   *replicas     // nil: the only replica

	metrics  *prometheus.Registry
	cacheOpt []cache.Option // the metrics and the hot tier every cache shares
	scanner  *summary.Scanner
	gate     *accessGate
	verifier *verify.Verifier // nil: no --verify-policy
	keeper   *keep.Keeper
	plugins  *credprovider.Providers
	caches   []*cache.Cache
	clients  []*upstream.Client
	sharing  *nodeSharing // nil: no --node-key
}

// openStorage opens the storage (unless a test gave one) and this
// process's spool directory in it.
func (a *assembly) openStorage(ctx context.Context) error {
	a.store = a.o.store
	if a.store == nil {
		var err error
		if a.store, err = OpenStorage(ctx, a.s, a.log); err != nil {
			return err
		}
		if c, ok := a.store.(io.Closer); ok {
			a.closers = append(a.closers, c.Close)
		}
	}
	parent := a.s.SpoolDir
	switch {
	case parent != "":
	case a.s.HotDir != "":
		parent = a.s.HotDir // keeping a download hot is then a link
	default:
		parent = filepath.Join(os.TempDir(), "depproxy")
	}
	dir, closeSpool, err := storage.SpoolFor(a.store, parent)
	if err != nil {
		return err
	}
	a.spoolDir, a.closers = dir, append(a.closers, closeSpool)
	cache.ClearPartials(dir, time.Now())
	return nil
}

// settle reads what the settings name beyond themselves: upstreams and
// their routes, platforms, the signing key, TLS, the replicas. The
// settings were checked (Settings.Validate); what fails here is what
// they name: a file, the Kubernetes API.
func (a *assembly) settle(context.Context) error {
	var err error
	if a.upstreams, err = a.s.Upstreams(); err != nil {
		return err
	}
	if a.routes, err = a.s.Routes(); err != nil {
		return err
	}
	if a.platforms, a.warm, err = a.s.Platforms(); err != nil {
		return err
	}
	if a.key, err = signingKey(a.s, a.log); err != nil {
		return err
	}
	// Half a pair (settings a caller did not validate) fails to load:
	// never plain HTTP instead.
	if a.s.TLSCert != "" || a.s.TLSKey != "" {
		if a.certs, err = newCertReloader(a.s.TLSCert, a.s.TLSKey, a.log.WithName("tls")); err != nil {
			return err
		}
	}
	cfg, err := a.s.Replicas()
	if err != nil || cfg == nil {
		return err
	}
	a.peering, err = newReplicas(cfg, a.key, a.certs)
	return err
}

// observe makes the metrics registry, and the parts every cache shares
// that count into it (the hot tier among them).
func (a *assembly) observe(context.Context) error {
	a.metrics = prometheus.NewRegistry()
	a.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		cleanup.NewCollector(a.store), storage.NewSpoolCollector(a.spoolDir))
	if s3, ok := a.store.(*storage.S3); ok {
		a.metrics.MustRegister(s3.Collector())
	}
	if a.peering != nil {
		a.metrics.MustRegister(a.peering.collector())
	}
	a.cacheOpt = []cache.Option{cache.WithMetrics(cache.NewMetrics(a.metrics))}
	if a.s.HotDir != "" {
		tier, err := hot.Open(a.s.HotDir, int64(a.s.HotSize), hot.WithLogger(a.log.WithName("hot")), hot.WithMetrics(hot.NewMetrics(a.metrics)))
		if err != nil {
			return err
		}
		a.cacheOpt = append(a.cacheOpt, cache.WithHot(tier))
	}
	return nil
}

// keeping makes the summary, the access rules' gate and the keeper of
// the pins and the budget (which reads its files once the caches are
// there to resolve them, in connect).
func (a *assembly) keeping(context.Context) error {
	a.scanner = summary.New(a.store, nil).WithLogger(a.log.WithName("summary"))
	rules, err := a.s.Access()
	if err != nil {
		return err
	}
	a.gate = newAccessGate(rules, a.o.configFile, a.metrics, a.log.WithName("access"))
	if a.s.VerifyPolicy != "" {
		policy, err := verify.Load(a.s.VerifyPolicy)
		if err != nil {
			return err
		}
		a.verifier = verify.New(policy, a.s.VerifyPolicy, a.metrics, a.log.WithName("verify"), verify.WithVerdicts(a.store))
	}
	a.keeper = keep.New(keep.Options{Pinned: a.s.Pinned, Warm: a.s.Warm, MaxSize: int64(a.s.MaxSize), Store: a.store, Platforms: a.warm,
		Summary: a.scanner, Log: a.log.WithName("keep"), Timing: a.o.keepTiming,
		Leader: func() bool { return a.peering == nil || a.peering.ring.Owner(keeperKey) == a.peering.ring.Self() },
		Denied: func(r pins.Ref) string { return a.gate.Denied(a.namesOf(r.Registry, r.Repo), r.Repo, r.Tag) }})
	a.metrics.MustRegister(a.keeper.Collector())
	return nil
}

// namesOf are the names the access rules hold an image of a registry to.
func (a *assembly) namesOf(registry, repo string) []string {
	if to, err := a.routes.Route(registry, repo); err == nil {
		return a.routes.Names(to)
	}
	return []string{registry}
}

// pullThrough makes one upstream client and one cache per upstream, over
// the one storage: tags apart by registry, manifests and blobs shared by
// digest.
func (a *assembly) pullThrough(context.Context) error {
	s := a.s
	var err error
	if s.CredProviderConfig != "" {
		if a.plugins, err = credprovider.Load(s.CredProviderConfig, s.CredProviderBinDir, s.CredProviderTokens); err != nil {
			return err
		}
	}
	upstreamMetrics := upstream.NewMetrics(a.metrics)
	var replicaMetrics *peers.Metrics
	if a.peering != nil {
		replicaMetrics = peers.NewMetrics(a.metrics)
	}
	for i, u := range a.upstreams {
		// Checked here, not in Settings.Validate: the providers are in a
		// file.
		if u.CredentialProvider != "" && !a.plugins.Has(u.CredentialProvider) {
			return fmt.Errorf("upstream-credential-provider %s=%s: no such provider in --image-credential-provider-config", u.Registry, u.CredentialProvider)
		}
		up, client, err := a.dial(u, upstreamMetrics)
		if err != nil {
			return err
		}
		through := up
		if a.peering != nil {
			through = peers.NewUpstream(up, u.Registry, a.peering.ring, a.peering.signer, a.peering.tls, replicaMetrics,
				a.log.WithName("replicas").WithValues("registry", u.Registry))
		}
		var c *cache.Cache
		var checked []cache.Option
		if a.verifier != nil {
			names := a.routes.Names(routing.Route{Upstream: i})
			checked = append(checked, cache.WithPrefetchCheck(func(ctx context.Context, repo string, idx *cache.Manifest) error {
				return a.verifier.Check(ctx, registry.Signatures(c), names, repo, idx.Digest, idx.MediaType, idx.Body)
			}))
		}
		c = cache.New(through, a.store, append(append(append([]cache.Option{
			cache.WithLogger(a.log.WithName("cache").WithValues("registry", u.Registry)),
			cache.WithRegistry(u.Registry),
			cache.WithRecheckInterval(s.RecheckInterval.Std()),
			cache.WithPrefetch(a.platforms),
			cache.WithRedirect(s.S3Redirect),
			cache.WithStored(func(st cache.Stored) { a.scanner.Record(summaryChange(u.Registry, st)) }),
			cache.WithLimits(cache.Limits{MaxDownloads: s.MaxDownloads, MaxBlobSize: int64(s.MaxBlobSize)}),
			cache.WithMemory(int64(s.ManifestMemory)),
			cache.WithSpoolDir(a.spoolDir),
			cache.WithOrigins(len(a.upstreams) > 1),
			cache.WithUpstreamNotFound(s.OnUpstreamNotFound != settings.NotFound, a.keeper.Pinned(u.Registry)),
		}, checked...), a.cacheOpt...), a.o.cache...)...)
		a.caches, a.clients = append(a.caches, c), append(a.clients, client)
		a.closers = append([]func() error{func() error { c.Close(); return nil }}, a.closers...)
	}
	return nil
}

// dial makes the client of one upstream: a registry's (also returned as
// itself, for its rate limit), or a Helm chart repository's.
func (a *assembly) dial(u settings.Upstream, m *upstream.Metrics) (cache.Upstream, *upstream.Client, error) {
	if u.Helm {
		var opts []helmrepo.Option
		if u.Credentials != "" {
			host, _ := registryname.ChartRepoURL(u.URL)
			opts = append(opts, helmrepo.WithCredentials(upstream.FileCredentials(u.Credentials, host.Host)))
		}
		r, err := helmrepo.New(u.URL, opts...)
		return r, nil, err
	}
	c, err := upstream.New(u.URL, upstream.WithRegistry(u.Registry), upstream.WithMetrics(m),
		upstream.WithRateLimitReserve(a.s.RateLimitReserve), upstream.WithCredentials(u.Credentials, a.pluginCredentials(u)))
	return c, c, err
}

// pluginCredentials: a plugin is asked for the image pulled from the
// host the credentials go to, matched by that host (and the upstream's
// name), and only its own for a bound upstream. (The upstream's own
// credentials win: upstream.WithCredentials.)
func (a *assembly) pluginCredentials(u settings.Upstream) func(image string) authn.Authenticator {
	return func(image string) authn.Authenticator {
		if u.ProvidersBound && u.CredentialProvider == "" {
			return nil
		}
		return a.plugins.For(u.Registry, u.CredentialProvider, image)
	}
}

// connect tells the keeper and the summary what the caches are, now that
// they exist.
func (a *assembly) connect(context.Context) error {
	a.keeper.SetResolver(func(registry, repo string) (keep.Warmer, string, string, bool) {
		to, err := a.routes.Route(registry, repo)
		if err != nil {
			return nil, "", "", false
		}
		var w keep.Warmer = a.caches[to.Upstream]
		if a.verifier != nil {
			w = verifiedWarmer{a.caches[to.Upstream], a.verifier, a.routes.Names(to)}
		}
		return w, a.upstreams[to.Upstream].Registry, to.Repository, true
	})
	// The tags are pinned from the first request on; a typo in the
	// files stops the start.
	if err := a.keeper.Load(); err != nil {
		return err
	}
	a.scanner.SetHidden(func(registry, repo string) bool {
		return a.gate.Denied(a.namesOf(registry, repo), repo, "") != ""
	})
	a.scanner.SetLive(func(sum *report.Summary) {
		sum.Hits, sum.Misses = a.caches[0].HitCounts()
		sum.Throttled = throttled(a.upstreams, a.clients)
		a.keeper.Report(sum)
		sum.Denied = a.gate.denied.Load()
		sum.CredentialErrors = a.plugins.Failing()
		if a.sharing != nil {
			a.sharing.report(sum)
		}
		if a.verifier != nil {
			a.verifier.Report(sum)
		}
	})
	return nil
}

// verifiedWarmer warms an image only once its manifest passes the verify
// policy, as a pull is served only then: the manifest is read, checked,
// and only what verified is warmed (by digest, so a tag moving meanwhile
// warms nothing unchecked). In enforce mode a refusal, a *verify.Refusal,
// leaves the blobs unfetched.
type verifiedWarmer struct {
	c        *cache.Cache
	verifier *verify.Verifier
	names    []string // what the registry is known by, as the rules name it
}

func (w verifiedWarmer) Warm(ctx context.Context, repo string, ref manifest.Ref, platforms []v1.Platform) (cache.Warmed, error) {
	ctx = cache.Warming(ctx)
	m, err := w.c.Manifest(ctx, repo, ref, nil)
	if err != nil {
		return cache.Warmed{}, err
	}
	if err := w.verifier.Check(ctx, registry.Signatures(w.c), w.names, repo, m.Digest, m.MediaType, m.Body); err != nil {
		return cache.Warmed{}, err
	}
	return w.c.Warm(ctx, repo, manifest.DigestRef(m.Digest), platforms)
}

// serving makes the registry port's handler: logins, the audit log, the
// /v2 surface, the cache browser, and what replicas and --log-level add.
func (a *assembly) serving() (http.Handler, error) {
	s := a.s
	nets, err := s.TrustedProxyNets()
	if err != nil {
		return nil, err
	}
	clients := token.TrustProxies(nets)
	var auditLog *audit.Log
	var auditor registry.Auditor
	if s.AuditLog != "" {
		if auditLog, err = audit.Open(s.AuditLog, audit.Options{Tenant: s.Tenant, Blobs: s.AuditBlobs, ClientOf: clients.Of, MaxSize: int64(s.AuditLogMaxSize)}); err != nil {
			return nil, err
		}
		a.closers, auditor = append(a.closers, auditLog.Close), auditLog
	}
	guard, tokens, err := logins(s, a.key, clients, auditLog, a.metrics, a.log)
	if err != nil {
		return nil, err
	}
	var auth registry.Authorizer = guard
	if a.peering != nil {
		auth = replicaAuth{guard}
	}
	caches := make([]registry.Cache, len(a.caches))
	for i, c := range a.caches {
		caches[i] = c
	}
	var sharing registry.Sharer
	if a.sharing != nil { // a nil *nodeSharing would not be a nil Sharer
		sharing = a.sharing
	}
	var verifier registry.Verifier
	if a.verifier != nil {
		verifier = a.verifier
	}
	reg := registry.New(a.routes, caches, registry.Options{Auth: auth, Audit: auditor, Origins: storedOrigins{a.store},
		Access: a.gate, OnDenied: a.gate.count, Share: sharing, Verify: verifier}, a.log.WithName("registry"))
	browser := ui.New(a.scanner, tokens, a.caches[0].HitCounts, func(ctx context.Context) {
		for _, c := range a.caches {
			c.FlushReads(ctx)
		}
	}, a.log.WithName("ui"))
	handler := registryRoutes(reg, tokens, browser)
	if a.peering != nil {
		handler = replicaRequests(handler, a.peering.signer, a.peering.ring.Self())
	}
	if s.LogLevel >= 1 {
		handler = accessLog(handler, a.log.WithName("http"))
	}
	return handler, nil
}

// release closes what was opened, when a later step failed.
func (a *assembly) release() {
	for _, c := range a.closers {
		c()
	}
}
