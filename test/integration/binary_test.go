package integration

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/depproxy/depproxy/test/testenv"
)

var built struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// depproxyBinary builds `depproxy` once per test run.
func depproxyBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "depproxy-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.path = filepath.Join(dir, "depproxy")
		built.out, built.err = exec.Command("go", "build", "-o", built.path, "github.com/depproxy/depproxy/proxy/cmd/depproxy").CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("go build: %v\n%s", built.err, built.out)
	}
	return built.path
}

// TestServeBinary runs `depproxy serve` as built, configured by a file and
// a flag, pulls through it, and stops it with SIGTERM.
func TestServeBinary(t *testing.T) {
	reg := testenv.StartRegistry(t)
	repo := repoName(t)
	pushIndex(t, reg.Addr, repo, "v1", ociIndex(t, ociImage(t, 1), ociImage(t, 1)))
	wantRoot, _ := pullAll(t, reg.URL(), repo, "v1")
	front := testenv.StartFront(t, reg.URL())

	dir := t.TempDir()
	bin := depproxyBinary(t)
	addr, opsAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte("upstream: "+front.URL()+"\nlisten: 127.0.0.1:1\nrecheck-interval: 1m\nmetrics-listen: "+opsAddr+"\n"), 0o644)
	var logs syncBuffer
	cmd := exec.Command(bin, "serve", "--config", cfg, "--listen", addr, "--storage", filepath.Join(dir, "data"))
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	base, ops := "http://"+addr, "http://"+opsAddr
	waitReady(t, ops, &logs)
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

	if err := terminate(t, cmd, 30*time.Second); err != nil {
		t.Errorf("depproxy exited with %v after SIGTERM:\n%s", err, logs.String())
	}
	// Reads were noted in memory; a clean stop writes them out.
	markers, _ := filepath.Glob(filepath.Join(dir, "data", "_lastread", "blobs", "sha256", "*"))
	if len(markers) == 0 {
		t.Error("no last-read markers after SIGTERM: the pending reads were lost")
	}
}

// startBinary runs `depproxy serve` with args and waits for it to be
// ready; it returns the registry's base URL and the command.
func startBinary(t *testing.T, logs *syncBuffer, args ...string) (string, *exec.Cmd) {
	t.Helper()
	base, _, cmd := startBinaryOps(t, logs, args...)
	return base, cmd
}

// startBinaryOps is startBinary, also returning the metrics port's base
// URL.
func startBinaryOps(t *testing.T, logs *syncBuffer, args ...string) (base, ops string, cmd *exec.Cmd) {
	t.Helper()
	addr, opsAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	cmd = exec.Command(depproxyBinary(t), append([]string{"serve", "--listen", addr, "--metrics-listen", opsAddr}, args...)...)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitReady(t, "http://"+opsAddr, logs)
	return "http://" + addr, "http://" + opsAddr, cmd
}

// waitReady waits for a depproxy's metrics port to say it is ready.
func waitReady(t *testing.T, ops string, logs *syncBuffer) {
	t.Helper()
	for i := 0; ; i++ {
		if resp, err := http.Get(ops + "/readyz"); err == nil {
			resp.Body.Close()
			return
		}
		if i > 400 {
			t.Fatalf("depproxy did not start:\n%s", logs.String())
		}
		sleep()
	}
}

// terminate sends SIGTERM and returns how the process exited; it fails
// the test if the process is still running after within.
func terminate(t *testing.T, cmd *exec.Cmd, within time.Duration) error {
	t.Helper()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		t.Fatalf("depproxy did not stop within %v of SIGTERM", within)
		return nil
	}
}

// Spool files never outlive their download or a restart: kill -9
// mid-download leaves them, and the next start removes them; SIGTERM
// cancels the downloads and removes them itself.
func TestSpoolFilesDoNotOutliveTheProcess(t *testing.T) {
	e := newEnv(t)
	var s slowBlobs
	e.front.Fault(s.fault(1<<30, false))
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

	var logs syncBuffer
	base, cmd := startBinary(t, &logs, "--upstream", e.front.URL(), "--storage", data)
	startDownload(base, 1)
	if spoolFiles(t, data) == 0 {
		t.Fatal("no spool file while downloading")
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	crashed := spoolDirs()
	if spoolFiles(t, data) == 0 || len(crashed) != 1 {
		t.Fatalf("kill -9 left spools %v: the test shows nothing", crashed)
	}

	base, cmd = startBinary(t, &logs, "--upstream", e.front.URL(), "--storage", data)
	if _, err := os.Stat(crashed[0]); !os.IsNotExist(err) {
		t.Fatalf("the crashed process's spool %s survived the restart", crashed[0])
	}
	startDownload(base, 2)
	if err := terminate(t, cmd, 20*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM while a download ran: %v\n%s", err, logs.String())
	}
	if dirs := spoolDirs(); len(dirs) != 0 {
		t.Fatalf("SIGTERM left spools %v", dirs)
	}
	eventually(t, 5*time.Second, "the upstream download outlived the process", func() bool { return s.running.Load() == 0 })
}
