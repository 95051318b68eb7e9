package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/test/proxytest"
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
	up := registryname.Of(e.front.URL())

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

// tagDigest is the digest a tag is served with through p.
func tagDigest(t *testing.T, p *proxytest.Proxy, repo, tag string) string {
	t.Helper()
	resp, _ := get(t, p.URL+"/v2/"+repo+"/manifests/"+tag, acceptAll)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %s", tag, resp.Status)
	}
	return resp.Header.Get("Docker-Content-Digest")
}

// Docker Hub's rate-limit headers are exported. Once what is left falls
// to --ratelimit-reserve, cached tags are still checked with a HEAD (free
// on Docker Hub, and what keeps the figure fresh), and a moved one is
// served as cached rather than spend a GET; what is not cached still goes
// through. After a 429, until its Retry-After, cached tags are served
// without asking.
func TestRateLimitReserve(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	pushImage(t, e.registry.Addr, repo, "v2", ociImage(t, 1))
	pushImage(t, e.registry.Addr, repo, "v3", ociImage(t, 1))
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", e.minio))
	up := registryname.Of(e.front.URL())
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
	digestOfTag := func(tag string) string { return tagDigest(t, p, repo, tag) }

	remaining = "50"
	answer(http.StatusOK)
	first := digestOfTag("v1")
	got := scrape(t, p.Ops)
	if l, r := sample(got, "depproxy_upstream_ratelimit_limit", "upstream", up), sample(got, "depproxy_upstream_ratelimit_remaining", "upstream", up); l != 100 || r != 50 {
		t.Fatalf("rate limit %v, remaining %v; want 100 and 50", l, r)
	}

	remaining = "10" // the default reserve
	digestOfTag("v1")
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 2)) // the tag moves
	e.front.Reset()
	for i := 0; i < 5; i++ {
		if d := digestOfTag("v1"); d != first {
			t.Fatalf("at the reserve, a moved tag was fetched (%s): the GET is kept for what is not cached", d)
		}
	}
	if h, g := e.front.Count("HEAD", "manifests"), e.front.Count("GET", "manifests"); h != 5 || g != 0 {
		t.Errorf("at the reserve, %d HEADs and %d GETs for a cached tag; want a HEAD each, no GET", h, g)
	}
	digestOfTag("v2")
	if n := e.front.Count("GET", "manifests"); n != 1 {
		t.Errorf("an uncached tag at the reserve: %d upstream GETs; want it fetched", n)
	}
	if v := sample(scrape(t, p.Ops), "depproxy_proxy_stale_serves_total", "upstream", up, "reason", "ratelimit"); v != 5 {
		t.Errorf("stale serves for the rate limit: %v, want 5", v)
	}

	// The window rolls on: the next answer says so, and the moved tag is
	// fetched.
	remaining = "90"
	if d := digestOfTag("v1"); d == first {
		t.Fatal("with 90 left, the moved tag is still served as it was")
	}
	// A 429 with Retry-After: 2 s without asking, then asking again.
	retryAfter = "2"
	answer(http.StatusTooManyRequests)
	digestOfTag("v1") // a HEAD, answered 429: the cached copy is served
	answer(http.StatusOK)
	e.front.Reset()
	digestOfTag("v1")
	digestOfTag("v2")
	if n := e.front.Count("HEAD", "manifests"); n != 0 {
		t.Errorf("after a 429 asking to wait 2 s, %d HEADs", n)
	}
	time.Sleep(2100 * time.Millisecond)
	digestOfTag("v1")
	if n := e.front.Count("HEAD", "manifests"); n != 1 {
		t.Errorf("after the Retry-After, %d HEADs, want 1", n)
	}
	if v := sample(scrape(t, p.Ops), "depproxy_proxy_stale_serves_total", "upstream", up, "reason", "429"); v != 3 {
		t.Errorf("stale serves for a 429: %v, want 3 (the answer, and two while waiting)", v)
	}
}

// What one 429 costs: with "0 left of a 6 h window" and no Retry-After,
// a tag moved upstream is seen seconds after the upstream answers again;
// a Retry-After of decades is capped and ended by the next good answer;
// and a CDN the registry redirects to says nothing of its rate limit.
func TestRateLimitWindowsAndWaits(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	pushImage(t, e.registry.Addr, repo, "other", ociImage(t, 1))
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", e.minio))
	digestOfTag := func(tag string) string { return tagDigest(t, p, repo, tag) }
	once := func(header http.Header) {
		var done atomic.Bool
		e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/manifests/") || !done.CompareAndSwap(false, true) {
				return false
			}
			for k, v := range header {
				w.Header()[k] = v
			}
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		})
	}
	seenWithin := func(what string, within time.Duration, old string) {
		t.Helper()
		start := time.Now()
		for digestOfTag("v1") == old {
			if time.Since(start) > within {
				t.Fatalf("%s: the moved tag was not seen within %v", what, within)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%s: the moved tag was seen after %v", what, time.Since(start).Round(100*time.Millisecond))
	}

	t.Run("one 429 with 0 left of the window and no Retry-After", func(t *testing.T) {
		old := digestOfTag("v1")
		once(http.Header{"Ratelimit-Limit": {"100;w=21600"}, "Ratelimit-Remaining": {"0;w=21600"}})
		if d := digestOfTag("v1"); d != old {
			t.Fatalf("the 429 was not answered from the cache: %s", d)
		}
		pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 2))
		seenWithin("after one 429", 10*time.Second, old)
	})

	t.Run("Retry-After of decades from the registry", func(t *testing.T) {
		old := digestOfTag("v1")
		once(http.Header{"Retry-After": {"999999999"}})
		digestOfTag("v1")
		pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 3))
		e.front.Reset()
		digestOfTag("v1")
		if n := e.front.Count("HEAD", "manifests"); n != 0 {
			t.Fatalf("%d HEADs while the 429's wait holds", n)
		}
		var sum report.Summary
		resp, body := do(t, "GET", p.Ops+"/status/summary", nil, nil)
		if err := json.Unmarshal(body, &sum); err != nil || resp.StatusCode != 200 || len(sum.Throttled) != 1 ||
			sum.Throttled[0].Until.After(time.Now().Add(time.Hour+time.Minute)) {
			t.Fatalf("the wait is not capped at an hour: %s %s", resp.Status, body)
		}
		digestOfTag("other") // uncached: asked, and answered
		seenWithin("after a good answer", 5*time.Second, old)
	})

	t.Run("a CDN's 429", func(t *testing.T) {
		cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "999999999")
			w.Header().Set("Ratelimit-Limit", "100;w=21600")
			w.Header().Set("Ratelimit-Remaining", "0;w=21600")
			w.WriteHeader(http.StatusTooManyRequests)
		}))
		defer cdn.Close()
		e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
				return false
			}
			http.Redirect(w, r, cdn.URL+"/layer", http.StatusTemporaryRedirect)
			return true
		})
		if resp, _ := get(t, p.URL+"/v2/"+repo+"/blobs/"+randomDigest(7), ""); resp.StatusCode == 200 {
			t.Fatal("the CDN's 429 was a blob")
		}
		e.front.Fault(nil)
		old := digestOfTag("v1")
		pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 4))
		e.front.Reset()
		seenWithin("after a CDN's 429", 2*time.Second, old)
		if e.front.Count("HEAD", "manifests") == 0 {
			t.Error("no HEAD after the CDN's 429")
		}
	})
}
