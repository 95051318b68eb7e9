package cleanup

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/storage"
)

// The proxy exports the last run's summary, which the run left in storage.
func TestCollector(t *testing.T) {
	fs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := NewCollector(fs)
	if n := testutil.CollectAndCount(c); n != 0 {
		t.Fatalf("%d metrics before any run, want none", n)
	}
	sum := `{"deletedTags":1,"deletedManifests":2,"deletedBlobs":3,"freedBytes":4096,"finishedAt":"2026-11-24T03:17:02Z"}`
	if err := fs.Put(context.Background(), layout.CleanupSummary, strings.NewReader(sum), int64(len(sum))); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP depproxy_cleanup_last_run_deleted_objects Objects the last cleanup run deleted.
# TYPE depproxy_cleanup_last_run_deleted_objects gauge
depproxy_cleanup_last_run_deleted_objects{kind="blob"} 3
depproxy_cleanup_last_run_deleted_objects{kind="manifest"} 2
depproxy_cleanup_last_run_deleted_objects{kind="tag"} 1
# HELP depproxy_cleanup_last_run_freed_bytes Bytes the last cleanup run freed.
# TYPE depproxy_cleanup_last_run_freed_bytes gauge
depproxy_cleanup_last_run_freed_bytes 4096
# HELP depproxy_cleanup_last_run_timestamp_seconds When the last cleanup run finished.
# TYPE depproxy_cleanup_last_run_timestamp_seconds gauge
depproxy_cleanup_last_run_timestamp_seconds 1.795490222e+09
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
