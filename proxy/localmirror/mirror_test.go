package localmirror_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/hot"
	"github.com/depproxy/depproxy/proxy/localmirror"
	"github.com/depproxy/depproxy/test/testenv"
)

// cache stands in for the cache the node's mirror is in front of: an OCI
// registry in process, which can be taken down, counts the blobs it
// serves, can be made to lie, and denies team/other as access rules
// would.
type cache struct {
	srv   *httptest.Server
	reg   http.Handler
	blobs atomic.Int64
	down  atomic.Bool
	lie   atomic.Bool
}

func startCache(t *testing.T) *cache {
	c := &cache{reg: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c.down.Load() {
			// Hijack and close: as a cache whose process is gone.
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		if strings.HasPrefix(r.URL.Path, "/v2/team/other/") {
			// The cache's access rules deny this repository.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"errors":[{"code":"DENIED","message":"denied by the access rules"}]}`)
			return
		}
		if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
			c.blobs.Add(1)
			if c.lie.Load() {
				rec := httptest.NewRecorder()
				c.reg.ServeHTTP(rec, r)
				body := rec.Body.Bytes()
				if len(body) > 0 {
					body[len(body)/2] ^= 0xff
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(body)
				return
			}
		}
		c.reg.ServeHTTP(w, r)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *cache) host() string { return strings.TrimPrefix(c.srv.URL, "http://") }

func push(t *testing.T, host, repo string) v1.Image {
	t.Helper()
	img, err := random.Image(64<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/"+repo+":v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return img
}

type node struct {
	mirror  *localmirror.Mirror
	store   *hot.Tier
	srv     *httptest.Server
	metrics *prometheus.Registry
}

func startNode(t *testing.T, c *cache, dir string) *node {
	t.Helper()
	return startNodeWithStore(t, c, dir, 1<<30)
}

// startNodeWithStore starts a node whose store keeps at most size bytes.
func startNodeWithStore(t *testing.T, c *cache, dir string, size int64) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	store, err := hot.Open(dir, size, hot.WithMetrics(hot.NewMetrics(reg)))
	if err != nil {
		t.Fatal(err)
	}
	m, err := localmirror.New(c.srv.URL, store, localmirror.WithMetrics(localmirror.NewMetrics(reg)))
	if err != nil {
		t.Fatal(err)
	}
	n := &node{mirror: m, store: store, srv: httptest.NewServer(m), metrics: reg}
	t.Cleanup(n.srv.Close)
	return n
}

func (n *node) host() string { return strings.TrimPrefix(n.srv.URL, "http://") }

func (n *node) bytes(t *testing.T, source string) float64 {
	t.Helper()
	mfs, err := n.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "depproxy_node_bytes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == source {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func pull(t *testing.T, host, repo, ref string) (v1.Hash, error) {
	t.Helper()
	return testenv.PullImage(host, repo, ref)
}

// What the node pulled once comes from its own disk after: the second
// pull costs the cache no blob, and with the cache down the node still
// pulls it by tag and by digest, also after its agent restarted.
func TestNodeServesWhatItPulled(t *testing.T) {
	c := startCache(t)
	img := push(t, c.host(), "team/app")
	want, _ := img.Digest()
	dir := t.TempDir()
	n := startNode(t, c, dir)

	if got, err := pull(t, n.host(), "team/app", ":v1"); err != nil || got != want {
		t.Fatalf("the first pull: %v, %v; want %v", got, err, want)
	}
	fromCache := c.blobs.Load()
	if fromCache == 0 || n.bytes(t, "cache") == 0 {
		t.Fatalf("the first pull did not come from the cache (%d blob GETs)", fromCache)
	}
	if got, err := pull(t, n.host(), "team/app", ":v1"); err != nil || got != want {
		t.Fatalf("the second pull: %v, %v", got, err)
	}
	if c.blobs.Load() != fromCache || n.bytes(t, "store") == 0 {
		t.Errorf("the second pull asked the cache for %d blobs; the store served %v bytes", c.blobs.Load()-fromCache, n.bytes(t, "store"))
	}

	c.down.Store(true)
	for _, ref := range []string{":v1", "@" + want.String()} {
		if got, err := pull(t, n.host(), "team/app", ref); err != nil || got != want {
			t.Errorf("with the cache down, %s: %v, %v", ref, got, err)
		}
	}
	// A tag the node never pulled: the runtime is told to go on to the
	// next host.
	resp, err := http.Get(n.srv.URL + "/v2/team/app/manifests/v2")
	if err != nil {
		t.Fatal(err)
	}
	assertOCIError(t, resp, http.StatusServiceUnavailable, "UNAVAILABLE")

	n.mirror.Close()
	n.srv.Close()
	again := startNode(t, c, dir)
	if got, err := pull(t, again.host(), "team/app", ":v1"); err != nil || got != want {
		t.Errorf("after a restart, with the cache down: %v, %v", got, err)
	}
}

// The store serves a digest only under a repository it was pulled under:
// under another, the cache decides (its access rules bind content to
// repositories), and with the cache down it is not served.
func TestNodeStoreBindsContentToRepositories(t *testing.T) {
	c := startCache(t)
	img := push(t, c.host(), "team/secret")
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()
	n := startNode(t, c, t.TempDir())
	if _, err := pull(t, n.host(), "team/secret", ":v1"); err != nil {
		t.Fatal(err)
	}
	// The cache refuses the blob under team/other: so does the node.
	resp, err := http.Get(n.srv.URL + "/v2/team/other/blobs/" + layer.String())
	if err != nil {
		t.Fatal(err)
	}
	assertOCIError(t, resp, http.StatusForbidden, "DENIED")
	c.down.Store(true)
	resp, err = http.Get(n.srv.URL + "/v2/team/other/blobs/" + layer.String())
	if err != nil {
		t.Fatal(err)
	}
	assertOCIError(t, resp, http.StatusServiceUnavailable, "UNAVAILABLE")
}

// Bytes from the cache that fail their digest are neither delivered whole
// nor kept: the runtime's read is cut, and the next pull goes to the
// cache again.
func TestNodeKeepsOnlyCheckedBytes(t *testing.T) {
	c := startCache(t)
	img := push(t, c.host(), "team/app")
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()
	size, _ := layers[0].Size()
	n := startNode(t, c, t.TempDir())
	c.lie.Store(true)
	resp, err := http.Get(n.srv.URL + "/v2/team/app/blobs/" + layer.String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil && int64(len(got)) == size {
		t.Fatalf("a corrupt blob was delivered whole (%d bytes, no error)", len(got))
	}
	c.lie.Store(false)
	before := c.blobs.Load()
	resp, err = http.Get(n.srv.URL + "/v2/team/app/blobs/" + layer.String())
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if h, _, _ := v1.SHA256(bytes.NewReader(got)); h != layer || c.blobs.Load() != before+1 {
		t.Errorf("after a corrupt transfer: %s from %d cache GETs; want %s fetched again", h, c.blobs.Load()-before, layer)
	}
}

func assertOCIError(t *testing.T, resp *http.Response, status int, code string) {
	t.Helper()
	defer resp.Body.Close()
	var body struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != status || len(body.Errors) != 1 || body.Errors[0].Code != code {
		t.Errorf("%s (%v): want %d with an OCI error %s", resp.Status, err, status, code)
	}
}
