package cache_test

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/hot"
	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/storage"
)

// lookups counts what asks the storage for an object's size: a Stat,
// and an Open (on S3 each is a HEAD).
type lookups struct {
	storage.Storage
	mu sync.Mutex
	n  map[string]int
}

func (l *lookups) count(key string) {
	l.mu.Lock()
	l.n[key]++
	l.mu.Unlock()
}

func (l *lookups) Stat(ctx context.Context, key string) (storage.Info, error) {
	l.count(key)
	return l.Storage.Stat(ctx, key)
}

func (l *lookups) Open(ctx context.Context, key string) (io.ReadSeekCloser, storage.Info, error) {
	l.count(key)
	return l.Storage.Open(ctx, key)
}

func (l *lookups) of(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n[key]
}

// A stored blob read for the first time on a replica with a hot tier is
// served and copied there with one look at the storage; the next read
// costs none.
func TestHotFillLooksOnce(t *testing.T) {
	ctx := context.Background()
	content := bytes.Repeat([]byte("depproxy"), 4096)
	d := digest.FromBytes(content)
	store := &lookups{Storage: storage.NewMemory(), n: map[string]int{}}
	if err := store.Storage.Put(ctx, layout.Blob(d), bytes.NewReader(content), int64(len(content))); err != nil {
		t.Fatal(err)
	}
	tier, err := hot.Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c := cache.New(nil, store, cache.WithHot(tier), cache.WithSpoolDir(t.TempDir()))
	read := func() []byte {
		t.Helper()
		b, err := c.Blob(ctx, "team/app", d)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		got, err := io.ReadAll(b)
		if err != nil || b.Err() != nil {
			t.Fatalf("reading the blob: %v, %v", err, b.Err())
		}
		return got
	}
	if !bytes.Equal(read(), content) {
		t.Fatal("the stored blob served wrong")
	}
	c.Close() // the copy has ended
	if n := store.of(layout.Blob(d)); n != 1 {
		t.Errorf("serving and copying a stored blob looked at the storage %d times, want once", n)
	}
	if _, ok := tier.Size(d); !ok {
		t.Fatal("the blob is not hot after its read")
	}
	c = cache.New(nil, store, cache.WithHot(tier), cache.WithSpoolDir(t.TempDir()))
	defer c.Close()
	before := store.of(layout.Blob(d))
	if !bytes.Equal(read(), content) {
		t.Fatal("the hot blob served wrong")
	}
	if n := store.of(layout.Blob(d)) - before; n != 0 {
		t.Errorf("a hot blob looked at the storage %d times", n)
	}
}
