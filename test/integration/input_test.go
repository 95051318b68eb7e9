package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestBadInput: every malformed request gets an OCI error with a 4xx
// status, and the proxy keeps serving.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	big := bytes.Repeat([]byte(" "), 5<<20)
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/manifests/huge") {
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Write([]byte(`{"schemaVersion":2,"config":{},"layers":[]}`))
			w.Write(big)
			return true
		}
		return false
	})
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	good := "sha256:" + strings.Repeat("a", 64)
	cases := []struct {
		method, path string
		body         []byte
		status       int
		code         string
	}{
		{"GET", "/v2/library/alpine/blobs/sha256:xyz", nil, 400, "DIGEST_INVALID"},
		{"GET", "/v2/library/alpine/blobs/sha256:" + strings.Repeat("a", 63), nil, 400, "DIGEST_INVALID"},
		{"GET", "/v2/library/alpine/blobs/md5:" + strings.Repeat("a", 32), nil, 400, "DIGEST_INVALID"},
		{"GET", "/v2/library/alpine/blobs/latest", nil, 400, "DIGEST_INVALID"},
		{"GET", "/v2/library/alpine/manifests/sha256:zz", nil, 400, "MANIFEST_INVALID"},
		{"GET", "/v2/library/alpine/manifests/" + strings.Repeat("t", 129), nil, 400, "MANIFEST_INVALID"},
		{"GET", "/v2/../../etc/passwd/blobs/" + good, nil, 400, "NAME_INVALID"},
		{"GET", "/v2/library/../../x/manifests/latest", nil, 400, "NAME_INVALID"},
		{"GET", "/v2/library/..%2f../manifests/latest", nil, 400, "NAME_INVALID"},
		{"GET", "/v2/Library/Alpine/manifests/latest", nil, 400, "NAME_INVALID"},
		{"GET", "/v2//manifests/latest", nil, 400, "NAME_INVALID"},
		{"GET", "/v2/" + strings.Repeat("a", 300) + "/manifests/latest", nil, 400, "NAME_INVALID"},
		{"GET", "/v2/" + strings.Repeat("abc/", 70) + "x/tags/list", nil, 400, "NAME_INVALID"},
		{"GET", "/v2/library/alpine/referrers/notadigest", nil, 400, "DIGEST_INVALID"},
		{"GET", "/v2/test/huge/manifests/huge", nil, 400, "MANIFEST_INVALID"},
		{"PUT", "/v2/library/alpine/manifests/latest", big, 405, "UNSUPPORTED"},
		{"POST", "/v2/library/alpine/blobs/uploads/", nil, 405, "UNSUPPORTED"},
		{"DELETE", "/v2/library/alpine/blobs/" + good, nil, 405, "UNSUPPORTED"},
		{"GET", "/v2/library/alpine/nothing", nil, 404, "NOT_FOUND"},
		{"GET", "/v2/_catalog", nil, 404, "NOT_FOUND"},
		{"GET", "/", nil, 404, "NOT_FOUND"},
		{"GET", "/index.html", nil, 404, "NOT_FOUND"},
	}
	for _, c := range cases {
		name := c.method + " " + c.path
		if len(name) > 80 {
			name = name[:80]
		}
		t.Run(name, func(t *testing.T) {
			req, err := http.NewRequest(c.method, p.URL+"/", bytes.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			req.URL.Opaque = c.path // sent as is: no client-side cleaning
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			ociError(t, resp, body, c.status, c.code)
		})
	}
	// After all that, the proxy still serves.
	resp, body := get(t, p.URL+"/v2/", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/ after bad input: %s %s", resp.Status, body)
	}
	if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
		t.Errorf("Docker-Distribution-API-Version %q", v)
	}
}

