package localmirror_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// storeBlob is the size of the blobs in the store's tests: larger than
// what the node's socket buffer and a slow runtime's take in, so that a
// runtime that stops reading holds the node's handler, and its copy,
// open.
const storeBlob = 16 << 20

// slowRuntime is a runtime that reads through a small socket buffer (set,
// the kernel does not grow it: on loopback it grows to tens of MiB).
func slowRuntime(t *testing.T) *http.Client {
	transport := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				err = conn.(*net.TCPConn).SetReadBuffer(64 << 10)
			}
			return conn, err
		},
	}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}
}

// A blob the node's store is serving is not evicted for the next one: a
// blob that fits only in its room is served from the cache and not kept,
// the blob being served reads whole and correct, and once its reader is
// done it is evicted for the next blob.
func TestNodeStoreKeepsBlobBeingServed(t *testing.T) {
	c := startCache(t)
	repo, err := name.NewRepository(c.host()+"/team/models", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	blob := func() ([]byte, v1.Hash) {
		t.Helper()
		content := make([]byte, storeBlob)
		rand.Read(content)
		layer := static.NewLayer(content, types.OCILayer)
		if err := remote.WriteLayer(repo, layer); err != nil {
			t.Fatal(err)
		}
		d, _ := layer.Digest()
		return content, d
	}
	a, dA := blob()
	b, dB := blob()
	cc, dC := blob()
	n := startNodeWithStore(t, c, t.TempDir(), storeBlob*3/2) // about one blob
	get := func(client *http.Client, d v1.Hash) *http.Response {
		t.Helper()
		resp, err := client.Get(n.srv.URL + "/v2/team/models/blobs/" + d.String())
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			t.Fatalf("%s: %s", d, resp.Status)
		}
		return resp
	}
	whole := func(d v1.Hash, want []byte) {
		t.Helper()
		resp := get(http.DefaultClient, d)
		defer resp.Body.Close()
		if got, err := io.ReadAll(resp.Body); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes (%v), not whole and correct", d, len(got), err)
		}
	}
	held := func(d v1.Hash) bool {
		_, ok := n.store.Size(digest.Digest(d.String()))
		return ok
	}

	whole(dA, a) // from the cache, into the store
	if !held(dA) {
		t.Fatal("a is not in the store")
	}
	fromCache := c.blobs.Load()
	// The runtime reads a from the store, and stops for a while.
	resp := get(slowRuntime(t), dA)
	defer resp.Body.Close()
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	if c.blobs.Load() != fromCache {
		t.Fatal("a was not served from the store")
	}
	if got := n.gauge(t, "depproxy_proxy_hot_reading_bytes"); got != storeBlob {
		t.Fatalf("the store counts %v bytes being read, want a's %d", got, storeBlob)
	}

	whole(dB, b)
	if held(dB) {
		t.Error("b was kept in the room of a blob being served")
	}
	if !held(dA) {
		t.Fatal("a was evicted while being served")
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(append(head, rest...), a) {
		t.Fatalf("a: %d bytes (%v), not whole and correct", len(head)+len(rest), err)
	}
	resp.Body.Close()
	// The handler lets go of a's copy once it has sent the last bytes.
	for deadline := time.Now().Add(10 * time.Second); n.gauge(t, "depproxy_proxy_hot_reading_bytes") != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a is still being read after its runtime got it whole")
		}
	}

	whole(dC, cc)
	if !held(dC) || held(dA) {
		t.Errorf("after a was read: c held %v, a held %v; want c kept and a evicted", held(dC), held(dA))
	}
	if got := n.gauge(t, "depproxy_proxy_hot_bytes"); got != storeBlob {
		t.Errorf("the store counts %v bytes, want %d", got, storeBlob)
	}
}

func (n *node) gauge(t *testing.T, metric string) float64 {
	t.Helper()
	mfs, err := n.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == metric {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", metric)
	return 0
}
