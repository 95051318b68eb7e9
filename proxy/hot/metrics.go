package hot

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the hot tier's counters.
type Metrics struct {
	hits, misses, hitBytes, evictions, damaged prometheus.Counter
	size, limit, reading                       prometheus.Gauge
}

// NewMetrics builds the tier's metrics and registers them on r, if any.
func NewMetrics(r prometheus.Registerer) *Metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	m := &Metrics{
		hits:      counter("depproxy_proxy_hot_hits_total", "Blob requests served from this replica's hot tier, its local disk."),
		misses:    counter("depproxy_proxy_hot_misses_total", "Blob requests the hot tier had no good copy for: served from storage, the owner or the upstream."),
		hitBytes:  counter("depproxy_proxy_hot_hit_bytes_total", "Size of the blobs served from the hot tier."),
		evictions: counter("depproxy_proxy_hot_evictions_total", "Hot copies removed to stay within --hot-size or the disk's free-space floor, least recently read first; never one open for reading."),
		damaged:   counter("depproxy_proxy_hot_damaged_total", "Hot copies that failed their digest when read: dropped, and the blob read from storage."),
		size:      gauge("depproxy_proxy_hot_bytes", "Bytes kept in the hot tier."),
		limit:     gauge("depproxy_proxy_hot_limit_bytes", "The hot tier's size, --hot-size."),
		reading:   gauge("depproxy_proxy_hot_reading_bytes", "Bytes of hot copies open for reading: not evicted until read, so no blob is kept in their room meanwhile."),
	}
	if r != nil {
		r.MustRegister(m.hits, m.misses, m.hitBytes, m.evictions, m.damaged, m.size, m.limit, m.reading)
	}
	return m
}
