package cleanup

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/pins"
	"github.com/depproxy/depproxy/proxy/storage"
)

// cacheOf writes what a cache holds after pulls: images with their
// blobs, tags and last-read markers.
type cacheOf struct {
	t     *testing.T
	store storage.Storage
}

func (c cacheOf) put(key string, b []byte) {
	c.t.Helper()
	if err := c.store.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		c.t.Fatal(err)
	}
}

// image stores an image manifest naming blobs (each of size bytes, one
// of them shared when shared is set) under tag, last read at read.
func (c cacheOf) image(tag string, size int, shared []byte, read time.Time) (digest.Digest, []digest.Digest) {
	var blobs []digest.Digest
	var layers []map[string]any
	for i, content := range [][]byte{bytes.Repeat([]byte(tag+fmt.Sprint(0)), size/len(tag+"0")), shared} {
		if content == nil {
			continue
		}
		d := digest.FromBytes(content)
		c.put(layout.Blob(d), content)
		blobs = append(blobs, d)
		layers = append(layers, map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(content), "i": i})
	}
	body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0], "size": size}, "layers": layers})
	d := digest.FromBytes(body)
	c.put(layout.Manifest(d), layout.ManifestRecord("application/vnd.oci.image.manifest.v1+json", body))
	key := layout.Tag("docker.io", "library/"+tag, "v1")
	c.put(key, []byte(d.String()))
	for _, k := range []string{key, layout.Manifest(d)} {
		c.put(layout.LastRead(k), []byte(layout.LastReadValue(read)))
	}
	return d, blobs
}

func (c cacheOf) has(key string) bool {
	_, err := c.store.Stat(context.Background(), key)
	return err == nil
}

