package cache

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/audit"
)

// Metrics are the caches' counters, named as Distribution's proxy names
// its own so that its dashboards port over; the caches of several
// upstreams share one set, apart by the upstream label (the registry).
// type is manifest or blob.
type Metrics struct {
	requests, hits, misses, coalesced *prometheus.CounterVec   // {upstream, type}
	pulled, served                    *prometheus.CounterVec   // bytes {upstream, type}
	stale                             *prometheus.CounterVec   // {upstream, reason}
	downloads                         *prometheus.GaugeVec     // {upstream}
	coldRanges                        *prometheus.CounterVec   // {upstream}
	resumes                           *prometheus.CounterVec   // {upstream}
	ranges                            *prometheus.CounterVec   // {upstream, state}
	rangeFirstByte                    *prometheus.HistogramVec // seconds {upstream, state}
	storageErrors                     prometheus.Counter
	passedThrough                     prometheus.Counter
	// hitCount and missCount feed the hit ratio of the summary.
	hitCount, missCount atomic.Int64
}

// NewMetrics builds the caches' metrics and registers them on r, if any.
func NewMetrics(r prometheus.Registerer) *Metrics {
	byType := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"upstream", "type"})
	}
	m := &Metrics{
		requests:  byType("depproxy_proxy_requests_total", "Manifest and blob requests served (a blob HEAD is not counted)."),
		hits:      byType("depproxy_proxy_hits_total", "Requests served from storage (or memory) without asking the upstream for the bytes."),
		misses:    byType("depproxy_proxy_misses_total", "Requests whose bytes came from the upstream (or from the replica that owns them)."),
		coalesced: byType("depproxy_proxy_coalesced_total", "Misses that shared a download already running for another request instead of starting their own."),
		pulled:    byType("depproxy_proxy_pulled_bytes_total", "Bytes downloaded from the upstream."),
		served:    byType("depproxy_proxy_served_bytes_total", "Bytes sent to clients."),
		stale: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depproxy_proxy_stale_serves_total",
			Help: "Cached tags served without the upstream's word, by why: refused, timeout, 5xx, 429, html (an error page), ratelimit (the upstream's rate limit is nearly spent), other.",
		}, []string{"upstream", "reason"}),
		downloads: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "depproxy_proxy_downloads",
			Help: "Upstream blob downloads under way, waiting for a slot and being stored included (at most --max-downloads transfer at once).",
		}, []string{"upstream"}),
		coldRanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depproxy_proxy_cold_ranges_total",
			Help: "Ranged upstream requests for reads far ahead of a blob's one download (a lazy-pulling snapshotter's footer, say), which the download did not wait for.",
		}, []string{"upstream"}),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depproxy_proxy_resumed_downloads_total",
			Help: "Blob downloads the upstream cut before their end, resumed where they stopped with a ranged request.",
		}, []string{"upstream"}),
		ranges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depproxy_proxy_ranges_total",
			Help: "Range requests answered 206, by state: warm (the blob stored) or cold (read from its download, or from a ranged upstream request ahead of it).",
		}, []string{"upstream", "state"}),
		rangeFirstByte: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "depproxy_proxy_range_first_byte_seconds",
			Help:    "Time from a range request to its first byte sent, by state (warm or cold): what a lazy-pulling snapshotter waits.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"upstream", "state"}),
		storageErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "depproxy_storage_errors_total",
			Help: "Storage operations that failed and were worked around by passing through.",
		}),
		passedThrough: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "depproxy_spool_full_total",
			Help: "Blob downloads the spool had no room for: streamed through to the client, uncached.",
		}),
	}
	if r != nil {
		r.MustRegister(m.requests, m.hits, m.misses, m.coalesced, m.pulled, m.served, m.stale, m.downloads, m.coldRanges, m.resumes, m.ranges, m.rangeFirstByte, m.storageErrors, m.passedThrough)
	}
	return m
}

