package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
)

// The fast tier: a whole proxy in this process, in front of
// go-containerregistry's in-memory registry, on in-memory storage. No
// tool, no disk but a spool directory, and each case in milliseconds.
// The real parts (CNCF Distribution, MinIO, real clients) are in
// test/integration.

// upstream is the registry the proxy pulls through. It counts what it is
// asked, and a case can make it refuse connections or answer 429.
type upstream struct {
	registry http.Handler
	mu       sync.Mutex
	calls    map[string]int // "GET manifests", "HEAD blobs", ...
	state    string         // "up", "down" or "429"
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind := pathKind(r.URL.Path)
	u.mu.Lock()
	state := u.state
	if kind != "ping" {
		u.calls[r.Method+" "+kind]++
	}
	u.mu.Unlock()
	switch {
	case state == "down" && kind != "ping":
		// A connection cut before any answer, as a registry that went
		// away leaves it.
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		}
		return
	case state == "429" && kind != "ping":
		w.Header().Set("Retry-After", "60")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limited"}]}`)
		return
	}
	u.registry.ServeHTTP(w, r)
}

func (u *upstream) set(state string) {
	u.mu.Lock()
	u.state, u.calls = state, map[string]int{}
	u.mu.Unlock()
}

func (u *upstream) asked() map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[string]int{}
	for k, v := range u.calls {
		out[k] = v
	}
	return out
}

func pathKind(p string) string {
	for _, k := range []string{"manifests", "blobs", "referrers"} {
		if strings.Contains(p, "/"+k+"/") {
			return k
		}
	}
	if strings.HasSuffix(p, "/tags/list") {
		return "tags"
	}
	return "ping"
}

// fixture is an upstream holding team/app:v1, and a proxy in front of it.
type fixture struct {
	up          *upstream
	upstreamURL string
	proxy       string
	image       v1.Image
	vars        map[string]string // what a case's path and headers may name: {manifest}, {layer}, ...
}

// configure sets what a case's proxy runs with, given the host its
// upstream is known by (the registry's name in rules and pins files).
type configure func(t testing.TB, s *settings.Settings, upstreamHost string)

func newFixture(t testing.TB, configs ...configure) *fixture {
	t.Helper()
	up := &upstream{registry: registry.New(registry.Logger(log.New(io.Discard, "", 0))), state: "up", calls: map[string]int{}}
	us := httptest.NewServer(up)
	t.Cleanup(us.Close)
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(us.URL, "http://") + "/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	s := settings.Defaults()
	for _, c := range configs {
		if c != nil {
			c(t, &s, strings.TrimPrefix(us.URL, "http://"))
		}
	}
	s.Upstream, s.SpoolDir = settings.Keys(us.URL), t.TempDir()
	p := proxytest.Start(t, s, server.WithStorage(storage.NewMemory()))
	digest, _ := img.Digest()
	mt, _ := img.MediaType()
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()
	size, _ := layers[0].Size()
	return &fixture{up: up, upstreamURL: us.URL, proxy: p.URL, image: img, vars: map[string]string{
		"{manifest}": digest.String(), "{mediaType}": string(mt), "{layer}": layer.String(),
		"{layerSize}": strconv.FormatInt(size, 10), "{layerEnd}": strconv.FormatInt(size-1, 10),
	}}
}

func (f *fixture) expand(s string) string {
	for k, v := range f.vars {
		s = strings.ReplaceAll(s, k, v)
	}
	return s
}

