package integration

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/test/testenv"
)

// Within the recheck interval a warm tag costs no storage and no upstream
// round trip: it is answered from memory, even with MinIO stopped.
func TestWarmTagFromMemory(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	idx := ociIndex(t, ociImage(t, 1), ociImage(t, 1))
	pushIndex(t, e.registry.Addr, repo, "v1", idx)
	m := testenv.StartMinIO(t)
	p := startProxy(t, e.front.URL(), openStorage(t, "s3", m), cache.WithRecheckInterval(time.Minute))
	want, _ := pullAll(t, p.URL, repo, "v1")

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
	if logs := p.logs.String(); strings.Contains(logs, "storage unavailable") {
		t.Fatalf("the warm tag went to storage:\n%s", logs)
	}
}