// TestTagsAndReferrers: tags/list comes from the upstream (and is served
// when it is down), referrers is always an OCI index.
func TestTagsAndReferrers(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	for _, tag := range []string{"a", "b"} {
		pushImage(t, e.registry.Addr, repo, tag, ociImage(t, 1))
	}
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	resp, body := get(t, p.URL+"/v2/"+repo+"/tags/list", "")
	want := fmt.Sprintf(`{"name":%q,"tags":["a","b"]}`, repo)
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != want {
		t.Fatalf("tags/list: %s %s, want %s", resp.Status, body, want)
	}
	// Nothing refers to this digest: the upstream has no referrers API
	// and no fallback tag for it.
	unknown := "/v2/" + repo + "/referrers/sha256:" + strings.Repeat("b", 64)
	resp, body = get(t, p.URL+unknown, "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" ||
		!strings.Contains(string(body), `"manifests":[]`) {
		t.Errorf("referrers: %s %q %s, want 200 and an empty OCI index", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	e.front.Stop()
	defer e.front.Start()
	if _, body := get(t, p.URL+"/v2/"+repo+"/tags/list", ""); strings.TrimSpace(string(body)) != want {
		t.Errorf("tags/list with the upstream down: %s", body)
	}
	// With the upstream down, what it would say is not known: an error,
	// never an empty list it did not give.
	resp, body = get(t, p.URL+"/v2/"+repo+"/referrers/sha256:"+strings.Repeat("c", 64), "")
	ociError(t, resp, body, http.StatusServiceUnavailable, "UNAVAILABLE")
}

// TestContainerdNamespace: as a containerd mirror, the cache serves its
// own upstream's images (?ns= matching) and refuses another registry's,
// without asking its upstream anything.
func TestContainerdNamespace(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/v1?ns="+e.front.Addr, acceptAll)
	if resp.StatusCode != 200 {
		t.Fatalf("own upstream's ns: %s %s", resp.Status, body)
	}
	e.front.Reset()
	resp, body = get(t, p.URL+"/v2/"+repo+"/manifests/v1?ns=ghcr.io", acceptAll)
	ociError(t, resp, body, 404, "NAME_UNKNOWN")
	if n := e.front.Count("GET", "manifests") + e.front.Count("HEAD", "manifests"); n != 0 {
		t.Errorf("a request for another registry reached the upstream %d times", n)
	}
}

// An upstream without the referrers API (CNCF Distribution answers 404)
// keeps what refers to an image in its fallback tag, as go-containerregistry
// pushes it there: the cache answers the referrers API from that tag, so
// a client sees the attached artifact rather than an empty list, and
// filters by artifactType as the spec says.
func TestReferrersFromTheFallbackTag(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	img := ociImage(t, 1)
	pushImage(t, e.registry.Addr, repo, "v1", img)
	subject := digestOf(t, img)
	sbom := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), "application/vnd.example.sbom")
	sbom = mutate.Subject(sbom, v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: subject, Size: int64(len(mustRaw(t, img)))}).(v1.Image)
	if err := remote.Write(ref(t, e.registry.Addr, repo, "sbom"), sbom); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	e.front.Reset()
	got, err := remote.Referrers(ref(t, p.Host, repo, subject.String()).Context().Digest(subject.String()))
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := got.IndexManifest()
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != digestOf(t, sbom) {
		t.Fatalf("referrers through the cache: %+v, want the SBOM %s", idx.Manifests, digestOf(t, sbom))
	}
	if e.front.Count("GET", "referrers") != 1 || e.front.Count("GET", "manifests") != 1 {
		t.Errorf("the upstream was asked %d referrers and %d manifests", e.front.Count("GET", "referrers"), e.front.Count("GET", "manifests"))
	}
	for _, c := range []struct {
		artifactType string
		want         int
	}{{"application/vnd.example.sbom", 1}, {"application/vnd.example.signature", 0}} {
		resp, body := get(t, p.URL+"/v2/"+repo+"/referrers/"+subject.String()+"?artifactType="+url.QueryEscape(c.artifactType), "")
		var filtered v1.IndexManifest
		if err := json.Unmarshal(body, &filtered); err != nil || resp.StatusCode != 200 || len(filtered.Manifests) != c.want ||
			resp.Header.Get("OCI-Filters-Applied") != "artifactType" {
			t.Errorf("artifactType %s: %s %q %s, want %d", c.artifactType, resp.Status, resp.Header.Get("OCI-Filters-Applied"), body, c.want)
		}
	}
	// The upstream down: the fallback tag as cached.
	e.front.Stop()
	defer e.front.Start()
	resp, body := get(t, p.URL+"/v2/"+repo+"/referrers/"+subject.String(), "")
	if resp.StatusCode != 200 || !strings.Contains(string(body), digestOf(t, sbom).String()) {
		t.Errorf("with the upstream down: %s %s", resp.Status, body)
	}
}

func mustRaw(t *testing.T, img v1.Image) []byte {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