func (f *fixture) do(t *testing.T, method, path string, header map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, f.proxy+f.expand(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	for k, v := range header {
		req.Header.Set(k, f.expand(v))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

const (
	tagPath       = "/v2/team/app/manifests/v1"
	manifestPath  = "/v2/team/app/manifests/{manifest}"
	layerPath     = "/v2/team/app/blobs/{layer}"
	referrersPath = "/v2/team/app/referrers/{manifest}"
)

// What a client sees for each request, with what was cached before, the
// upstream's state, and what the upstream was asked meanwhile.
func TestPulls(t *testing.T) {
	cases := []struct {
		name     string
		warm     []string // pulled first, with the upstream up
		upstream string   // up, down, 429
		method   string
		path     string
		header   map[string]string
		status   int
		want     map[string]string                        // response headers
		code     string                                   // the OCI error code
		asked    map[string]int                           // the upstream's requests, exactly
		config   configure                                // the proxy's settings, when not the defaults
		setup    func(t *testing.T, f *fixture)           // the upstream's content or behaviour, before warming
		deleted  []string                                 // deleted at the upstream after warming
		body     func(t *testing.T, f *fixture, b []byte) // what the body must say
	}{
		{name: "the API answers", method: "GET", path: "/v2/", status: 200, asked: map[string]int{}},
		{name: "a cold tag is fetched once", method: "GET", path: tagPath, status: 200,
			want:  map[string]string{"Docker-Content-Digest": "{manifest}", "Content-Type": "{mediaType}"},
			asked: map[string]int{"GET manifests": 1}},
		{name: "a cached tag costs one HEAD", warm: []string{tagPath}, method: "GET", path: tagPath, status: 200,
			want: map[string]string{"Docker-Content-Digest": "{manifest}"}, asked: map[string]int{"HEAD manifests": 1}},
		{name: "a cached tag is served with the upstream down", warm: []string{tagPath}, upstream: "down",
			method: "GET", path: tagPath, status: 200, want: map[string]string{"Docker-Content-Digest": "{manifest}"}},
		{name: "a cached tag is served while the upstream asks to wait", warm: []string{tagPath}, upstream: "429",
			method: "GET", path: tagPath, status: 200, want: map[string]string{"Docker-Content-Digest": "{manifest}"},
			asked: map[string]int{"HEAD manifests": 1}},
		{name: "a cached digest asks the upstream nothing", warm: []string{tagPath}, upstream: "down",
			method: "GET", path: manifestPath, status: 200, want: map[string]string{"Docker-Content-Digest": "{manifest}"},
			asked: map[string]int{}},
		{name: "a HEAD of a cached tag", warm: []string{tagPath}, method: "HEAD", path: tagPath, status: 200,
			want: map[string]string{"Docker-Content-Digest": "{manifest}"}, asked: map[string]int{"HEAD manifests": 1}},
		{name: "an uncached tag with the upstream down", upstream: "down", method: "GET", path: tagPath,
			status: 503, code: "UNAVAILABLE"},
		{name: "an uncached tag while the upstream asks to wait", upstream: "429", method: "GET", path: tagPath,
			status: 429, code: "TOOMANYREQUESTS", want: map[string]string{"Retry-After": "60"}, asked: map[string]int{"GET manifests": 1}},
		{name: "a tag the upstream does not have", method: "GET", path: "/v2/team/app/manifests/nope",
			status: 404, code: "MANIFEST_UNKNOWN", asked: map[string]int{"GET manifests": 1}},
		{name: "a cold blob is fetched once", method: "GET", path: layerPath, status: 200,
			want:  map[string]string{"Docker-Content-Digest": "{layer}", "Content-Length": "{layerSize}"},
			asked: map[string]int{"GET blobs": 1}},
		{name: "a cached blob asks the upstream nothing", warm: []string{layerPath}, upstream: "down",
			method: "GET", path: layerPath, status: 200, want: map[string]string{"Content-Length": "{layerSize}"},
			asked: map[string]int{}},
		{name: "a range of a cached blob", warm: []string{layerPath}, method: "GET", path: layerPath,
			header: map[string]string{"Range": "bytes=10-19"}, status: 206,
			want: map[string]string{"Content-Range": "bytes 10-19/{layerSize}", "Content-Length": "10"}, asked: map[string]int{}},
		{name: "a HEAD of a cached blob", warm: []string{layerPath}, method: "HEAD", path: layerPath, status: 200,
			want: map[string]string{"Content-Length": "{layerSize}", "Docker-Content-Digest": "{layer}"}, asked: map[string]int{}},
		{name: "a blob the upstream does not have", method: "GET",
			path:   "/v2/team/app/blobs/sha256:" + strings.Repeat("0", 64),
			status: 404, code: "BLOB_UNKNOWN", asked: map[string]int{"GET blobs": 1}},
		{name: "a registry nobody mirrors dials nothing", method: "GET", path: tagPath + "?ns=quay.io",
			status: 404, code: "NAME_UNKNOWN", asked: map[string]int{}},
		{name: "a push is refused", method: "PUT", path: tagPath, status: 405, code: "UNSUPPORTED", asked: map[string]int{}},
		{name: "a malformed digest", method: "GET", path: "/v2/team/app/blobs/sha256:zz", status: 400,
			code: "DIGEST_INVALID", asked: map[string]int{}},
		{name: "a malformed tag", method: "GET", path: "/v2/team/app/manifests/-v1", status: 400,
			code: "MANIFEST_INVALID", asked: map[string]int{}},
		{name: "a name outside the grammar", method: "GET", path: "/v2/Team/app/manifests/v1", status: 400,
			code: "NAME_INVALID", asked: map[string]int{}},
		{name: "the tags list is the upstream's", method: "GET", path: "/v2/team/app/tags/list", status: 200,
			want: map[string]string{"Content-Type": "application/json"}, asked: map[string]int{"GET tags": 1}},
		{name: "the referrers of a manifest with an artifact", setup: attachArtifact, method: "GET", path: referrersPath,
			status: 200, want: map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"},
			body: referrersAre("{artifact}"), asked: map[string]int{"GET referrers": 1, "GET tags": 1, "GET manifests": 1}},
		{name: "the referrers of a manifest with none are an empty index", method: "GET", path: referrersPath,
			status: 200, want: map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"},
			body: referrersAre(), asked: map[string]int{"GET referrers": 1, "GET tags": 1, "GET manifests": 1}},
		{name: "a tags list over the limit", setup: oversized("tags"), method: "GET", path: "/v2/team/app/tags/list",
			status: 502, code: "SIZE_INVALID", body: naming("tags list is larger than depproxy takes"), asked: map[string]int{"GET tags": 1}},
		{name: "a referrers index over the limit", setup: oversized("referrers"), method: "GET", path: referrersPath,
			status: 502, code: "SIZE_INVALID", body: naming("referrers index is larger than depproxy takes"), asked: map[string]int{"GET referrers": 1}},
		{name: "a fallback tag's referrers index over the limit", setup: oversized("fallback"), method: "GET", path: referrersPath,
			status: 502, code: "SIZE_INVALID", body: naming("referrers index is larger than depproxy takes"),
			asked: map[string]int{"GET referrers": 1, "GET tags": 1, "GET manifests": 1}},
		{name: "a denied tag", config: denying("team/app"), method: "GET", path: tagPath,
			status: 403, code: "DENIED", body: naming("/team/app: denied"), asked: map[string]int{}},
		{name: "a denied digest", config: denying("team/app"), method: "GET", path: manifestPath,
			status: 403, code: "DENIED", body: naming("/team/app: denied"), asked: map[string]int{}},
		{name: "a manifest cached under an allowed name, asked for under a denied one", config: denying("team/bad"),
			warm: []string{tagPath}, method: "GET", path: "/v2/team/bad/manifests/{manifest}",
			status: 403, code: "DENIED", body: naming("/team/bad: denied"), asked: map[string]int{}},
		{name: "a blob cached under an allowed name, asked for under a denied one", config: denying("team/bad"),
			warm: []string{layerPath}, method: "GET", path: "/v2/team/bad/blobs/{layer}",
			status: 403, code: "DENIED", body: naming("/team/bad: denied"), asked: map[string]int{}},
		{name: "a HEAD of a denied blob", config: denying("team/app"), method: "HEAD", path: layerPath,
			status: 403, asked: map[string]int{}},
		{name: "a pinned tag is served after the upstream deleted it", config: pinning("team/app:v1"), setup: settled,
			warm: []string{tagPath}, deleted: []string{tagPath}, method: "GET", path: tagPath,
			status: 200, want: map[string]string{"Docker-Content-Digest": "{manifest}"}, asked: map[string]int{"HEAD manifests": 1}},
		{name: "a tag not pinned is not found once the upstream deleted it", config: pinning("team/app:v2"),
			warm: []string{tagPath}, deleted: []string{tagPath}, method: "GET", path: tagPath,
			status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "a cold range is served from the download, unlabelled", setup: holdBlobs, method: "GET", path: layerPath,
			header: map[string]string{"Range": "bytes=10-19"}, status: 206,
			want: map[string]string{"Content-Range": "bytes 10-19/{layerSize}", "Content-Length": "10",
				"Cache-Control": "no-store", "Docker-Content-Digest": "", "ETag": ""},
			body: layerBytes(10, 20), asked: map[string]int{"GET blobs": 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.config)
			if c.setup != nil {
				c.setup(t, f)
			}
			for _, p := range c.warm {
				resp := f.do(t, "GET", p, nil)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("warming %s: %s", p, resp.Status)
				}
			}
			for _, p := range c.deleted {
				deleteUpstream(t, f, p)
			}
			f.up.set(map[bool]string{true: "up", false: c.upstream}[c.upstream == ""])
			resp := f.do(t, c.method, c.path, c.header)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("%s %s: %s %s, want %d", c.method, c.path, resp.Status, body, c.status)
			}
			for h, v := range c.want {
				if got := resp.Header.Get(h); got != f.expand(v) {
					t.Errorf("%s: %q, want %q", h, got, f.expand(v))
				}
			}
			if c.status >= 400 && c.method != "HEAD" {
				var e struct {
					Errors []struct{ Code, Message string }
				}
				if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 || e.Errors[0].Code != c.code || e.Errors[0].Message == "" {
					t.Errorf("error body %s, want OCI error %s with a message", body, c.code)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("error Content-Type %q", ct)
				}
			}
			if c.body != nil {
				c.body(t, f, body)
			}
			if c.asked != nil {
				if got := f.up.asked(); !equal(got, c.asked) {
					t.Errorf("the upstream was asked %v, want %v", got, c.asked)
				}
			}
		})
	}
}

