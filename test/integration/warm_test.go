package integration

import (
	"context"
	"net/http"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/test/testenv"
)

// Within the recheck interval a warm tag costs no storage and no upstream
// round trip: it is answered from memory, even with MinIO stopped.
func TestWarmTagFromMemory(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	a, b := ociImage(t, 1), ociImage(t, 1)
	idx := ociIndex(t, a, b)
	pushIndex(t, e.registry.Addr, repo, "v1", idx)
	m := testenv.StartMinIO(t)
	store := openStorage(t, "s3", m)
	p := startProxy(t, e.front.URL(), store, cache.WithRecheckInterval(time.Minute))
	want, _ := pullAll(t, p.URL, repo, "v1")
	// The blobs are stored after their clients have them: wait for
	// that, so that nothing is left to store once MinIO is gone.
	for _, img := range []v1.Image{a, b} {
		mf, _ := img.Manifest()
		for _, d := range append([]v1.Descriptor{mf.Config}, mf.Layers...) {
			eventually(t, 10*time.Second, "a blob is not stored", func() bool {
				_, err := store.Stat(context.Background(), layout.Blob(digest.Digest(d.Digest.String())))
				return err == nil
			})
		}
	}
	errorsBefore := sample(scrape(t, p.Ops), "depproxy_storage_errors_total")

	m.Stop()
	e.front.Reset()
	for i := 0; i < 20; i++ {
		for _, ref := range []string{"v1", want} {
			resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/"+ref, acceptAll)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want || "sha256:"+sha(body) != want {
				t.Fatalf("%s with storage down: %s %s", ref, resp.Status, resp.Header.Get("Docker-Content-Digest"))
			}
		}
	}
	if n := e.front.Count(http.MethodGet, "manifests") + e.front.Count(http.MethodHead, "manifests"); n != 0 {
		t.Fatalf("%d upstream manifest requests within the recheck interval", n)
	}
	if after := sample(scrape(t, p.Ops), "depproxy_storage_errors_total"); after != errorsBefore {
		t.Fatalf("the warm tag went to storage: %v storage errors with MinIO stopped", after-errorsBefore)
	}
}
