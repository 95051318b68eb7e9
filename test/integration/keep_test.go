package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/cleanup"
	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/pins"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
)

// writePins writes a pins file of these references.
func writePins(t *testing.T, path string, refs ...string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte("# pinned\n"+strings.Join(refs, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // as a ConfigMap volume swaps it
		t.Fatal(err)
	}
}

// startKeeping runs a proxy over store with a pins file (and a budget,
// when maxSize is set), looking at both every 200 ms.
func startKeeping(t *testing.T, upstreamURL string, store storage.Storage, pinsFile string, maxSize int64, adjust func(*settings.Settings), opts ...cache.Option) *proxytest.Proxy {
	t.Helper()
	s := settings.Defaults()
	s.Upstream, s.Pinned, s.MaxSize = settings.Keys(upstreamURL), pinsFile, settings.Size(maxSize)
	if adjust != nil {
		adjust(&s)
	}
	return proxytest.Start(t, s, server.WithStorage(store), server.WithKeepTiming(200*time.Millisecond, time.Second), server.WithCacheOptions(opts...))
}

// pinnedStatus is what the proxy's summary says of its pins.
func pinnedStatus(t *testing.T, p *proxytest.Proxy) []report.KeptImage {
	t.Helper()
	resp, body := get(t, p.Ops+report.SummaryPath, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("summary: %s", resp.Status)
	}
	var sum report.Summary
	if err := json.Unmarshal(body, &sum); err != nil {
		t.Fatal(err)
	}
	return sum.Kept
}

// A pinned image nobody pulled is cached within seconds: its index, the
// prefetch platform's child and that child's blobs, not the other
// platform's; a pin added to the file later is cached too.
func TestPinnedImagesAreWarmed(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	amd, arm := ociImage(t, 2), ociImage(t, 2)
	pushIndex(t, e.registry.Addr, repo, "v1", ociIndex(t, amd, arm))
	later := ociImage(t, 1)
	pushImage(t, e.registry.Addr, repo, "later", later)
	reg := registryname.Of(e.front.URL())
	store := openStorage(t, "minio", e.minio)
	pinsFile := filepath.Join(t.TempDir(), "pinned")
	writePins(t, pinsFile, reg+"/"+repo+":v1")
	warmFile := filepath.Join(t.TempDir(), "warm")
	writePins(t, warmFile)
	p := startKeeping(t, e.front.URL(), store, pinsFile, 0, func(s *settings.Settings) { s.WarmPlatforms, s.Warm = "linux/amd64", warmFile })

	waitFor(t, 30*time.Second, "the pinned image is cached", func() bool {
		for _, b := range blobsOf(t, amd) {
			if !exists(t, store, layout.Blob(b)) {
				return false
			}
		}
		return true
	})
	if !exists(t, store, layout.Tag(reg, repo, "v1")) || !exists(t, store, layout.Manifest(digest.Digest(digestOf(t, amd).String()))) {
		t.Fatal("the pinned tag or its platform's manifest is not cached")
	}
	for _, b := range blobsOf(t, arm)[1:] {
		if exists(t, store, layout.Blob(b)) {
			t.Fatal("a blob of a platform no node runs was cached")
		}
	}
	waitFor(t, 10*time.Second, "the summary says it is warmed", func() bool {
		st := pinnedStatus(t, p)
		return len(st) == 1 && st[0].Warmed && len(st[0].Children) == 1 && st[0].Children[0] == digestOf(t, amd).String()
	})
	set, err := pins.Load(context.Background(), store)
	if err != nil || len(set.Manifests) != 2 || len(set.Tags) != 1 {
		t.Fatalf("the stored pinned set: %+v, %v", set, err)
	}

	writePins(t, pinsFile, reg+"/"+repo+":v1", reg+"/"+repo+":later")
	waitFor(t, 30*time.Second, "a pin added to the file is cached", func() bool {
		return exists(t, store, layout.Manifest(digest.Digest(digestOf(t, later).String())))
	})

	// --warm: cached at once too, but not pinned.
	warmOnly := ociImage(t, 1)
	pushImage(t, e.registry.Addr, repo, "warm", warmOnly)
	writePins(t, warmFile, reg+"/"+repo+":warm")
	waitFor(t, 30*time.Second, "an image of the warm file is cached", func() bool {
		return exists(t, store, layout.Manifest(digest.Digest(digestOf(t, warmOnly).String())))
	})
	waitFor(t, 10*time.Second, "the pinned set is stored again", func() bool {
		set, err := pins.Load(context.Background(), store)
		return err == nil && len(set.Manifests) == 3 && len(set.Tags) == 2
	})
	for _, d := range mustLoadPins(t, store).Manifests {
		if d.String() == digestOf(t, warmOnly).String() {
			t.Fatal("an image only to warm is in the pinned set")
		}
	}
}

func mustLoadPins(t *testing.T, store storage.Storage) pins.Set {
	t.Helper()
	set, err := pins.Load(context.Background(), store)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// A pinned image last pulled 40 days ago survives a 30-day TTL cleanup,
// the cleanup knowing only the set the proxy stored; the same image
// unpinned goes.
func TestPinnedSurvivesTheTTL(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	kept, gone := ociImage(t, 1), ociImage(t, 1)
	pushImage(t, e.registry.Addr, repo, "kept", kept)
	pushImage(t, e.registry.Addr, repo, "gone", gone)
	reg := registryname.Of(e.front.URL())
	store := openStorage(t, "minio", e.minio)
	pinsFile := filepath.Join(t.TempDir(), "pinned")
	writePins(t, pinsFile, reg+"/"+repo+":kept")
	now := time.Now()
	clk := &clock{t: now.Add(-40 * day)}
	p := startKeeping(t, e.front.URL(), store, pinsFile, 0, nil, cache.WithClock(clk.Now))
	pullAll(t, p.URL, repo, "kept")
	pullAll(t, p.URL, repo, "gone")
	p.Server.Cache().FlushReads(context.Background())
	waitFor(t, 30*time.Second, "the pinned set is stored", func() bool {
		set, err := pins.Load(context.Background(), store)
		return err == nil && len(set.Manifests) == 1
	})
	if _, err := cleanup.Run(context.Background(), store, cleanup.Options{TTL: 30 * day, Grace: time.Hour,
		Now: func() time.Time { return now.Add(2 * time.Hour) }}); err != nil {
		t.Fatal(err)
	}
	for _, b := range blobsOf(t, kept) {
		if !exists(t, store, layout.Blob(b)) {
			t.Errorf("a blob of the pinned image was deleted")
		}
	}
	if !exists(t, store, layout.Tag(reg, repo, "kept")) {
		t.Error("the pinned tag was deleted")
	}
	if exists(t, store, layout.Tag(reg, repo, "gone")) || exists(t, store, layout.Manifest(digest.Digest(digestOf(t, gone).String()))) {
		t.Error("the unpinned image pulled 40 days ago survived")
	}
}

// The upstream deletes two cached tags: the pinned one is still served
// from the cache; the other, with --on-upstream-not-found not-found, is
// a 404, as upstream.
func TestPinnedTagOutlivesTheUpstream(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pinned, other := ociImage(t, 1), ociImage(t, 1)
	pushImage(t, e.registry.Addr, repo, "pinned", pinned)
	pushImage(t, e.registry.Addr, repo, "other", other)
	reg := registryname.Of(e.front.URL())
	pinsFile := filepath.Join(t.TempDir(), "pinned")
	writePins(t, pinsFile, reg+"/"+repo+":pinned")
	p := startKeeping(t, e.front.URL(), openStorage(t, "minio", e.minio), pinsFile, 0,
		func(s *settings.Settings) { s.OnUpstreamNotFound = settings.NotFound })
	pullAll(t, p.URL, repo, "pinned")
	pullAll(t, p.URL, repo, "other")
	for _, img := range []v1.Image{pinned, other} {
		req, _ := http.NewRequest(http.MethodDelete, e.registry.URL()+"/v2/"+repo+"/manifests/"+digestOf(t, img).String(), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("deleting upstream: %v %v", err, resp)
		}
	}
	if resp, _ := get(t, e.registry.URL()+"/v2/"+repo+"/manifests/pinned", string(types.OCIManifestSchema1)); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the upstream still has the tag: %s", resp.Status)
	}
	if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/pinned", string(types.OCIManifestSchema1)); resp.StatusCode != http.StatusOK || "sha256:"+sha(body) != digestOf(t, pinned).String() {
		t.Fatalf("the pinned tag deleted upstream: %s", resp.Status)
	}
	resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/other", string(types.OCIManifestSchema1))
	ociError(t, resp, body, http.StatusNotFound, "MANIFEST_UNKNOWN")
}

