package server_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
)

// countingStorage counts every read of the storage.
type countingStorage struct {
	storage.Storage
	reads atomic.Int64
}

func (c *countingStorage) Open(ctx context.Context, key string) (io.ReadSeekCloser, storage.Info, error) {
	c.reads.Add(1)
	return c.Storage.Open(ctx, key)
}

func (c *countingStorage) Stat(ctx context.Context, key string) (storage.Info, error) {
	c.reads.Add(1)
	return c.Storage.Stat(ctx, key)
}

// With two upstreams, a blob asked for with no registry under a name
// every registry refuses is refused before the storage is asked where
// its blob came from; one that one registry allows is looked up.
func TestRefusedBeforeStorage(t *testing.T) {
	store := &countingStorage{Storage: storage.NewMemory()}
	s := settings.Defaults()
	s.Upstream = settings.Keys("one.test=http://127.0.0.1:1", "two.test=http://127.0.0.1:1")
	s.Deny, s.SpoolDir = settings.List{"one.test/secret/**", "two.test/secret/**"}, t.TempDir()
	ps := proxytest.Start(t, s, server.WithStorage(store))
	blob := "/blobs/sha256:" + strings.Repeat("a", 64)
	resp, err := http.Get(ps.URL + "/v2/secret/app" + blob)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "DENIED") {
		t.Fatalf("a refused blob: %s %s", resp.Status, body)
	}
	if n := store.reads.Load(); n != 0 {
		t.Fatalf("the storage was read %d times for a refused request", n)
	}
	resp, err = http.Get(ps.URL + "/v2/open/app" + blob)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if store.reads.Load() == 0 {
		t.Fatal("an allowed blob was not looked up")
	}
}
