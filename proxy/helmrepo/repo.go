// Package helmrepo serves a classic Helm chart repository (an index.yaml
// and the .tgz files it lists, over HTTP) as a registry of OCI charts, as
// a cache's upstream: each chart is a repository, each of its versions a
// tag ("+" written "_", as Helm does), and each version's manifest the one
// `helm push` makes of the same .tgz, its bytes verbatim as the chart
// layer and its provenance file, when the repository has one, as Helm's
// provenance layer. The manifest depends on nothing but the repository's
// files (its creation time is the index's), so every replica, and every
// restart, builds the same digest.
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
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"k8s.io/utils/lru"
	"sigs.k8s.io/yaml"

	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/upstream"
)

// Limits on what a repository may make the cache hold in memory.
const (
	maxIndexSize = 64 << 20 // the largest public indexes are a few tens of MiB
	maxChartSize = 32 << 20 // Helm itself refuses charts over 100 MiB unpacked
	maxProvSize  = 1 << 20
	// indexFresh: requests within it (a pull's HEAD, GET and blobs) share
	// one read of the index; the cache's recheck interval says when a
	// tag is asked for again.
	indexFresh = 2 * time.Second
	// maxBuilds bounds the versions built to find a digest no version
	// built so far has (after a restart: a config or a provenance file
	// asked for by digest).
	maxBuilds = 16
	// searchRate and searchBurst bound the builds such searches make, all
	// charts together: an anonymous client asking for made-up digests
	// costs the repository a build a second, not maxBuilds a request.
	searchRate  = 1
	searchBurst = 16
)

// Repo is one chart repository. It is safe for concurrent use.
type Repo struct {
	base   *url.URL // ends in "/"
	auth   authn.Authenticator
	client *http.Client
	fresh  time.Duration // indexFresh

	mu        sync.Mutex
	index     *index
	readAt    time.Time
	validator validator
	recent    recentCharts
	searches  *rate.Limiter // builds made to find a digest
	flight    singleflight.Group
	built     *lru.Cache // version key → *artifact
	byBlob    *lru.Cache // digest → *artifact
	byIndex   *lru.Cache // manifest digest → *artifact
}

// Option configures a Repo.
type Option func(*Repo)

// WithCredentials sends the repository basic credentials (a username and
// password, as `helm repo add --username` does), to its own host only:
// never to a chart URL elsewhere.
func WithCredentials(a authn.Authenticator) Option { return func(r *Repo) { r.auth = a } }

