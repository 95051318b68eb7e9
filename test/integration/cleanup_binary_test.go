package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// TestCleanupCommandOnManyObjects runs `depproxy cleanup` as built on a
// cache of 100k objects: it deletes the unread ones, prints its summary as
// the last line, and its memory stays bounded. (The RSS is also in the
// docs/performance.md, from `make bench`.)
func TestCleanupCommandOnManyObjects(t *testing.T) {
	dir := t.TempDir()
	store, err := storage.NewFilesystem(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 100_000
	old := time.Now().Add(-40 * day)
	ctx := context.Background()
	for i := 0; i < n; i++ {
		d := digest.FromString(fmt.Sprint(i))
		key := layout.Blob(d)
		if err := store.Put(ctx, key, strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "data", filepath.FromSlash(key))
		os.Chtimes(p, old, old)
		if i%2 == 0 { // half were read yesterday
			v := layout.LastReadValue(time.Now().Add(-day))
			store.Put(ctx, layout.LastRead(key), strings.NewReader(v), int64(len(v)))
		}
	}
	bin := proxytest.Binary(t)
	summaryFile := filepath.Join(dir, "termination-log")
	cmd := exec.Command(bin, "cleanup", "--storage", filepath.Join(dir, "data"), "--ttl", "720h", "--summary-file", summaryFile)
	var stdout strings.Builder
	cmd.Stdout = &stdout
	rss := runWatchingRSS(t, cmd)
	out := stdout.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var sum struct{ DeletedBlobs, Kept int64 }
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
		t.Fatalf("the last line is not the JSON summary: %q", lines[len(lines)-1])
	}
	if sum.DeletedBlobs != n/2 || sum.Kept != n/2 {
		t.Errorf("summary %+v, want %d deleted and %d kept", sum, n/2, n/2)
	}
	if raw, _ := os.ReadFile(summaryFile); strings.TrimSpace(string(raw)) != lines[len(lines)-1] {
		t.Errorf("--summary-file holds %q", raw)
	}
	if rss == 0 {
		t.Fatal("could not read the cleanup's memory from /proc")
	}
	t.Logf("cleanup of %d objects: peak RSS %d MiB", n, rss>>20)
	if rss > 100<<20 {
		t.Errorf("cleanup of %d objects peaked at %d MiB of RSS", n, rss>>20)
	}
}

// `depproxy cleanup --max-size` on a cache of 100,000 objects (2,000
// images of 48 blobs, with their manifests and tags, pulled a minute
// apart) over twice the budget: it evicts the oldest images whole, ends
// under the budget, and its memory stays bounded. The time and the peak
// are in docs/performance.md.
func TestCleanupBudgetOnManyObjects(t *testing.T) {
	dir := t.TempDir()
	store, err := storage.NewFilesystem(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	const images, blobs, blobSize = 2000, 48, 100
	ctx := context.Background()
	put := func(key, value string) {
		if err := store.Put(ctx, key, strings.NewReader(value), int64(len(value))); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-day)
	var total int64
	for i := range images {
		var layers []string
		for j := range blobs {
			content := fmt.Sprintf("%0*d", blobSize, i*blobs+j)
			d := digest.FromString(content)
			put(layout.Blob(d), content)
			total += blobSize
			layers = append(layers, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}`, d, blobSize))
		}
		body := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}`,
			layers[0], strings.Join(layers[1:], ","))
		d := digest.FromString(body)
		rec := string(layout.ManifestRecord("application/vnd.oci.image.manifest.v1+json", []byte(body)))
		put(layout.Manifest(d), rec)
		total += int64(len(rec))
		tag := layout.Tag("docker.io", "library/many", fmt.Sprint(i))
		put(tag, d.String())
		put(layout.LastRead(tag), layout.LastReadValue(old.Add(time.Duration(i)*time.Minute)))
	}
	bin := proxytest.Binary(t)
	cmd := exec.Command(bin, "cleanup", "--storage", filepath.Join(dir, "data"), "--max-size", fmt.Sprint(total/2), "--grace", "0s")
	var stdout strings.Builder
	cmd.Stdout = &stdout
	started := time.Now()
	rss := runWatchingRSS(t, cmd)
	took := time.Since(started)
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var sum struct {
		StoredBytes, EvictedImages, DeletedBlobs int64
		Evicted                                  []string
		OverBudget                               bool
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
		t.Fatalf("the last line is not the JSON summary: %q", lines[len(lines)-1])
	}
	if sum.StoredBytes > total/2 || sum.OverBudget || sum.EvictedImages < images/2 || sum.DeletedBlobs != sum.EvictedImages*blobs {
		t.Errorf("summary %+v of %d bytes with a budget of %d", sum, total, total/2)
	}
	// The oldest went: the first tag, and not the newest.
	if !exists(t, store, layout.Tag("docker.io", "library/many", fmt.Sprint(images-1))) || exists(t, store, layout.Tag("docker.io", "library/many", "0")) {
		t.Error("the eviction did not take the least recently pulled")
	}
	t.Logf("budget eviction over %d objects: %s, peak RSS %d MiB", images*(blobs+3), took.Round(time.Millisecond), rss>>20)
	if rss > 150<<20 {
		t.Errorf("the eviction of %d objects peaked at %d MiB of RSS", images*(blobs+3), rss>>20)
	}
}

// runWatchingRSS runs cmd to its end and returns the kernel's high-water
// mark of its own memory. (rusage's maxrss would count the test process
// too: the child shares its memory until exec.)
func runWatchingRSS(t *testing.T, cmd *exec.Cmd) int64 {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var rss int64
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
			}
			return rss
		case <-time.After(5 * time.Millisecond):
			if hwm := testenv.PeakRSS(cmd.Process.Pid); hwm > rss {
				rss = hwm
			}
		}
	}
}

// `depproxy cleanup --help` shows the cleanup's flags, not serve's.
func TestCleanupHelpListsItsOwnFlags(t *testing.T) {
	out, _ := exec.Command(proxytest.Binary(t), "cleanup", "--help").CombinedOutput()
	for _, want := range []string{"-ttl", "-max-size", "-pinned", "-grace", "-storage", "-s3-endpoint", "-config"} {
		if !strings.Contains(string(out), want+" ") && !strings.Contains(string(out), want+"\n") {
			t.Errorf("cleanup --help lacks %s:\n%s", want, out)
		}
	}
	for _, not := range []string{"-listen", "-peers", "-hot-dir", "-upstream ", "-users"} {
		if strings.Contains(string(out), not) {
			t.Errorf("cleanup --help lists serve's %s:\n%s", not, out)
		}
	}
}
