package integration

import (
	"io"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/depproxy/depproxy/proxy/wire"
)

// scrape reads a proxy's /metrics as Prometheus does.
func scrape(t *testing.T, ops string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return families
}

// sample is the value of the series of family with these labels (a
// counter, a gauge, or a histogram's count); 0 when there is none.
func sample(families map[string]*dto.MetricFamily, family string, labels ...string) float64 {
	f := families[family]
	if f == nil {
		return 0
	}
	var sum float64
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// A known image pulled twice, then with the upstream down: every counter
// has the value the pulls make, by upstream and type.
func TestMetricsCountExactly(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	img := ociImage(t, 3)
	pushImage(t, e.registry.Addr, repo, "v1", img)
	m, _ := img.Manifest()
	raw, _ := img.RawManifest()
	blobBytes := m.Config.Size
	for _, l := range m.Layers {
		blobBytes += l.Size
	}
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", e.minio))
	up := wire.RegistryOf(e.front.URL())

	pullAll(t, p.URL, repo, "v1")
	pullAll(t, p.URL, repo, "v1")
	waitNoFill(t, p, m.Layers[0].Digest)
	got := scrape(t, p.Ops)
	for _, c := range []struct {
		family, typ string
		want        float64
	}{
		{"depproxy_proxy_requests_total", "manifest", 2},
		{"depproxy_proxy_hits_total", "manifest", 1},
		{"depproxy_proxy_misses_total", "manifest", 1},
		{"depproxy_proxy_requests_total", "blob", 8},
		{"depproxy_proxy_hits_total", "blob", 4},
		{"depproxy_proxy_misses_total", "blob", 4},
		{"depproxy_proxy_coalesced_total", "blob", 0},
		{"depproxy_proxy_pulled_bytes_total", "blob", float64(blobBytes)},
		{"depproxy_proxy_pulled_bytes_total", "manifest", float64(len(raw))},
		{"depproxy_proxy_served_bytes_total", "blob", float64(2 * blobBytes)},
		{"depproxy_proxy_served_bytes_total", "manifest", float64(2 * len(raw))},
	} {
		if v := sample(got, c.family, "upstream", up, "type", c.typ); v != c.want {
			t.Errorf("%s{upstream=%q,type=%q} = %v, want %v", c.family, up, c.typ, v, c.want)
		}
	}
	// The second pull asked the upstream one HEAD for the tag, nothing else.
	if v := sample(got, "depproxy_upstream_request_duration_seconds", "upstream", up, "method", "HEAD", "status", "2xx"); v != 1 {
		t.Errorf("upstream HEADs measured: %v, want 1", v)
	}
	if v := sample(got, "depproxy_upstream_request_duration_seconds", "upstream", up, "method", "GET", "status", "2xx"); v < 5 {
		t.Errorf("upstream GETs measured: %v, want at least the manifest and 4 blobs", v)
	}

	e.front.Stop()
	pullAll(t, p.URL, repo, "v1")
	got = scrape(t, p.Ops)
	if v := sample(got, "depproxy_proxy_stale_serves_total", "upstream", up, "reason", "refused"); v != 1 {
		t.Errorf("stale serves with the upstream refusing: %v, want 1", v)
	}
	if v := sample(got, "depproxy_upstream_request_duration_seconds", "upstream", up, "status", "error"); v < 1 {
		t.Errorf("refused upstream requests measured: %v", v)
	}
}

// Docker Hub's rate-limit headers are exported, and once what is left
// falls to --ratelimit-reserve, or after a 429 until its Retry-After, a
// cached tag is served without asking the upstream; what is not cached
// still goes through.
func TestRateLimitReserve(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	pushImage(t, e.registry.Addr, repo, "v2", ociImage(t, 1))
	pushImage(t, e.registry.Addr, repo, "v3", ociImage(t, 1))
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", e.minio))
	up := wire.RegistryOf(e.front.URL())
	var remaining, retryAfter string
	answer := func(status int) {
		e.front.Fault(e.front.Alter("manifests", func(w http.ResponseWriter, resp *http.Response) {
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.Header().Set("Ratelimit-Limit", "100;w=21600")
			w.Header().Set("Ratelimit-Remaining", remaining+";w=21600")
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.WriteHeader(status)
			if status == http.StatusOK {
				io.Copy(w, resp.Body)
			}
		}))
	}
	headTag := func(tag string) int {
		resp, _ := get(t, p.URL+"/v2/"+repo+"/manifests/"+tag, acceptAll)
		return resp.StatusCode
	}

	remaining = "50"
	answer(http.StatusOK)
	headTag("v1")
	got := scrape(t, p.Ops)
	if l, r := sample(got, "depproxy_upstream_ratelimit_limit", "upstream", up), sample(got, "depproxy_upstream_ratelimit_remaining", "upstream", up); l != 100 || r != 50 {
		t.Fatalf("rate limit %v, remaining %v; want 100 and 50", l, r)
	}
	e.front.Reset()
	headTag("v1")
	if n := e.front.Count("HEAD", "manifests"); n != 1 {
		t.Fatalf("with 50 left, %d HEADs for a cached tag, want 1", n)
	}

	remaining = "10" // the default reserve
	headTag("v1")
	e.front.Reset()
	for i := 0; i < 5; i++ {
		if s := headTag("v1"); s != 200 {
			t.Fatalf("cached tag at the reserve: %d", s)
		}
	}
	if n := e.front.Count("HEAD", "manifests") + e.front.Count("GET", "manifests"); n != 0 {
		t.Errorf("at the reserve, the upstream was asked %d times about a cached tag", n)
	}
	if s := headTag("v2"); s != 200 || e.front.Count("GET", "manifests") != 1 {
		t.Errorf("an uncached tag at the reserve: %d, %d upstream GETs; want it fetched", s, e.front.Count("GET", "manifests"))
	}
	if v := sample(scrape(t, p.Ops), "depproxy_proxy_stale_serves_total", "upstream", up, "reason", "ratelimit"); v != 5 {
		t.Errorf("stale serves for the rate limit: %v, want 5", v)
	}

	// The window moves on: an uncached tag's answer says so.
	remaining = "90"
	if s := headTag("v3"); s != 200 {
		t.Fatalf("v3: %d", s)
	}
	// A 429 with Retry-After: 2 s without asking, then asking again.
	retryAfter = "2"
	answer(http.StatusTooManyRequests)
	headTag("v1") // a HEAD, answered 429: the cached copy is served
	answer(http.StatusOK)
	e.front.Reset()
	headTag("v1")
	headTag("v2")
	if n := e.front.Count("HEAD", "manifests"); n != 0 {
		t.Errorf("after a 429 asking to wait 2 s, %d HEADs", n)
	}
	time.Sleep(2100 * time.Millisecond)
	headTag("v1")
	if n := e.front.Count("HEAD", "manifests"); n != 1 {
		t.Errorf("after the Retry-After, %d HEADs, want 1", n)
	}
	if v := sample(scrape(t, p.Ops), "depproxy_proxy_stale_serves_total", "upstream", up, "reason", "429"); v != 1 {
		t.Errorf("stale serves for a 429: %v, want 1", v)
	}
}
