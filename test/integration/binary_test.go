package integration

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/depproxy/depproxy/test/testenv"
)

// TestServeBinary runs `depproxy serve` as built, configured by a file and
// a flag, pulls through it, and stops it with SIGTERM.
func TestServeBinary(t *testing.T) {
	reg := testenv.StartRegistry(t)
	repo := repoName(t)
	pushIndex(t, reg.Addr, repo, "v1", ociIndex(t, ociImage(t, 1), ociImage(t, 1)))
	wantRoot, _ := pullAll(t, reg.URL(), repo, "v1")

	dir := t.TempDir()
	bin := filepath.Join(dir, "depproxy")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/depproxy/depproxy/proxy").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	addr, opsAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte("upstream: "+reg.URL()+"\nlisten: 127.0.0.1:1\nrecheck-interval: 1m\nmetrics-listen: "+opsAddr+"\n"), 0o644)
	var logs strings.Builder
	cmd := exec.Command(bin, "serve", "--config", cfg, "--listen", addr, "--storage", filepath.Join(dir, "data"))
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	base, ops := "http://"+addr, "http://"+opsAddr
	for i := 0; ; i++ {
		if resp, err := http.Get(ops + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if i > 200 {
			t.Fatalf("depproxy did not start:\n%s", logs.String())
		}
		sleep()
	}
	if got, _ := pullAll(t, base, repo, "v1"); got != wantRoot {
		t.Fatalf("pulled %s, want %s", got, wantRoot)
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
		if path == "/metrics" && !strings.Contains(string(body), `depproxy_cache_requests_total{kind="blob",result="miss"}`) {
			t.Errorf("/metrics lacks the cache counters:\n%s", body)
		}
	}
	resp, body := get(t, base+"/nope", "")
	ociError(t, resp, body, http.StatusNotFound, "NOT_FOUND")

	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("depproxy exited with %v after SIGTERM:\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("depproxy did not stop on SIGTERM")
	}
	// Reads were noted in memory; a clean stop writes them out.
	markers, _ := filepath.Glob(filepath.Join(dir, "data", "_lastread", "blobs", "sha256", "*"))
	if len(markers) == 0 {
		t.Error("no last-read markers after SIGTERM: the pending reads were lost")
	}
	if !strings.Contains(logs.String(), `"recheckInterval":"1m0s"`) {
		t.Errorf("the config file's recheck-interval was not applied:\n%s", logs.String())
	}
}
