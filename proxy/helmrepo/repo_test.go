package helmrepo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/upstream"
)

var zeroTime time.Time

// chartServer is a classic chart repository under /stable/.
type chartServer struct {
	*httptest.Server
	mu          sync.Mutex
	files       map[string][]byte
	gets        map[string]int
	notModified int // answers of 304
}

func newChartServer(t *testing.T) *chartServer {
	s := &chartServer{files: map[string][]byte{}, gets: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		body, ok := s.files[r.URL.Path]
		s.gets[r.URL.Path]++
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		etag := fmt.Sprintf(`"%x"`, sha256.Sum256(body))
		if r.Header.Get("If-None-Match") == etag {
			s.mu.Lock()
			s.notModified++
			s.mu.Unlock()
		}
		w.Header().Set("ETag", etag)
		http.ServeContent(w, r, r.URL.Path, zeroTime, bytes.NewReader(body))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *chartServer) put(path string, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[path] = body
}

// publish adds a version of a chart and writes the index of every
// version published.
func (s *chartServer) publish(t *testing.T, name, version string, prov bool) []byte {
	t.Helper()
	tgz := chartArchive(t, map[string]string{"Chart.yaml": fmt.Sprintf("apiVersion: v2\nname: %s\nversion: %s\ndescription: test\n", name, version)})
	file := fmt.Sprintf("%s-%s.tgz", name, version)
	s.put("/stable/"+file, tgz)
	if prov {
		s.put("/stable/"+file+".prov", []byte("-----BEGIN PGP SIGNED MESSAGE-----\n"+file))
	}
	s.mu.Lock()
	var idx strings.Builder
	idx.WriteString("apiVersion: v1\nentries:\n")
	byChart := map[string][]string{}
	for path, body := range s.files {
		if !strings.HasSuffix(path, ".tgz") {
			continue
		}
		md, err := ReadMetadata(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(body)
		byChart[md.Name] = append(byChart[md.Name], fmt.Sprintf("  - version: %s\n    created: \"2026-12-01T10:00:00.123456789+01:00\"\n    digest: %s\n    urls: [%s]\n",
			md.Version, hex.EncodeToString(sum[:]), strings.TrimPrefix(path, "/stable/")))
	}
	for chart, versions := range byChart {
		idx.WriteString("  " + chart + ":\n" + strings.Join(versions, ""))
	}
	s.files["/stable/index.yaml"] = []byte(idx.String())
	s.mu.Unlock()
	return tgz
}

func newRepo(t *testing.T, s *chartServer) *Repo {
	t.Helper()
	r, err := New(s.URL + "/stable")
	if err != nil {
		t.Fatal(err)
	}
	r.fresh = 0
	return r
}

func TestRepoServesChartsAsOCI(t *testing.T) {
	ctx := context.Background()
	s := newChartServer(t)
	tgz := s.publish(t, "web", "1.2.3+build.7", true)
	s.publish(t, "web", "1.0.0", false)
	r := newRepo(t, s)

	m, err := r.GetManifest(ctx, "web", manifest.TagRef("1.2.3_build.7"), nil, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != digest.FromBytes(m.Body) || m.MediaType != ocispec.MediaTypeImageManifest {
		t.Fatalf("manifest %s of type %s does not hash to its digest", m.Digest, m.MediaType)
	}
	var om ocispec.Manifest
	if err := json.Unmarshal(m.Body, &om); err != nil {
		t.Fatal(err)
	}
	if om.Config.MediaType != ConfigMediaType || len(om.Layers) != 2 || om.Annotations[ocispec.AnnotationCreated] != "2026-12-01T09:00:00Z" {
		t.Fatalf("manifest: %s", m.Body)
	}
	// The chart's bytes verbatim, the provenance file as its layer.
	for _, l := range om.Layers {
		b, err := r.GetBlob(ctx, "web", l.Digest)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(b.Body)
		b.Body.Close()
		if digest.FromBytes(body) != l.Digest {
			t.Errorf("layer %s: got bytes hashing to %s", l.MediaType, digest.FromBytes(body))
		}
		if l.MediaType == ChartLayerMediaType && !bytes.Equal(body, tgz) {
			t.Errorf("the chart layer is not the .tgz")
		}
	}

	// Another replica, or a restart, makes the same manifest; and finds
	// the config by its digest alone.
	other := newRepo(t, s)
	d, err := other.HeadManifest(ctx, "web", manifest.TagRef("1.2.3_build.7"), nil)
	if err != nil || d.Digest != m.Digest {
		t.Fatalf("another repo: %v %v, want %s", d, err, m.Digest)
	}
	third := newRepo(t, s)
	b, err := third.GetBlob(ctx, "web", om.Config.Digest)
	if err != nil {
		t.Fatalf("config by digest alone: %v", err)
	}
	config, _ := io.ReadAll(b.Body)
	if digest.FromBytes(config) != om.Config.Digest {
		t.Fatalf("config: %s", config)
	}
	if _, err := newRepo(t, s).GetManifest(ctx, "web", manifest.DigestRef(m.Digest), nil, 4<<20); err != nil {
		t.Fatalf("manifest by digest alone: %v", err)
	}

	// A range of the chart.
	b, err = r.GetBlobRange(ctx, "web", digest.FromBytes(tgz), 10, 20)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(b.Body)
	if !bytes.Equal(part, tgz[10:20]) {
		t.Fatalf("range: %x, want %x", part, tgz[10:20])
	}

	tags, err := r.Tags(ctx, "web", url.Values{}, 1<<20)
	if err != nil || string(tags) != `{"name":"web","tags":["1.0.0","1.2.3_build.7"]}` {
		t.Fatalf("tags: %s %v", tags, err)
	}
	tags, _ = r.Tags(ctx, "web", url.Values{"n": {"1"}, "last": {"1.0.0"}}, 1<<20)
	if string(tags) != `{"name":"web","tags":["1.2.3_build.7"]}` {
		t.Fatalf("tags after 1.0.0: %s", tags)
	}
}

func TestRepoRefusals(t *testing.T) {
	ctx := context.Background()
	s := newChartServer(t)
	s.publish(t, "web", "1.0.0", false)
	r := newRepo(t, s)

	if _, err := r.HeadManifest(ctx, "nothere", manifest.TagRef("1.0.0"), nil); !upstream.NameUnknown(err) {
		t.Errorf("a chart the index does not list: %v, want NAME_UNKNOWN", err)
	}
	if _, err := r.HeadManifest(ctx, "web", manifest.TagRef("9.9.9"), nil); !errors.Is(err, upstream.ErrNotFound) {
		t.Errorf("a version the index does not list: %v, want not found", err)
	}
	if _, err := r.GetBlob(ctx, "web", digest.FromString("other")); !errors.Is(err, upstream.ErrNotFound) {
		t.Errorf("a blob no version holds: %v, want not found", err)
	}

	// The index's digest is not the chart's: nothing is made of it.
	s.put("/stable/web-1.0.0.tgz", chartArchive(t, map[string]string{"Chart.yaml": "apiVersion: v2\nname: web\nversion: 1.0.0\ndescription: changed\n"}))
	if _, err := newRepo(t, s).HeadManifest(ctx, "web", manifest.TagRef("1.0.0"), nil); !errors.Is(err, upstream.ErrUnreachable) || !strings.Contains(err.Error(), "hash to") {
		t.Errorf("a chart whose bytes are not the index's: %v", err)
	}

	s.Close()
	if _, err := newRepo(t, s).HeadManifest(ctx, "web", manifest.TagRef("1.0.0"), nil); !errors.Is(err, upstream.ErrUnreachable) {
		t.Errorf("the repository down: %v, want unreachable", err)
	}
}

// TestRepoReadsTheIndexOncePerPull: the requests of one pull share one
// read of the index, and a chart's bytes are read once, to build its
// manifest and to serve it; an index read again and unchanged costs a
// 304.
func TestRepoReadsTheIndexOncePerPull(t *testing.T) {
	ctx := context.Background()
	s := newChartServer(t)
	tgz := s.publish(t, "web", "1.0.0", false)
	r, err := New(s.URL + "/stable/")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := r.HeadManifest(ctx, "web", manifest.TagRef("1.0.0"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.gets["/stable/index.yaml"]; n != 1 {
		t.Errorf("index.yaml read %d times", n)
	}
	b, err := r.GetBlob(ctx, "web", digest.FromBytes(tgz))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, b.Body)
	b.Body.Close()
	if n := s.gets["/stable/web-1.0.0.tgz"]; n != 1 {
		t.Errorf("the chart read %d times to build its manifest and serve it", n)
	}

	// Read again once it is not fresh: a 304 while it has not changed,
	// the new index once it has.
	r.fresh = 0
	if _, err := r.HeadManifest(ctx, "web", manifest.TagRef("1.0.0"), nil); err != nil {
		t.Fatal(err)
	}
	if s.notModified != 1 {
		t.Errorf("an unchanged index was answered 304 %d times, want 1", s.notModified)
	}
	s.publish(t, "web", "2.0.0", false)
	if _, err := r.HeadManifest(ctx, "web", manifest.TagRef("2.0.0"), nil); err != nil {
		t.Fatalf("a version published since: %v", err)
	}
}

// TestRepoSearchesAreBounded: made-up digests asked for under every chart
// cost the repository at most a burst of builds, not a search of every
// version for each.
func TestRepoSearchesAreBounded(t *testing.T) {
	ctx := context.Background()
	s := newChartServer(t)
	charts := []string{"a", "b", "c"}
	for _, chart := range charts {
		for v := range 10 {
			s.publish(t, chart, fmt.Sprintf("1.0.%d", v), false)
		}
	}
	r := newRepo(t, s)
	for i, chart := range charts {
		for j := range 2 {
			if _, err := r.HeadManifest(ctx, chart, manifest.DigestRef(digest.FromString(fmt.Sprint(i, j))), nil); !errors.Is(err, upstream.ErrNotFound) {
				t.Fatalf("a made-up digest: %v", err)
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fetched := 0
	for path, n := range s.gets {
		if strings.HasSuffix(path, ".tgz") {
			fetched += n
		}
	}
	if fetched > searchBurst+2 {
		t.Errorf("6 made-up digests fetched %d charts, more than a burst of %d", fetched, searchBurst)
	}
}
