package integration

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/cleanup"
	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/storage"
)

// clock is a settable clock for the proxy: objects are aged with it, not
// with sleeps.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

const day = 24 * time.Hour

func exists(t *testing.T, s storage.Storage, key string) bool {
	t.Helper()
	_, err := s.Stat(context.Background(), key)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

func blobsOf(t *testing.T, img v1.Image) []digest.Digest {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []digest.Digest{digest.Digest(m.Config.Digest.String())}
	for _, l := range m.Layers {
		out = append(out, digest.Digest(l.Digest.String()))
	}
	return out
}

// TestCleanup: three images share a base layer; two were last pulled 40
// days ago. A 30-day cleanup deletes those two (tags, manifests, their own
// blobs), keeps the base layer and the third image, and the third still
// pulls byte for byte with the upstream gone.
func TestCleanup(t *testing.T) {
	e := newEnv(t)
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			repo := repoName(t)
			base, err := random.Layer(4096, types.OCILayer)
			if err != nil {
				t.Fatal(err)
			}
			imgs := map[string]v1.Image{}
			for _, tag := range []string{"old-a", "old-b", "kept"} {
				img, err := mutate.AppendLayers(ociImage(t, 1), base)
				if err != nil {
					t.Fatal(err)
				}
				imgs[tag] = img
				pushImage(t, e.registry.Addr, repo, tag, img)
			}
			store := openStorage(t, backend, e.minio)
			now := time.Now()
			clk := &clock{t: now.Add(-40 * day)}
			p := startProxy(t, e.front.URL(), store, cache.WithClock(clk.Now))
			pullAll(t, p.URL, repo, "old-a")
			pullAll(t, p.URL, repo, "old-b")
			p.Server.Cache().FlushReads(ctx)
			clk.Set(now)
			wantRoot, want := pullAll(t, p.URL, repo, "kept")
			p.Server.Cache().FlushReads(ctx)

			opts := cleanup.Options{TTL: 30 * day, Grace: time.Hour, Now: func() time.Time { return now.Add(2 * time.Hour) }}
			dry := opts
			dry.DryRun = true
			drySum, err := cleanup.Run(ctx, store, dry)
			if err != nil {
				t.Fatal(err)
			}
			if !exists(t, store, layout.Tag(registryname.Of(e.front.URL()), repo, "old-a")) {
				t.Fatal("the dry run deleted a tag")
			}
			sum, err := cleanup.Run(ctx, store, opts)
			if err != nil {
				t.Fatal(err)
			}
			drySum.DryRun, drySum.DurationSeconds, drySum.FinishedAt = false, sum.DurationSeconds, sum.FinishedAt
			if !reflect.DeepEqual(*drySum, *sum) {
				t.Errorf("the dry run reported %+v, the run %+v", *drySum, *sum)
			}
			if sum.DeletedTags != 2 || sum.DeletedManifests != 2 || sum.DeletedBlobs != 4 || sum.FreedBytes == 0 {
				t.Errorf("summary %+v: want 2 tags, 2 manifests, 4 blobs (2 configs, 2 own layers)", *sum)
			}

			baseDigest, _ := base.Digest()
			for tag, img := range imgs {
				gone := tag != "kept"
				d := digestOf(t, img)
				if exists(t, store, layout.Tag(registryname.Of(e.front.URL()), repo, tag)) == gone || exists(t, store, layout.Manifest(digest.Digest(d.String()))) == gone {
					t.Errorf("%s: tag or manifest present = %v, want %v", tag, !gone, !gone)
				}
				for _, b := range blobsOf(t, img) {
					shared := b.String() == baseDigest.String()
					if want := !gone || shared; exists(t, store, layout.Blob(b)) != want {
						t.Errorf("%s: blob %s present = %v, want %v", tag, b, !want, want)
					}
				}
			}

			e.front.Stop()
			defer e.front.Start()
			gotRoot, got := pullAll(t, p.URL, repo, "kept")
			if gotRoot != wantRoot || !reflect.DeepEqual(got, want) {
				t.Fatal("the kept image no longer pulls byte for byte with the upstream down")
			}
		})
	}
}

// TestCleanupKeepsAnIndexsChildren: a tag read recently keeps its index,
// and the index keeps every child and their blobs, however long ago those
// were read.
func TestCleanupKeepsAnIndexsChildren(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	repo := repoName(t)
	amd, arm := ociImage(t, 1), ociImage(t, 1)
	pushIndex(t, e.registry.Addr, repo, "v1", ociIndex(t, amd, arm))
	store := openStorage(t, "filesystem", nil)
	now := time.Now()
	clk := &clock{t: now.Add(-40 * day)}
	p := startProxy(t, e.front.URL(), store, cache.WithClock(clk.Now))
	pullAll(t, p.URL, repo, "v1") // everything, 40 days ago
	p.Server.Cache().FlushReads(ctx)
	clk.Set(now)
	pullManifest0(t, p.URL, repo, "v1") // only the index, today
	p.Server.Cache().FlushReads(ctx)

	sum, err := cleanup.Run(ctx, store, cleanup.Options{TTL: 30 * day, Grace: time.Hour, Now: func() time.Time { return now.Add(2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	if sum.DeletedManifests != 0 || sum.DeletedBlobs != 0 || sum.DeletedTags != 0 {
		t.Fatalf("deleted parts of a kept index: %+v", *sum)
	}
	for _, img := range []v1.Image{amd, arm} {
		if !exists(t, store, layout.Manifest(digest.Digest(digestOf(t, img).String()))) {
			t.Error("a child of a kept index was deleted")
		}
		for _, b := range blobsOf(t, img) {
			if !exists(t, store, layout.Blob(b)) {
				t.Errorf("blob %s of a kept index's child was deleted", b)
			}
		}
	}
}

// TestCleanupSparesFreshWrites: a blob written while the run goes on (no
// read marker yet, not referenced by anything) survives; the same blob
// past the grace period does not.
func TestCleanupSparesFreshWrites(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			var store storage.Storage
			if backend == "s3" {
				store = newEnvMinIOOnly(t)
			} else {
				store = openStorage(t, backend, nil)
			}
			ctx := context.Background()
			d := digest.FromString("being written")
			if err := store.Put(ctx, layout.Blob(d), strings.NewReader("being written"), -1); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				after time.Duration
				want  bool
			}{{0, true}, {3 * time.Hour, false}} {
				_, err := cleanup.Run(ctx, store, cleanup.Options{TTL: time.Hour, Grace: time.Hour,
					Now: func() time.Time { return time.Now().Add(c.after) }})
				if err != nil {
					t.Fatal(err)
				}
				if got := exists(t, store, layout.Blob(d)); got != c.want {
					t.Errorf("run %s after the write: blob present = %v, want %v", c.after, got, c.want)
				}
			}
		})
	}
}
