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
	bin := depproxyBinary(t)
	summaryFile := filepath.Join(dir, "termination-log")
	cmd := exec.Command(bin, "cleanup", "--storage", filepath.Join(dir, "data"), "--ttl", "720h", "--summary-file", summaryFile)
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The kernel's high-water mark of the cleanup's own memory. (rusage's
	// maxrss would count the test process too: the child shares its
	// memory until exec.)
	var rss int64
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for waiting := true; waiting; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("depproxy cleanup: %v", err)
			}
			waiting = false
		case <-time.After(5 * time.Millisecond):
			if hwm := testenv.PeakRSS(cmd.Process.Pid); hwm > rss {
				rss = hwm
			}
		}
	}
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