func equal(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// attachArtifact pushes an artifact whose subject is team/app:v1 (the
// upstream has no referrers API: the fallback tag names it, as pushers
// keep it), as {artifact}.
func attachArtifact(t *testing.T, f *fixture) {
	t.Helper()
	raw, err := f.image.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, _ := f.image.MediaType()
	subject, _ := f.image.Digest()
	sbom := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), sbomType)
	sbom = mutate.Subject(sbom, v1.Descriptor{MediaType: mt, Digest: subject, Size: int64(len(raw))}).(v1.Image)
	d, err := sbom.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(f.upstreamURL, "http://") + "/team/app@" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, sbom); err != nil {
		t.Fatal(err)
	}
	f.vars["{artifact}"] = d.String()
}

const sbomType = "application/vnd.example.sbom"

// referrersAre: the body is an OCI index naming exactly these digests,
// as the artifact type attachArtifact gives; none is an empty list, not
// a null one.
func referrersAre(digests ...string) func(*testing.T, *fixture, []byte) {
	return func(t *testing.T, f *fixture, body []byte) {
		var idx struct {
			SchemaVersion int             `json:"schemaVersion"`
			MediaType     string          `json:"mediaType"`
			Manifests     []v1.Descriptor `json:"manifests"`
		}
		if err := json.Unmarshal(body, &idx); err != nil || idx.SchemaVersion != 2 || idx.MediaType != string(types.OCIImageIndex) ||
			!bytes.Contains(body, []byte(`"manifests":[`)) {
			t.Fatalf("not an OCI index: %s (%v)", body, err)
		}
		var got []string
		for _, m := range idx.Manifests {
			if m.ArtifactType != sbomType {
				t.Errorf("referrer %s of type %q, want %q", m.Digest, m.ArtifactType, sbomType)
			}
			got = append(got, m.Digest.String())
		}
		want := make([]string, len(digests))
		for i, d := range digests {
			want[i] = f.expand(d)
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("referrers %v, want %v", got, want)
		}
	}
}

