package integration

import (
	"context"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/testenv"
)

// cranePull pulls ref from a plain-HTTP registry into a fresh directory.
func cranePull(t *testing.T, ref string) error {
	dir := t.TempDir()
	cmd := exec.Command(testenv.Tool(t, "crane"), "pull", "--insecure", "--format", "oci", ref, dir)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		return &pullError{err: err, out: string(out)}
	}
	return nil
}

type pullError struct {
	err error
	out string
}

func (e *pullError) Error() string { return e.err.Error() + "\n" + e.out }

// A storage that hangs (MinIO stopped with SIGSTOP: connections open,
// nothing answers) is a storage outage: 16 concurrent cold pulls of a
// 40-layer image pass through from the upstream and finish in seconds,
// the proxy stays ready and says the storage is down. Once MinIO goes
// on, the cache stores again by itself, and serves with the upstream
// down.
func TestStorageThatHangs(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	img := ociImage(t, 40)
	pushImage(t, e.registry.Addr, repo, "v1", img)
	pushImage(t, e.registry.Addr, repo, "warm", ociImage(t, 1))
	store := openStorage(t, "s3", e.minio)
	p := startProxy(t, e.front.URL(), store)
	warm := tagDigest(t, p, repo, "warm") // cached, and confirmed by this replica

	e.minio.Pause()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			if err := cranePull(t, p.Host+"/"+repo+":v1"); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		t.Errorf("a pull with the storage hung: %v", err)
	}
	if took > 30*time.Second {
		t.Errorf("16 pulls with the storage hung took %v, want under 30 s", took)
	}
	t.Logf("16 cold pulls of 40 layers with the storage hung: %v", took.Round(100*time.Millisecond))
	m := scrape(t, p.Ops)
	if up, n := sample(m, "depproxy_storage_up"), sample(m, "depproxy_storage_timeouts_total"); up != 0 || n < 1 {
		t.Errorf("storage up %v, timeouts %v: the hang is not visible", up, n)
	}
	if resp, _ := get(t, p.Ops+"/readyz", ""); resp.StatusCode != 200 {
		t.Errorf("/readyz %s with the storage hung: the cache still serves", resp.Status)
	}
	// A tag this replica confirmed comes from memory, with the upstream
	// down too.
	e.front.Stop()
	if got := tagDigest(t, p, repo, "warm"); got != warm {
		t.Errorf("a confirmed tag with the storage hung and the upstream down: %s, want %s", got, warm)
	}
	e.front.Start()

	e.minio.Resume()
	eventually(t, 20*time.Second, "the storage is not seen again", func() bool {
		get(t, p.URL+"/v2/"+repo+"/manifests/v1", acceptAll) // a call that tries it
		return sample(scrape(t, p.Ops), "depproxy_storage_up") == 1
	})
	if err := cranePull(t, p.Host+"/"+repo+":v1"); err != nil {
		t.Fatal(err)
	}
	m2, _ := img.Manifest()
	for _, l := range m2.Layers {
		eventually(t, 10*time.Second, "a layer is not stored after the storage came back", func() bool {
			_, err := store.Stat(context.Background(), layout.Blob(digest.Digest(l.Digest.String())))
			return err == nil
		})
	}
	e.front.Stop()
	if err := cranePull(t, p.Host+"/"+repo+":v1"); err != nil {
		t.Errorf("with the upstream down, after the storage came back: %v", err)
	}
}

// A spool that cannot take a blob (the storage directory on a 40 MiB
// tmpfs, a 64 MiB blob): the client gets the blob's bytes, streamed
// through uncached; a second client at once gets them too; nothing
// partial is left, and the metric says so.
func TestSpoolWithoutRoom(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("mounting a small tmpfs needs root: run the tests as root (CI does)")
	}
	e := newEnv(t)
	repo := repoName(t)
	data, d := pushBlob(t, e.registry.Addr, repo, 64<<20)
	root := smallDisk(t, "40m")
	store, err := storage.NewFilesystem(root)
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, e.front.URL(), store)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			if _, err := getBlob(p.URL+"/v2/"+repo+"/blobs/"+d.String(), sha(data), 0); err != nil {
				t.Errorf("client %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if n := sample(scrape(t, p.Ops), "depproxy_spool_full_total"); n < 1 {
		t.Errorf("depproxy_spool_full_total %v: the full spool is not visible", n)
	}
	eventually(t, 5*time.Second, "a spool file is left", func() bool { return spoolFiles(t, root) == 0 })
	if _, err := store.Stat(context.Background(), layout.Blob(digest.Digest(d.String()))); err == nil {
		t.Error("a blob larger than the disk was stored")
	}
}

// smallDisk is a directory on a tmpfs of this size (as mount's size=),
// unmounted when the test ends. Mounting needs root: the caller checks.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}
