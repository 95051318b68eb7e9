package summary

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/storage"
)

// countingStore counts List calls.
type countingStore struct {
	storage.Storage
	lists int
}

func (c *countingStore) List(ctx context.Context, prefix string, fn func(string, storage.Info) error) error {
	c.lists++
	return c.Storage.List(ctx, prefix, fn)
}

// The cache browser lists the tag space once per few seconds, whatever
// the number of views and filters; a tag stored since shows once that
// listing is older than that.
func TestCatalogReusesItsListing(t *testing.T) {
	ctx := context.Background()
	fs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store := &countingStore{Storage: fs}
	put := func(repo, tag string) {
		if err := fs.Put(ctx, layout.Tag("docker.io", repo, tag), strings.NewReader("sha256:x"), 8); err != nil {
			t.Fatal(err)
		}
	}
	put("library/alpine", "3.20")
	put("library/nginx", "1")
	now := time.Unix(1_000_000, 0)
	s := New(store, nil)
	s.now = func() time.Time { return now }

	for _, filter := range []string{"", "alpine", "NGINX", ""} {
		if _, _, err := s.Catalog(ctx, filter, 10); err != nil {
			t.Fatal(err)
		}
	}
	if store.lists != 1 {
		t.Fatalf("four views listed the tags %d times, want once", store.lists)
	}
	if got, total, _ := s.Catalog(ctx, "nginx", 10); total != 1 || got[0].Repository != "library/nginx" {
		t.Fatalf("filtered from the listing: %+v (%d)", got, total)
	}
	put("library/redis", "7")
	now = now.Add(catalogReuse)
	got, total, _ := s.Catalog(ctx, "", 10)
	if store.lists != 2 || total != 3 || got[2].Repository != "library/redis" {
		t.Fatalf("after %s: %d listings, %d tags %+v", catalogReuse, store.lists, total, got)
	}
}