// New returns the repository at rawURL (http or https, with its path:
// https://charts.example.com/stable).
func New(rawURL string, opts ...Option) (*Repo, error) {
	u, ok := registryname.ChartRepoURL(rawURL)
	if !ok {
		return nil, fmt.Errorf("helm repository %q: want an http or https URL such as https://charts.example.com/stable", rawURL)
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.ResponseHeaderTimeout = 30 * time.Second
	r := &Repo{base: u, auth: authn.Anonymous, fresh: indexFresh, client: &http.Client{Transport: t, CheckRedirect: upstream.CheckRedirect},
		built: lru.New(512), byBlob: lru.New(1024), byIndex: lru.New(512), searches: rate.NewLimiter(searchRate, searchBurst)}
	for _, o := range opts {
		o(r)
	}
	return r, nil
}

// index is what the cache reads of index.yaml: where each version of
// each chart is, and when it was made.
type index struct {
	Entries map[string][]*entry `json:"entries"`
}

type entry struct {
	Version string   `json:"version"`
	URLs    []string `json:"urls"`
	Created string   `json:"created"`
	Digest  string   `json:"digest"`
}

// Tag is a version as a tag: Helm writes "+" as "_", which tags cannot
// hold.
func Tag(version string) string { return strings.ReplaceAll(version, "+", "_") }

func (e *entry) key(chart string) string {
	return strings.Join([]string{chart, e.Version, e.Digest, e.Created, e.URLs[0]}, "\x00")
}

func (e *entry) created() time.Time {
	t, err := time.Parse(time.RFC3339Nano, e.Created)
	if err != nil {
		return time.Time{}
	}
	return t
}

// readIndex is the repository's index, read again once it is older than
// r.fresh (requests at once share one read).
func (r *Repo) readIndex(ctx context.Context) (*index, error) {
	r.mu.Lock()
	idx, at := r.index, r.readAt
	r.mu.Unlock()
	if idx != nil && time.Since(at) < r.fresh {
		return idx, nil
	}
	v, err, _ := r.flight.Do("index", func() (any, error) {
		r.mu.Lock()
		last, v := r.index, r.validator
		r.mu.Unlock()
		if last == nil {
			v = validator{}
		}
		body, next, err := r.getIndex(ctx, v)
		if err != nil {
			return nil, err
		}
		idx := last
		if body != nil || idx == nil { // not the 304 of an unchanged index
			idx = &index{}
			if err := yaml.Unmarshal(body, idx); err != nil {
				return nil, fmt.Errorf("%w: the repository's index.yaml: %w", upstream.ErrUnreachable, err)
			}
			for chart, versions := range idx.Entries {
				idx.Entries[chart] = slices.DeleteFunc(versions, func(e *entry) bool { return e == nil || e.Version == "" || len(e.URLs) == 0 })
			}
		}
		r.mu.Lock()
		r.index, r.readAt, r.validator = idx, time.Now(), next
		r.mu.Unlock()
		return idx, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*index), nil
}

// validator is what the repository said of its index to ask whether it
// changed: a large index (tens of MiB) is read again only when it did.
type validator struct{ etag, lastModified string }

// getIndex reads index.yaml, unless it is still as v says (nil, with v,
// when the repository answers 304).
func (r *Repo) getIndex(ctx context.Context, v validator) ([]byte, validator, error) {
	header := http.Header{}
	if v.etag != "" {
		header.Set("If-None-Match", v.etag)
	}
	if v.lastModified != "" {
		header.Set("If-Modified-Since", v.lastModified)
	}
	resp, err := r.do(ctx, r.base.JoinPath("index.yaml"), 0, header)
	if err != nil {
		return nil, v, err
	}
	defer resp.Body.Close()
	next := validator{etag: resp.Header.Get("ETag"), lastModified: resp.Header.Get("Last-Modified")}
	if resp.StatusCode == http.StatusNotModified {
		return nil, v, nil
	}
	body, err := readAtMost(resp.Body, maxIndexSize, "index.yaml")
	return body, next, err
}

// versions are a chart's entries; a chart the index does not list is a
// repository the registry does not know.
func (r *Repo) versions(ctx context.Context, chart string) ([]*entry, error) {
	idx, err := r.readIndex(ctx)
	if err != nil {
		return nil, err
	}
	versions, ok := idx.Entries[chart]
	if !ok {
		return nil, &upstream.StatusError{StatusCode: http.StatusNotFound, Code: "NAME_UNKNOWN"}
	}
	return versions, nil
}

// artifact builds (or recalls) a version as the registry holds it.
func (r *Repo) artifact(ctx context.Context, chart string, e *entry) (*artifact, error) {
	key := e.key(chart)
	if a, ok := r.built.Get(key); ok {
		return a.(*artifact), nil
	}
	v, err, _ := r.flight.Do("build\x00"+key, func() (any, error) {
		chartURL, err := r.resolve(ctx, e.URLs[0])
		if err != nil {
			return nil, err
		}
		tgz, err := r.get(ctx, chartURL, maxChartSize, chart+" "+e.Version)
		if err != nil {
			return nil, err
		}
		if sum := sha256.Sum256(tgz); e.Digest != "" && !strings.EqualFold(e.Digest, hex.EncodeToString(sum[:])) {
			return nil, fmt.Errorf("%w: the index gives %s %s the digest %s, its bytes hash to %s", upstream.ErrUnreachable, chart, e.Version, e.Digest, hex.EncodeToString(sum[:]))
		}
		md, err := ReadMetadata(bytes.NewReader(tgz))
		if err != nil {
			return nil, fmt.Errorf("%w: %s %s: %w", upstream.ErrUnreachable, chart, e.Version, err)
		}
		if md.Name != chart || md.Version != e.Version {
			return nil, fmt.Errorf("%w: the index's %s %s is the chart %s %s", upstream.ErrUnreachable, chart, e.Version, md.Name, md.Version)
		}
		provURL := *chartURL
		provURL.Path += ".prov"
		prov, err := r.get(ctx, &provURL, maxProvSize, chart+" "+e.Version+" provenance")
		if absent(err) {
			prov, err = nil, nil
		}
		if err != nil {
			// Without it the manifest would be another one: none is made.
			return nil, err
		}
		a, err := build(tgz, prov, md, e.created(), chartURL.String())
		if err != nil {
			return nil, err
		}
		r.recent.add(a.chart.Digest, tgz)
		r.built.Add(key, a)
		r.byIndex.Add(a.digest, a)
		for _, d := range []digest.Digest{a.chart.Digest, a.configDigest, a.provDigest} {
			if d != "" {
				r.byBlob.Add(d, a)
			}
		}
		return a, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*artifact), nil
}

// resolve is a chart's URL: relative to the repository's, or elsewhere
// where depproxy may follow the repository (as it follows a redirect).
func (r *Repo) resolve(ctx context.Context, raw string) (*url.URL, error) {
	ref, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: the index names the chart URL %q: %w", upstream.ErrUnreachable, raw, err)
	}
	u := r.base.ResolveReference(ref)
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%w: the index names the chart URL %q", upstream.ErrRedirectRefused, raw)
	}
	if err := upstream.Follow(ctx, r.base, u); err != nil {
		return nil, err
	}
	return u, nil
}

// find is the artifact of chart holding d (a manifest when manifests),
// building versions, newest first, until one does.
func (r *Repo) find(ctx context.Context, chart string, d digest.Digest, manifests bool) (*artifact, error) {
	known := r.byBlob
	if manifests {
		known = r.byIndex
	}
	if a, ok := known.Get(d); ok {
		return a.(*artifact), nil
	}
	versions, err := r.versions(ctx, chart)
	if err != nil {
		return nil, err
	}
	builds := 0
	for _, e := range versions {
		if !manifests && strings.EqualFold(e.Digest, d.Encoded()) {
			// The chart's own bytes: where they are is enough.
			return r.artifact(ctx, chart, e)
		}
	}
	for _, e := range versions {
		if builds++; builds > maxBuilds {
			break
		}
		if _, built := r.built.Get(e.key(chart)); !built && !r.searches.Allow() {
			break
		}
		a, err := r.artifact(ctx, chart, e)
		if err != nil {
			return nil, err
		}
		if a.digest == d && manifests {
			return a, nil
		}
		if _, _, _, ok := a.blob(d); ok && !manifests {
			return a, nil
		}
	}
	return nil, &upstream.StatusError{StatusCode: http.StatusNotFound}
}

// manifest is a manifest's descriptor, by tag or digest.
func (r *Repo) manifest(ctx context.Context, chart string, ref manifest.Ref) (*artifact, error) {
	if d, ok := ref.Digest(); ok {
		return r.find(ctx, chart, d, true)
	}
	versions, err := r.versions(ctx, chart)
	if err != nil {
		return nil, err
	}
	for _, e := range versions {
		if Tag(e.Version) == ref.Tag() {
			return r.artifact(ctx, chart, e)
		}
	}
	return nil, &upstream.StatusError{StatusCode: http.StatusNotFound, Code: "MANIFEST_UNKNOWN"}
}

// HeadManifest implements the cache's upstream.
func (r *Repo) HeadManifest(ctx context.Context, chart string, ref manifest.Ref, _ []string) (upstream.Descriptor, error) {
	a, err := r.manifest(ctx, chart, ref)
	if err != nil {
		return upstream.Descriptor{}, err
	}
	return upstream.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: a.digest, Size: int64(len(a.manifest))}, nil
}

