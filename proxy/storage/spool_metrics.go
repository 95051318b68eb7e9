package storage

import (
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// spoolSpace reports the free and total space of the filesystem blobs
// are spooled on while they download: a full spool fails every cold
// pull.
type spoolSpace struct {
	dir         string
	free, total *prometheus.Desc
}

// NewSpoolCollector reports the space of the filesystem holding dir.
func NewSpoolCollector(dir string) prometheus.Collector {
	return &spoolSpace{dir: dir,
		free:  prometheus.NewDesc("depproxy_spool_free_bytes", "Free space where downloads are spooled until stored.", nil, nil),
		total: prometheus.NewDesc("depproxy_spool_capacity_bytes", "Size of the filesystem downloads are spooled on.", nil, nil),
	}
}

func (s *spoolSpace) Describe(ch chan<- *prometheus.Desc) { ch <- s.free; ch <- s.total }

func (s *spoolSpace) Collect(ch chan<- prometheus.Metric) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(s.free, prometheus.GaugeValue, float64(st.Bavail)*float64(st.Bsize))
	ch <- prometheus.MustNewConstMetric(s.total, prometheus.GaugeValue, float64(st.Blocks)*float64(st.Bsize))
}
