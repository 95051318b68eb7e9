package upstream

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the upstream clients' measurements; the clients of several
// upstreams share one set, apart by the upstream label (the registry).
type Metrics struct {
	duration         *prometheus.HistogramVec
	limit, remaining *prometheus.GaugeVec
}

// NewMetrics builds the upstream metrics and registers them on r.
func NewMetrics(r prometheus.Registerer) *Metrics {
	m := &Metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "depproxy_upstream_request_duration_seconds",
			Help:    "Requests to the upstream (its token server and blob redirects included), until the answer's headers, by method and status class (2xx, 3xx, 4xx, 5xx, or error: no answer).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"upstream", "method", "status"}),
		limit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "depproxy_upstream_ratelimit_limit",
			Help: "The upstream's rate limit, from its ratelimit-limit header (Docker Hub: pulls per window).",
		}, []string{"upstream"}),
		remaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "depproxy_upstream_ratelimit_remaining",
			Help: "What is left of the upstream's rate limit, from its ratelimit-remaining header.",
		}, []string{"upstream"}),
	}
	if r != nil {
		r.MustRegister(m.duration, m.limit, m.remaining)
	}
	return m
}

// WithMetrics measures the client's requests into m.
func WithMetrics(m *Metrics) Option { return func(c *Client) { c.metrics = m } }

// observed measures every request sent to the upstream and reads the
// rate-limit headers of every answer.
type observed struct {
	inner  http.RoundTripper
	client *Client
}

func (o observed) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := o.inner.RoundTrip(r)
	status := "error"
	if err == nil {
		status = strconv.Itoa(resp.StatusCode/100) + "xx"
		if r.URL.Host == o.client.base.Host && strings.HasPrefix(r.URL.Path, "/v2/") {
			// The registry's own answers; a CDN's or the token
			// realm's say nothing of its limit.
			o.client.limits.observe(resp, time.Now())
		}
	}
	if m := o.client.metrics; m != nil {
		name := o.client.label()
		m.duration.WithLabelValues(name, r.Method, status).Observe(time.Since(start).Seconds())
		if l := o.client.limits.state(); l.Limit >= 0 {
			m.limit.WithLabelValues(name).Set(float64(l.Limit))
			m.remaining.WithLabelValues(name).Set(float64(l.Remaining))
		}
	}
	return resp, err
}