// Ten images of about 100 KiB pulled an hour apart, one sharing a blob
// with the newest, two pinned (one in the stored set, one in the file),
// a 500 KiB budget: the oldest unpinned go first, down to 90%, the
// shared blob stays, and what is left is whole.
func TestBudgetEvictsLeastRecentlyPulled(t *testing.T) {
	store := storage.NewMemory()
	c := cacheOf{t, store}
	start := time.Now().Add(-30 * 24 * time.Hour)
	shared := bytes.Repeat([]byte("s"), 10<<10)
	var manifests []digest.Digest
	var blobs [][]digest.Digest
	for i := range 10 {
		var sh []byte
		if i == 0 || i == 9 {
			sh = shared
		}
		d, b := c.image(fmt.Sprintf("img%d", i), 90<<10, sh, start.Add(time.Duration(i)*time.Hour))
		manifests, blobs = append(manifests, d), append(blobs, b)
		c.put(layout.Verified(d, "policy", 1), []byte("{}")) // verified under a verify policy
	}
	if err := pins.Store(context.Background(), store, pins.Set{Manifests: []digest.Digest{manifests[1]}}); err != nil {
		t.Fatal(err)
	}
	pinned, _ := pins.ParseRef("img2:v1")
	var log strings.Builder
	sum, err := Run(context.Background(), store, Options{MaxSize: 500 << 10, Pinned: []pins.Ref{pinned}, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if sum.StoredBytes > 450<<10 || sum.OverBudget {
		t.Fatalf("stored %d bytes after the run, want at most 90%% of 500 KiB; over budget %v\n%s", sum.StoredBytes, sum.OverBudget, log.String())
	}
	// The unpinned, oldest first: the evicted are the first of them, and
	// no more than it took to get under 90%.
	order := []int{0, 3, 4, 5, 6, 7, 8, 9}
	n := int(sum.EvictedImages)
	if n == 0 || sum.StoredBytes+(91<<10) <= 450<<10 {
		t.Fatalf("evicted %d images, leaving %d bytes: too many or none", n, sum.StoredBytes)
	}
	for i := range 10 {
		evicted := !c.has(layout.Manifest(manifests[i]))
		wantEvicted := false
		for _, j := range order[:n] {
			wantEvicted = wantEvicted || i == j
		}
		if evicted != wantEvicted {
			t.Errorf("image %d evicted: %v, want %v (evicted %v)", i, evicted, wantEvicted, sum.Evicted)
		}
		if kept := c.has(layout.Verified(manifests[i], "policy", 1)); kept == evicted {
			t.Errorf("image %d evicted: %v, its verdict kept: %v; a verdict goes with its manifest only", i, evicted, kept)
		}
		for _, b := range blobs[i] {
			if !evicted && !c.has(layout.Blob(b)) {
				t.Errorf("image %d is kept without its blob %s", i, b)
			}
		}
	}
	if !c.has(layout.Blob(digest.FromBytes(shared))) {
		t.Error("the blob the newest image shares with an evicted one was deleted")
	}
	if sum.Evicted[0] != "docker.io/library/img0:v1" {
		t.Errorf("evicted %d: %v", sum.EvictedImages, sum.Evicted)
	}
}

// Pinned images alone over the budget: nothing pinned goes, and the
// summary says the budget is too small.
func TestBudgetTooSmallForThePinned(t *testing.T) {
	store := storage.NewMemory()
	c := cacheOf{t, store}
	var refs []pins.Ref
	for i := range 3 {
		c.image(fmt.Sprintf("p%d", i), 100<<10, nil, time.Now().Add(-48*time.Hour))
		r, _ := pins.ParseRef(fmt.Sprintf("p%d:v1", i))
		refs = append(refs, r)
	}
	sum, err := Run(context.Background(), store, Options{MaxSize: 100 << 10, Pinned: refs})
	if err != nil {
		t.Fatal(err)
	}
	if !sum.OverBudget || sum.EvictedImages != 0 || sum.DeletedBlobs != 0 {
		t.Fatalf("pinned over the budget: %+v", sum)
	}
}

// A TTL cleanup keeps a pinned image however long ago it was pulled.
func TestTTLKeepsPinned(t *testing.T) {
	store := storage.NewMemory()
	c := cacheOf{t, store}
	old := time.Now().Add(-40 * 24 * time.Hour)
	keptD, keptBlobs := c.image("kept", 1000, nil, old)
	goneD, _ := c.image("gone", 1000, nil, old)
	r, _ := pins.ParseRef("docker.io/library/kept:v1")
	if _, err := Run(context.Background(), store, Options{TTL: 30 * 24 * time.Hour, Pinned: []pins.Ref{r}, Now: func() time.Time { return time.Now().Add(time.Hour) }}); err != nil {
		t.Fatal(err)
	}
	if !c.has(layout.Manifest(keptD)) || !c.has(layout.Blob(keptBlobs[0])) || !c.has(layout.Tag("docker.io", "library/kept", "v1")) {
		t.Error("a pinned image was deleted by the TTL")
	}
	if c.has(layout.Manifest(goneD)) {
		t.Error("an unpinned image pulled 40 days ago survived a 30-day TTL")
	}
}

// A Pod's node pulled a digest the tag no longer points at: the digest
// pinned keeps that image and its blobs through the TTL, while the tag's
// new image, unpinned and old, goes.
func TestPinnedDigestOutlivesItsTag(t *testing.T) {
	store := storage.NewMemory()
	c := cacheOf{t, store}
	// Written now, last pulled 10 days ago, cleaned 31 days from now:
	// everything is past the 30-day TTL, markers or not.
	old := time.Now().Add(-10 * 24 * time.Hour)
	pulled, pulledBlobs := c.image("app", 1000, nil, old) // what the node runs
	moved, movedBlobs := c.image("app", 2000, nil, old)   // the tag now
	if d, _ := layout.ReadTag(context.Background(), store, "docker.io", "library/app", "v1"); d != moved {
		t.Fatal("the tag should point at the new image")
	}
	r, _ := pins.ParseRef("docker.io/library/app@" + pulled.String())
	if _, err := Run(context.Background(), store, Options{TTL: 30 * 24 * time.Hour, Pinned: []pins.Ref{r},
		Now: func() time.Time { return time.Now().Add(31 * 24 * time.Hour) }}); err != nil {
		t.Fatal(err)
	}
	if !c.has(layout.Manifest(pulled)) || !c.has(layout.Blob(pulledBlobs[0])) {
		t.Error("the pinned digest, or its blob, was deleted")
	}
	if c.has(layout.Manifest(moved)) || c.has(layout.Blob(movedBlobs[0])) {
		t.Error("the tag's new image, unpinned and past the TTL, survived")
	}
}