// GetManifest implements the cache's upstream.
func (r *Repo) GetManifest(ctx context.Context, chart string, ref manifest.Ref, _ []string, maxSize int64) (*upstream.Manifest, error) {
	a, err := r.manifest(ctx, chart, ref)
	if err != nil {
		return nil, err
	}
	if int64(len(a.manifest)) > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", upstream.ErrTooLarge, len(a.manifest), maxSize)
	}
	return &upstream.Manifest{Descriptor: upstream.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: a.digest, Size: int64(len(a.manifest))},
		Body: a.manifest}, nil
}

// GetBlob implements the cache's upstream: the config and provenance
// from memory, the chart from its URL.
func (r *Repo) GetBlob(ctx context.Context, chart string, d digest.Digest) (*upstream.Blob, error) {
	return r.GetBlobRange(ctx, chart, d, 0, -1)
}

// GetBlobRange implements the cache's upstream; end -1 is the whole blob.
func (r *Repo) GetBlobRange(ctx context.Context, chart string, d digest.Digest, off, end int64) (*upstream.Blob, error) {
	a, err := r.find(ctx, chart, d, false)
	if err != nil {
		return nil, err
	}
	data, raw, size, _ := a.blob(d)
	if end < 0 {
		end = size
	}
	if off < 0 || off > end || end > size {
		return nil, fmt.Errorf("%w: bytes %d-%d of a %d-byte blob", upstream.ErrUnreachable, off, end, size)
	}
	if data == nil {
		data = r.recent.get(d)
	}
	if data != nil {
		return &upstream.Blob{Body: io.NopCloser(bytes.NewReader(data[off:end])), Size: end - off}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	resp, err := r.do(ctx, u, off, nil)
	if err != nil {
		return nil, err
	}
	// Whether or not the server honoured the range, the blob is cut to
	// what was asked.
	if off > 0 && resp.StatusCode == http.StatusOK {
		if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("%w: %w", upstream.ErrUnreachable, err)
		}
	}
	return &upstream.Blob{Body: struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, end-off), resp.Body}, Size: end - off}, nil
}