// The budget: 40 images pulled an hour apart fill the storage to about
// twice --max-size, 3 of them pinned (among the oldest). The proxy
// evicts by itself: the storage ends under the budget, the evicted are
// the least recently pulled unpinned ones, every manifest left has all
// its blobs, the pinned are all there.
func TestBudgetEvictsLeastRecentlyPulled(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	reg := registryname.Of(e.front.URL())
	const images, layerSize = 40, 64 << 10
	var imgs []v1.Image
	for i := range images {
		img := sizedImage(t, layerSize)
		pushImage(t, e.registry.Addr, repo, fmt.Sprintf("t%02d", i), img)
		imgs = append(imgs, img)
	}
	pinned := map[int]bool{1: true, 4: true, 7: true}
	pinsFile := filepath.Join(t.TempDir(), "pinned")
	var refs []string
	for i := range pinned {
		refs = append(refs, fmt.Sprintf("%s/%s:t%02d", reg, repo, i))
	}
	writePins(t, pinsFile, refs...)
	store := openStorage(t, "minio", e.minio)
	start := time.Now().Add(-60 * day)
	clk := &clock{t: start}
	// The pulls first, with no budget: then the same cache with one.
	filler := startKeeping(t, e.front.URL(), store, pinsFile, 0, nil, cache.WithClock(clk.Now))
	for i := range images {
		clk.Set(start.Add(time.Duration(i) * time.Hour))
		pullAll(t, filler.URL, repo, fmt.Sprintf("t%02d", i))
		filler.Server.Cache().FlushReads(context.Background())
	}
	if err := filler.Stop(); err != nil {
		t.Fatal(err)
	}
	full := storedBytes(t, store)
	maxSize := full / 2
	p := startKeeping(t, e.front.URL(), store, pinsFile, maxSize, nil)
	waitFor(t, 5*time.Minute, "the storage is under the budget", func() bool { return storedBytes(t, store) <= maxSize })

	var evicted []int
	for i, img := range imgs {
		if !exists(t, store, layout.Manifest(digest.Digest(digestOf(t, img).String()))) {
			evicted = append(evicted, i)
			continue
		}
		for _, b := range blobsOf(t, img) {
			if !exists(t, store, layout.Blob(b)) {
				t.Errorf("image %d is kept without its blob %s", i, b)
			}
		}
	}
	if len(evicted) == 0 {
		t.Fatal("nothing was evicted")
	}
	// The evicted are the oldest unpinned, in order: 0, 2, 3, 5, 6, 8, ...
	want := 0
	for _, i := range evicted {
		for pinned[want] {
			want++
		}
		if i != want {
			t.Fatalf("evicted %v: not the least recently pulled unpinned images", evicted)
		}
		want++
	}
	for i := range pinned {
		if !exists(t, store, layout.Tag(reg, repo, fmt.Sprintf("t%02d", i))) {
			t.Errorf("pinned image %d was evicted", i)
		}
	}
	waitFor(t, 10*time.Second, "the summary reports the eviction", func() bool {
		resp, body := get(t, p.Ops+report.SummaryPath, "")
		var sum report.Summary
		return resp.StatusCode == http.StatusOK && json.Unmarshal(body, &sum) == nil && sum.LastEviction != nil &&
			sum.LastEviction.EvictedImages > 0 && !sum.LastEviction.OverBudget && sum.LastEviction.StoredBytes <= maxSize && sum.MaxSize == maxSize
	})
}