// denying: the proxy refuses repo of its upstream.
func denying(repo string) configure {
	return func(_ testing.TB, s *settings.Settings, host string) {
		s.Deny = settings.List{host + "/" + repo}
	}
}

// naming: the refusal names the image and says why.
func naming(what string) func(*testing.T, *fixture, []byte) {
	return func(t *testing.T, _ *fixture, body []byte) {
		if !bytes.Contains(body, []byte(what)) {
			t.Errorf("the refusal %s does not say %q", body, what)
		}
	}
}

// pinning: the proxy pins ref of its upstream, and answers 404 for any
// other cached tag the upstream answers 404 for.
func pinning(ref string) configure {
	return func(t testing.TB, s *settings.Settings, host string) {
		file := filepath.Join(t.TempDir(), "pinned")
		if err := os.WriteFile(file, []byte(host+"/"+ref+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		s.Pinned, s.OnUpstreamNotFound = file, settings.NotFound
	}
}

// deleteUpstream deletes a manifest at the upstream, as a registry's
// owner does.
func deleteUpstream(t *testing.T, f *fixture, path string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, f.upstreamURL+f.expand(path), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("deleting %s upstream: %s", path, resp.Status)
	}
}

// holdBlobs has the upstream send the first KiB of a whole blob, then
// hold the rest until the case ends: a download running, not done, so
// nothing has checked the bytes a client is sent.
// settled waits until the proxy has stopped asking the upstream on its
// own (the keeper warming the pinned images at start), so that what a
// row counts is what its request asked.
func settled(t *testing.T, f *fixture) {
	last := f.up.asked()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(300 * time.Millisecond)
		now := f.up.asked()
		if equal(now, last) && now["GET blobs"] > 0 {
			return
		}
		last = now
	}
	t.Fatalf("the proxy never stopped asking the upstream: %v", last)
}