// HeadBlob implements the cache's upstream.
func (r *Repo) HeadBlob(ctx context.Context, chart string, d digest.Digest) (int64, error) {
	a, err := r.find(ctx, chart, d, false)
	if err != nil {
		return 0, err
	}
	_, _, size, _ := a.blob(d)
	return size, nil
}

// Tags implements the cache's upstream: the chart's versions as tags, in
// the order of the OCI API (lexical), n and last honoured.
func (r *Repo) Tags(ctx context.Context, chart string, query url.Values, maxSize int64) ([]byte, error) {
	versions, err := r.versions(ctx, chart)
	if err != nil {
		return nil, err
	}
	tags := make([]string, 0, len(versions))
	for _, e := range versions {
		tags = append(tags, Tag(e.Version))
	}
	slices.Sort(tags)
	tags = slices.Compact(tags)
	if last := query.Get("last"); last != "" {
		i, _ := slices.BinarySearch(tags, last)
		for i < len(tags) && tags[i] == last {
			i++
		}
		tags = tags[i:]
	}
	if n, err := strconv.Atoi(query.Get("n")); err == nil && n >= 0 && n < len(tags) {
		tags = tags[:n]
	}
	body, err := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{chart, tags})
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > maxSize {
		return nil, fmt.Errorf("%w: over %d bytes", upstream.ErrTagsTooLarge, maxSize)
	}
	return body, nil
}

// Referrers implements the cache's upstream: a chart repository holds no
// referrers.
func (r *Repo) Referrers(ctx context.Context, chart string, _ digest.Digest, _ int64) ([]byte, error) {
	if _, err := r.versions(ctx, chart); err != nil {
		return nil, err
	}
	return json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}})
}

// Waiting and Sparing implement the cache's upstream: a chart repository
// sets no rate limit depproxy reads.
func (r *Repo) Waiting() (time.Time, bool) { return time.Time{}, false }

// Sparing: see Waiting.
func (r *Repo) Sparing() bool { return false }

// get reads a small file of the repository's, up to limit bytes.
func (r *Repo) get(ctx context.Context, u *url.URL, limit int64, what string) ([]byte, error) {
	resp, err := r.do(ctx, u, 0, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return readAtMost(resp.Body, limit, what)
}

func readAtMost(body io.Reader, limit int64, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %w", upstream.ErrUnreachable, what, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", upstream.ErrUnreachable, what, limit)
	}
	return b, nil
}

// do sends a GET (from off, when off > 0), with the credentials when it
// goes to the repository's own host; an answer other than 200, 206 or
// 304 is an error that keeps its status.
func (r *Repo) do(ctx context.Context, u *url.URL, off int64, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
	}
	if u.Host == r.base.Host && u.Scheme == r.base.Scheme {
		cfg, err := r.auth.Authorization()
		if err != nil {
			return nil, fmt.Errorf("%w: the repository's credentials: %w", upstream.ErrUnreachable, err)
		}
		if cfg != nil && (cfg.Username != "" || cfg.Password != "") {
			req.SetBasicAuth(cfg.Username, cfg.Password)
		}
	}
	resp, err := r.client.Do(req)
	if err != nil {
		if errors.Is(err, upstream.ErrRedirectRefused) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", upstream.ErrUnreachable, err)
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent, http.StatusNotModified:
		return resp, nil
	}
	resp.Body.Close()
	return nil, &upstream.StatusError{StatusCode: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
}

// absent: the file is not there (a static bucket answers 403 for a key
// it does not have).
func absent(err error) bool {
	var se *upstream.StatusError
	return errors.As(err, &se) && (se.StatusCode == http.StatusNotFound || se.StatusCode == http.StatusForbidden)
}

// recentBytes bounds the charts kept in memory after they were built.
const recentBytes = 32 << 20

// recentCharts keeps the bytes of the charts built last: a client asks
// for the chart layer right after its manifest, and it is not downloaded
// a second time.
type recentCharts struct {
	mu    sync.Mutex
	order []digest.Digest // oldest first
	bytes map[digest.Digest][]byte
	total int
}

func (c *recentCharts) get(d digest.Digest) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes[d]
}

func (c *recentCharts) add(d digest.Digest, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bytes == nil {
		c.bytes = map[digest.Digest][]byte{}
	}
	if _, ok := c.bytes[d]; ok || len(b) > recentBytes {
		return
	}
	for c.total+len(b) > recentBytes {
		c.total -= len(c.bytes[c.order[0]])
		delete(c.bytes, c.order[0])
		c.order = c.order[1:]
	}
	c.bytes[d], c.order, c.total = b, append(c.order, d), c.total+len(b)
}
