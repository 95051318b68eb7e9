package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/cleanup"
	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/summary"
	"github.com/depproxy/depproxy/test/testenv"
)

// addTag stores a tag, its manifest and a blob as a cache does, and
// records it as the cache would.
func addTag(t *testing.T, store storage.Storage, s *summary.Scanner, repo, tag string) {
	t.Helper()
	ctx := context.Background()
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:` +
		strings.Repeat("a", 64) + `","size":2},"layers":[]}`)
	d := digest.FromBytes(body)
	rec := layout.ManifestRecord("application/vnd.oci.image.manifest.v1+json", body)
	for key, v := range map[string][]byte{layout.Manifest(d): rec, layout.Tag("docker.io", repo, tag): []byte(d.String())} {
		if err := store.Put(ctx, key, strings.NewReader(string(v)), int64(len(v))); err != nil {
			t.Fatal(err)
		}
	}
	s.Record(summary.Change{Bytes: int64(len(rec))})
	s.Record(summary.Change{Images: 1, Tag: &report.SummaryImage{Registry: "docker.io", Repository: repo, Tag: tag}})
}

// A summary costs what changed, not what is stored: the first one lists
// everything, the next ones only the journal the replicas wrote since,
// on every replica; a cleanup run makes the next one list everything
// again. On a filesystem cache of 100,000 objects, and on MinIO, where
// it counts LIST requests.
func TestSummaryCostsWhatChanged(t *testing.T) {
	ctx := context.Background()
	t.Run("filesystem, 100,000 objects", func(t *testing.T) {
		dir := t.TempDir()
		store, err := storage.NewFilesystem(dir)
		if err != nil {
			t.Fatal(err)
		}
		const n = 100_000
		for i := 0; i < n; i++ {
			key := layout.Blob(digest.FromString(fmt.Sprint(i)))
			p := filepath.Join(dir, filepath.FromSlash(key))
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		replicaA, replicaB := summary.New(store, nil), summary.New(store, nil)
		full, err := replicaA.Summary(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		first := replicaA.LastStats()
		if !first.Full || first.ObjectsListed < n || full.Bytes != n {
			t.Fatalf("first summary: %+v, %d bytes", first, full.Bytes)
		}
		replicaB.Summary(ctx, 0)

		addTag(t, store, replicaA, "library/app", "v1")
		sumA, err := replicaA.Summary(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		next := replicaA.LastStats()
		if next.Full || next.ObjectsListed > 5 || sumA.ImageCount != 1 || len(sumA.Images) != 1 || sumA.Images[0].Tag != "v1" ||
			sumA.Bytes <= n {
			t.Fatalf("after one new tag: %+v; summary %d images %v, %d bytes", next, sumA.ImageCount, sumA.Images, sumA.Bytes)
		}
		sumB, err := replicaB.Summary(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if other := replicaB.LastStats(); other.Full || other.ObjectsListed > 5 || sumB.ImageCount != 1 || sumB.Bytes != sumA.Bytes {
			t.Fatalf("the other replica: %+v; summary %d images, %d bytes (the first says %d)", other, sumB.ImageCount, sumB.Bytes, sumA.Bytes)
		}
		t.Logf("100,000 objects: the first summary listed %d objects in %v; the next, after a new tag, %d in %v",
			first.ObjectsListed, first.Duration, next.ObjectsListed, next.Duration)

		// A cleanup run deletes in bulk: the next summaries list it all.
		if _, err := cleanup.Run(ctx, store, cleanup.Options{TTL: 1}); err != nil {
			t.Fatal(err)
		}
		after, err := replicaB.Summary(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if st := replicaB.LastStats(); !st.Full || after.Bytes >= sumB.Bytes {
			t.Fatalf("after a cleanup run: %+v, %d bytes (before %d)", st, after.Bytes, sumB.Bytes)
		}
	})

	t.Run("MinIO", func(t *testing.T) {
		m := testenv.StartMinIO(t)
		m.Storage(t, "summary", "cache") // the bucket
		front := testenv.StartFront(t, "http://"+m.Addr)
		var lists atomic.Int64
		front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Query().Has("list-type") {
				lists.Add(1)
			}
			return false
		})
		store, err := storage.NewS3("summary", "cache", storage.S3Options{Endpoint: front.Addr, Insecure: true, Credentials: m.Credentials()})
		if err != nil {
			t.Fatal(err)
		}
		const n = 3000
		var wg sync.WaitGroup
		keys := make(chan string)
		for range 16 {
			wg.Go(func() {
				for key := range keys {
					if err := store.Put(ctx, key, strings.NewReader("x"), 1); err != nil {
						t.Error(err)
					}
				}
			})
		}
		for i := 0; i < n; i++ {
			keys <- layout.Blob(digest.FromString(fmt.Sprint(i)))
		}
		close(keys)
		wg.Wait()
		s := summary.New(store, nil)
		lists.Store(0)
		if _, err := s.Summary(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if got := lists.Load(); got < n/1000 {
			t.Fatalf("a full summary of %d objects made %d LIST requests", n, got)
		}
		fullLists := lists.Load()
		addTag(t, store, s, "library/app", "v1")
		lists.Store(0)
		sum, err := s.Summary(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := lists.Load(); got != 1 || sum.ImageCount != 1 {
			t.Fatalf("after one new tag: %d LIST requests, %d images; want 1 LIST", got, sum.ImageCount)
		}
		t.Logf("MinIO, %d objects: the first summary made %d LIST requests, the next 1", n, fullLists)
	})
}