// exportUpstream exports the range series of an upstream at zero, so
// that a rate over them (the dashboard's) has a start before the first
// lazy pull.
func (m *Metrics) exportUpstream(registry string) {
	m.coldRanges.WithLabelValues(registry)
	m.resumes.WithLabelValues(registry)
	for _, state := range []string{rangeState(true), rangeState(false)} {
		m.ranges.WithLabelValues(registry, state)
		m.rangeFirstByte.WithLabelValues(registry, state)
	}
}

const (
	kindManifest = "manifest"
	kindBlob     = "blob"
)

// result is how a request was served.
type result int

const (
	hit       result = iota // from storage or memory
	miss                    // downloaded for it
	coalesced               // shared a running download
)

// missOrShared: shared is a request that waited on another's download.
func missOrShared(shared bool) result {
	if shared {
		return coalesced
	}
	return miss
}

type forwardedKey struct{}

// Forwarded marks ctx as serving a request that another replica of this
// cache forwarded, once it proved so: the replica that forwarded it
// counts it, for its client, and whatever it needs comes from the
// upstream, never from a third replica (no request goes round in circles
// while replicas disagree about who owns what).
func Forwarded(ctx context.Context) context.Context {
	return context.WithValue(ctx, forwardedKey{}, true)
}

// IsForwarded reports whether ctx serves a forwarded request.
func IsForwarded(ctx context.Context) bool { return ctx.Value(forwardedKey{}) != nil }

// warmingKey marks the work of Warm: no client asked, so nothing is
// counted as a request.
type warmingKey struct{}

func counted(ctx context.Context) bool { return !IsForwarded(ctx) && ctx.Value(warmingKey{}) == nil }

type outcomeKey struct{}

// Outcome is how the cache answered one request, for the audit log: an
// audit answer (hit, miss, coalesced, stale) and, for a stale one, why.
type Outcome struct{ Answer, Reason string }

// WithOutcome returns ctx carrying o, which the cache fills in as it
// answers the request.
func WithOutcome(ctx context.Context, o *Outcome) context.Context {
	return context.WithValue(ctx, outcomeKey{}, o)
}

func setOutcome(ctx context.Context, answer, reason string) {
	if o, ok := ctx.Value(outcomeKey{}).(*Outcome); ok {
		o.Answer, o.Reason = answer, reason
	}
}

func (c *Cache) count(ctx context.Context, kind string, r result) {
	if !counted(ctx) {
		return
	}
	setOutcome(ctx, [...]string{hit: audit.Hit, miss: audit.Miss, coalesced: audit.Coalesced}[r], "")
	m := c.metrics
	m.requests.WithLabelValues(c.registry, kind).Inc()
	if r == hit {
		m.hits.WithLabelValues(c.registry, kind).Inc()
		m.hitCount.Add(1)
		return
	}
	m.misses.WithLabelValues(c.registry, kind).Inc()
	m.missCount.Add(1)
	if r == coalesced {
		m.coalesced.WithLabelValues(c.registry, kind).Inc()
	}
}

// CountServed adds bytes sent to a client, for the served-bytes counter
// (the registry writes the responses, and knows how much went out).
func (c *Cache) CountServed(ctx context.Context, kind string, bytes int64) {
	if !counted(ctx) {
		return
	}
	c.metrics.served.WithLabelValues(c.registry, kind).Add(float64(bytes))
}

// rangeState is a range's label: cold, from a blob being downloaded, or
// warm, from a stored one.
func rangeState(cold bool) string {
	if cold {
		return "cold"
	}
	return "warm"
}

// CountRange records a range answered, cold or warm, and its time to
// first byte.
func (c *Cache) CountRange(ctx context.Context, cold bool, firstByte time.Duration) {
	if !counted(ctx) {
		return
	}
	state := rangeState(cold)
	c.metrics.ranges.WithLabelValues(c.registry, state).Inc()
	c.metrics.rangeFirstByte.WithLabelValues(c.registry, state).Observe(firstByte.Seconds())
}

func (c *Cache) countPulled(kind string, bytes int64) {
	c.metrics.pulled.WithLabelValues(c.registry, kind).Add(float64(bytes))
}

func (c *Cache) countStale(reason string) {
	c.metrics.stale.WithLabelValues(c.registry, reason).Inc()
}