func holdBlobs(t *testing.T, f *fixture) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the servers close: they wait for the held answer
	next := f.up.registry
	f.up.registry = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && pathKind(r.URL.Path) == "blobs" && r.Header.Get("Range") == "" {
			w = &heldWriter{ResponseWriter: w, left: 1 << 10, release: release}
		}
		next.ServeHTTP(w, r)
	})
}

// heldWriter writes left bytes, then waits for release before the rest.
type heldWriter struct {
	http.ResponseWriter
	left    int
	release <-chan struct{}
}

func (h *heldWriter) Write(p []byte) (int, error) {
	if h.left <= 0 {
		return h.ResponseWriter.Write(p)
	}
	k := min(len(p), h.left)
	n, err := h.ResponseWriter.Write(p[:k])
	if h.left -= n; err != nil || h.left > 0 {
		return n, err
	}
	h.ResponseWriter.(http.Flusher).Flush()
	<-h.release
	m, err := h.ResponseWriter.Write(p[k:])
	return n + m, err
}

// layerBytes: the body is the layer's bytes from off up to end.
func layerBytes(off, end int64) func(*testing.T, *fixture, []byte) {
	return func(t *testing.T, f *fixture, body []byte) {
		layers, err := f.image.Layers()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := layers[0].Compressed()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		whole, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(body, whole[off:end]) {
			t.Errorf("bytes %d-%d: %x, want %x", off, end-1, body, whole[off:end])
		}
	}
}

// oversized has the upstream answer a kind of list ("tags",
// "referrers", or the "fallback" tag's index of an upstream without the
// referrers API) with a valid one of 5 MiB, over any limit for it.
func oversized(kind string) func(*testing.T, *fixture) {
	return func(t *testing.T, f *fixture) {
		next := f.up.registry
		f.up.registry = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if k := pathKind(r.URL.Path); k != kind && !(kind == "fallback" && strings.Contains(r.URL.Path, "/manifests/sha256-")) {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			body := `{"name":"team/app","tags":["` + strings.Repeat("a", 5<<20) + `"]}`
			if kind != "tags" {
				body = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"a":"` + strings.Repeat("a", 5<<20) + `"}}`
				w.Header().Set("Content-Type", string(types.OCIImageIndex))
			}
			io.WriteString(w, body)
		})
	}
}
