package cache

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the caches' counters; the caches of several upstreams
// share one set.
type Metrics struct {
	requests      *prometheus.CounterVec
	upstreamBytes prometheus.Counter
	storageErrors prometheus.Counter
	// hits and misses feed the hit ratio of the summary.
	hits, misses atomic.Int64
}

// NewMetrics builds the caches' metrics and registers them on r, if any.
func NewMetrics(r prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depproxy_cache_requests_total",
			Help: "Manifest and blob requests by result: hit (from storage), join (shared a running download), miss (downloaded).",
		}, []string{"kind", "result"}),
		upstreamBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "depproxy_upstream_blob_bytes_total",
			Help: "Blob bytes downloaded from the upstream.",
		}),
		storageErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "depproxy_storage_errors_total",
			Help: "Storage operations that failed and were worked around by passing through.",
		}),
	}
	if r != nil {
		r.MustRegister(m.requests, m.upstreamBytes, m.storageErrors)
	}
	return m
}

func (m *Metrics) request(kind, result string) {
	m.requests.WithLabelValues(kind, result).Inc()
	if result == "hit" {
		m.hits.Add(1)
	} else {
		m.misses.Add(1)
	}
}
