package cleanup

import (
	"context"
	"encoding/json"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/storage"
)

// Collector exports the last run's summary as metrics. Runs are short-lived
// CronJob pods that nothing scrapes, so the proxy, which is scraped, reads
// the summary each run leaves in storage.
type Collector struct {
	store        storage.Storage
	lastRun      *prometheus.Desc
	deletedObjs  *prometheus.Desc
	deletedBytes *prometheus.Desc
}

// NewCollector reads summaries from store.
func NewCollector(store storage.Storage) *Collector {
	return &Collector{
		store:        store,
		lastRun:      prometheus.NewDesc("depproxy_cleanup_last_run_timestamp_seconds", "When the last cleanup run finished.", nil, nil),
		deletedObjs:  prometheus.NewDesc("depproxy_cleanup_last_run_deleted_objects", "Objects the last cleanup run deleted.", []string{"kind"}, nil),
		deletedBytes: prometheus.NewDesc("depproxy_cleanup_last_run_freed_bytes", "Bytes the last cleanup run freed.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lastRun
	ch <- c.deletedObjs
	ch <- c.deletedBytes
}

// Collect implements prometheus.Collector; without a run yet, it reports
// nothing.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := storage.ReadAll(ctx, c.store, layout.CleanupSummary, 1<<16)
	if err != nil {
		return
	}
	var s Summary
	if err := json.Unmarshal(raw, &s); err != nil {
		return
	}
	if t, err := time.Parse(time.RFC3339, s.FinishedAt); err == nil {
		ch <- prometheus.MustNewConstMetric(c.lastRun, prometheus.GaugeValue, float64(t.Unix()))
	}
	ch <- prometheus.MustNewConstMetric(c.deletedObjs, prometheus.GaugeValue, float64(s.DeletedTags), "tag")
	ch <- prometheus.MustNewConstMetric(c.deletedObjs, prometheus.GaugeValue, float64(s.DeletedManifests), "manifest")
	ch <- prometheus.MustNewConstMetric(c.deletedObjs, prometheus.GaugeValue, float64(s.DeletedBlobs), "blob")
	ch <- prometheus.MustNewConstMetric(c.deletedBytes, prometheus.GaugeValue, float64(s.FreedBytes))
}