// sizedImage is an image of one random layer of size bytes.
func sizedImage(t *testing.T, size int64) v1.Image {
	t.Helper()
	l, err := random.Layer(size, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), l)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// storedBytes is what the budget counts: manifests and blobs.
func storedBytes(t *testing.T, store storage.Storage) int64 {
	t.Helper()
	var n int64
	for _, prefix := range []string{layout.ManifestsPrefix, layout.BlobsPrefix} {
		if err := store.List(context.Background(), prefix, func(_ string, info storage.Info) error { n += info.Size; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

func waitFor(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !ok(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
	}
}

// Three replicas reading one pins file: the image is warmed with one
// upstream download per blob, by one replica.
func TestWarmingThreeReplicasDownloadsOnce(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	img := ociImage(t, 3)
	pushImage(t, e.registry.Addr, repo, "v1", img)
	pinsFile := filepath.Join(t.TempDir(), "pinned")
	writePins(t, pinsFile, registryname.Of(e.front.URL())+"/"+repo+":v1")
	e.front.Reset()
	startReplicas(t, 3, e.front.URL(), e.minio, nonName.ReplaceAllString(t.Name(), "-"), "--pinned", pinsFile)
	store := e.minio.Storage(t, "cache", nonName.ReplaceAllString(t.Name(), "-"))
	waitFor(t, 30*time.Second, "the pinned image is cached", func() bool {
		for _, b := range blobsOf(t, img) {
			if !exists(t, store, layout.Blob(b)) {
				return false
			}
		}
		return true
	})
	time.Sleep(time.Second) // a second replica warming would have started by now
	if got, want := e.front.Count(http.MethodGet, "blobs"), len(blobsOf(t, img)); got != want {
		t.Fatalf("warming through three replicas cost %d upstream blob GETs, want %d", got, want)
	}
}
