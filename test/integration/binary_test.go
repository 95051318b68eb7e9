package integration

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// TestServeBinary runs `depproxy serve` as built, configured by a file and
// a flag, pulls through it, and stops it with SIGTERM.
func TestServeBinary(t *testing.T) {
	reg := testenv.StartRegistry(t)
	repo := repoName(t)
	pushIndex(t, reg.Addr, repo, "v1", ociIndex(t, ociImage(t, 1), ociImage(t, 1)))
	wantRoot, _ := pullAll(t, reg.URL(), repo, "v1")
	front := testenv.StartFront(t, reg.URL())

	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte("upstream: "+front.URL()+"\nlisten: 127.0.0.1:1\nrecheck-interval: 1m\n"), 0o644)
	proxy := proxytest.StartBinary(t, "--config", cfg, "--storage", filepath.Join(dir, "data"))
	base, ops := proxy.URL, proxy.Ops
	if got, _ := pullAll(t, base, repo, "v1"); got != wantRoot {
		t.Fatalf("pulled %s, want %s", got, wantRoot)
	}
	// The file's recheck-interval holds: within it, the tag again costs
	// the upstream nothing (by default every tag request is a HEAD).
	front.Reset()
	pullManifest0(t, base, repo, "v1")
	if n := front.Count("HEAD", "manifests") + front.Count("GET", "manifests"); n != 0 {
		t.Errorf("the config file's recheck-interval was not applied: the tag again cost %d upstream requests", n)
	}
	for _, path := range []string{"/readyz", "/metrics", "/status/summary"} {
		resp, body := get(t, ops+path, "")
		if resp.StatusCode != 200 {
			t.Errorf("%s: %s", path, resp.Status)
		}
		// Operational endpoints are on the metrics port alone: the
		// registry port faces tenants and answers them only under /v2.
		resp, body2 := get(t, base+path, "")
		ociError(t, resp, body2, http.StatusNotFound, "NOT_FOUND")
		if path == "/metrics" && !strings.Contains(string(body), `depproxy_proxy_misses_total{type="blob"`) {
			t.Errorf("/metrics lacks the cache counters:\n%s", body)
		}
	}
	resp, body := get(t, base+"/nope", "")
	ociError(t, resp, body, http.StatusNotFound, "NOT_FOUND")

	if err := proxy.Terminate(t, 30*time.Second); err != nil {
		t.Errorf("depproxy exited with %v after SIGTERM:\n%s", err, proxy.Log.String())
	}
	// Reads were noted in memory; a clean stop writes them out.
	markers, _ := filepath.Glob(filepath.Join(dir, "data", "_lastread", "blobs", "sha256", "*"))
	if len(markers) == 0 {
		t.Error("no last-read markers after SIGTERM: the pending reads were lost")
	}
}

// Spool files never outlive their download or a restart: kill -9
// mid-download leaves them, and the next start removes them; SIGTERM
// cancels the downloads and removes them itself. (A blob of 32 MiB or
// more is spooled to resume instead: TestDownloadResumesAfterARestart.)
func TestSpoolFilesDoNotOutliveTheProcess(t *testing.T) {
	e := newEnv(t)
	var s slowBlobs
	e.front.Fault(s.fault(16<<20, false))
	data := filepath.Join(t.TempDir(), "data")
	spoolDirs := func() []string {
		dirs, _ := filepath.Glob(filepath.Join(data, ".tmp", "spool-*"))
		return dirs
	}
	startDownload := func(base string, i int) {
		resp, err := http.Get(base + "/v2/slow/blob/blobs/" + randomDigest(i))
		if err != nil {
			t.Fatal(err)
		}
		io.CopyN(io.Discard, resp.Body, 256<<10)
		resp.Body.Close()
	}

	proxy := proxytest.StartBinary(t, "--upstream", e.front.URL(), "--storage", data)
	startDownload(proxy.URL, 1)
	if spoolFiles(t, data) == 0 {
		t.Fatal("no spool file while downloading")
	}
	proxy.Kill()
	crashed := spoolDirs()
	if spoolFiles(t, data) == 0 || len(crashed) != 1 {
		t.Fatalf("kill -9 left spools %v: the test shows nothing", crashed)
	}

	proxy = proxytest.StartBinary(t, "--upstream", e.front.URL(), "--storage", data)
	if _, err := os.Stat(crashed[0]); !os.IsNotExist(err) {
		t.Fatalf("the crashed process's spool %s survived the restart", crashed[0])
	}
	startDownload(proxy.URL, 2)
	if err := proxy.Terminate(t, 20*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM while a download ran: %v\n%s", err, proxy.Log.String())
	}
	if dirs := spoolDirs(); len(dirs) != 0 {
		t.Fatalf("SIGTERM left spools %v", dirs)
	}
	eventually(t, 5*time.Second, "the upstream download outlived the process", func() bool { return s.running.Load() == 0 })
}
