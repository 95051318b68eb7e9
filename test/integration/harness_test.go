// Package integration pulls through the real proxy handler, cache and
// storage backends, from a real CNCF Distribution registry, with MinIO as
// S3, and with real clients (crane, skopeo).
package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// backends are the storages every case runs against.
var backends = []string{"filesystem", "s3"}

// env is the upstream side of a test: a real registry behind a front.
type env struct {
	registry *testenv.Registry
	front    *testenv.Front
	minio    *testenv.MinIO
}

func newEnv(t *testing.T) *env {
	t.Helper()
	reg := testenv.StartRegistry(t)
	return &env{registry: reg, front: testenv.StartFront(t, reg.URL()), minio: testenv.StartMinIO(t)}
}

func openStorage(t *testing.T, backend string, m *testenv.MinIO) storage.Storage {
	t.Helper()
	if backend == "filesystem" {
		fs, err := storage.NewFilesystem(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return fs
	}
	return m.Storage(t, "cache", nonName.ReplaceAllString(t.Name(), "-"))
}

// startProxy starts the proxy of one upstream over store, the settings
// otherwise the defaults; opts go to its cache.
func startProxy(t *testing.T, upstreamURL string, store storage.Storage, opts ...cache.Option) *proxytest.Proxy {
	t.Helper()
	s := settings.Defaults()
	s.Upstream = settings.Keys(upstreamURL)
	return proxytest.Start(t, s, server.WithStorage(store), server.WithCacheOptions(opts...))
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer = testenv.SyncBuffer

var acceptAll = strings.Join([]string{
	string(types.OCIImageIndex), string(types.OCIManifestSchema1),
	string(types.DockerManifestList), string(types.DockerManifestSchema2),
}, ", ")

// object is what a pull saw of one manifest or blob.
type object struct {
	contentType string
	sha256      string
	size        int
}

// pullAll pulls ref and everything it references, the way a client
// pulling every platform does, and returns what it got by digest. Each
// body must hash to its digest.
func pullAll(t *testing.T, base, repo, ref string) (string, map[string]object) {
	t.Helper()
	got := map[string]object{}
	root := pullManifest(t, base, repo, ref, got)
	return root, got
}

func pullManifest(t *testing.T, base, repo, ref string, got map[string]object) string {
	t.Helper()
	resp, body := get(t, base+"/v2/"+repo+"/manifests/"+ref, acceptAll)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s:%s: %s %s", repo, ref, resp.Status, body)
	}
	d := resp.Header.Get("Docker-Content-Digest")
	if sum := "sha256:" + sha(body); sum != d {
		t.Fatalf("manifest %s:%s: body hashes to %s, Docker-Content-Digest says %s", repo, ref, sum, d)
	}
	got[d] = object{contentType: resp.Header.Get("Content-Type"), sha256: sha(body), size: len(body)}
	var m struct {
		Manifests []struct{ Digest string } `json:"manifests"`
		Config    *struct{ Digest string }  `json:"config"`
		Layers    []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("manifest %s:%s is not JSON: %v", repo, ref, err)
	}
	for _, child := range m.Manifests {
		pullManifest(t, base, repo, child.Digest, got)
	}
	blobs := []string{}
	if m.Config != nil {
		blobs = append(blobs, m.Config.Digest)
	}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest)
	}
	for _, b := range blobs {
		resp, body := get(t, base+"/v2/"+repo+"/blobs/"+b, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET blob %s: %s %s", b, resp.Status, body)
		}
		if sum := "sha256:" + sha(body); sum != b {
			t.Fatalf("blob %s: got bytes hashing to %s", b, sum)
		}
		got[b] = object{sha256: sha(body), size: len(body)}
	}
	return d
}

func get(t *testing.T, url, accept string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp, body
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ociError checks that a response is an OCI error with this status and
// code, and never HTML.
func ociError(t *testing.T, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status %s, want %d; body %s", resp.Status, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("body is not an OCI error: %q", body)
	}
	if code != "" && e.Errors[0].Code != code {
		t.Errorf("error code %s (%s), want %s", e.Errors[0].Code, e.Errors[0].Message, code)
	}
}

// repoName is a repository name unique to the test.
func repoName(t *testing.T) string {
	return "test/" + strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
}

var nonName = regexp.MustCompile(`[^a-z0-9]+`)

func sprintObjects(m map[string]object) string {
	var b strings.Builder
	for d, o := range m {
		fmt.Fprintf(&b, "%s %s %d\n", d, o.contentType, o.size)
	}
	return b.String()
}

func sleep() { time.Sleep(25 * time.Millisecond) }

// newEnvMinIOOnly is S3 storage on a MinIO of the test's own.
func newEnvMinIOOnly(t *testing.T) storage.Storage {
	return openStorage(t, "s3", testenv.StartMinIO(t))
}
