// Package cache decides, for each pull, what comes from storage and what
// from the upstream: tag freshness, immutable digests, one upstream fetch
// per missing object however many clients ask, streaming while caching,
// and serving the cached copy whenever the upstream fails.
package cache

import (
	"context"
	"errors"
	"io/fs"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/upstream"
)

// Upstream is the registry the cache pulls through. Repository names are
// the upstream's own (library/alpine on Docker Hub): the caller resolved
// them.
type Upstream interface {
	HeadManifest(ctx context.Context, repo string, ref manifest.Ref, accept []string) (upstream.Descriptor, error)
	GetManifest(ctx context.Context, repo string, ref manifest.Ref, accept []string, maxSize int64) (*upstream.Manifest, error)
	GetBlob(ctx context.Context, repo string, d digest.Digest) (*upstream.Blob, error)
	// GetBlobRange opens a blob's bytes from off up to end (a 206), for
	// a Range far ahead of the one download.
	GetBlobRange(ctx context.Context, repo string, d digest.Digest, off, end int64) (*upstream.Blob, error)
	HeadBlob(ctx context.Context, repo string, d digest.Digest) (int64, error)
	Tags(ctx context.Context, repo string, query url.Values, maxSize int64) ([]byte, error)
	Referrers(ctx context.Context, repo string, d digest.Digest, maxSize int64) ([]byte, error)
	// Waiting: the upstream answered 429 and asked to wait until then;
	// cached tags are served without asking it.
	Waiting() (until time.Time, ok bool)
	// Sparing: what is left of the upstream's rate limit is down to the
	// reserve; cached tags are still checked with a HEAD (free on Docker
	// Hub), and a moved one is served as cached rather than spend a GET.
	Sparing() bool
}

// Hot is a replica's own disk in front of the storage (hot.Tier): blobs
// are served from it first, and what is downloaded or read from the
// storage is kept there.
type Hot interface {
	// Get opens d's hot copy, checked; false when there is none. done
	// closes the file: the copy is not evicted while it is open.
	Get(d digest.Digest) (f *os.File, info fs.FileInfo, done func(), ok bool)
	// Size is d's size when it is hot, without opening it.
	Size(d digest.Digest) (int64, bool)
	// Room evicts to make room for size bytes, and says whether they fit.
	Room(size int64) bool
	// Keep takes the verified file at path as d's hot copy.
	Keep(d digest.Digest, path string, size int64) bool
}

// Cache is a pull-through cache over one upstream and one storage. Its
// methods take repository names as the upstream knows them.
type Cache struct {
	up       Upstream
	store    storage.Storage
	log      logr.Logger
	metrics  *Metrics
	spoolDir string

	recheck     time.Duration
	fillTimeout time.Duration
	prefetch    []v1.Platform
	// prefetchable says whether an index's children may be prefetched
	// (nil: any): an index a verify policy refuses is not.
	prefetchable func(ctx context.Context, repo string, idx *Manifest) error
	redirect     bool
	limits       Limits
	downloads    chan struct{} // a slot per running upstream blob download

	// background is what downloads run under, detached from any one
	// client; Close cancels it.
	background context.Context
	stop       context.CancelFunc
	running    sync.WaitGroup

	flight singleflight.Group // manifest fetches, by repo and reference

	mu      sync.Mutex
	fills   map[digest.Digest]*fill
	checked map[string]confirmed // tag -> when the upstream last confirmed it, and at what
	memory  *memory
	// declared: the blob sizes the cached manifests give, which cut
	// downloads.
	declared *declared

	reads   *readTracker
	now     func() time.Time
	lists   listCache
	listTTL time.Duration
	stored  func(Stored)

	// registry names the upstream's tags in storage; with origins, the
	// blobs its manifests name are recorded as its.
	registry string
	origins  bool
	// links: which repositories content was served for (links.go);
	// linking bounds their background writes.
	links   links
	linking chan struct{}

	hot Hot // nil: blobs are read from the storage

	// forgetDeleted answers 404 for a cached tag the upstream answers
	// 404 for, unless pinned says it is kept.
	forgetDeleted bool
	pinned        func(repo, tag string) bool
}

// Option configures a Cache.
type Option func(*Cache)

// WithRecheckInterval skips the upstream HEAD for a tag confirmed less
// than d ago; 0 checks on every tag request.
func WithRecheckInterval(d time.Duration) Option { return func(c *Cache) { c.recheck = d } }

// WithLogger sets the logger.
func WithLogger(l logr.Logger) Option { return func(c *Cache) { c.log = l } }

// WithSpoolDir sets where blobs being downloaded are kept until stored
// (storage.SpoolFor decides it).
func WithSpoolDir(dir string) Option { return func(c *Cache) { c.spoolDir = dir } }

// Limits bound every upstream blob download.
type Limits struct {
	// MaxDownloads is how many run at once; more wait for a slot.
	MaxDownloads int
	// MaxBlobSize refuses larger announced blobs, and cuts a download
	// that announced no size there.
	MaxBlobSize int64
	// Abandoned is how long a download goes on with nobody reading it
	// (a client or a prefetch) before it is cancelled.
	Abandoned time.Duration
	// Silence is how long the upstream may send nothing before the
	// download is given up.
	Silence time.Duration
}

// DefaultLimits are the limits unless WithLimits says otherwise.
var DefaultLimits = Limits{MaxDownloads: 64, MaxBlobSize: 1 << 40, Abandoned: 30 * time.Second, Silence: time.Minute}

// WithLimits bounds upstream blob downloads; zero fields keep their
// defaults.
func WithLimits(l Limits) Option {
	return func(c *Cache) {
		if l.MaxDownloads > 0 {
			c.limits.MaxDownloads = l.MaxDownloads
		}
		if l.MaxBlobSize > 0 {
			c.limits.MaxBlobSize = l.MaxBlobSize
		}
		if l.Abandoned > 0 {
			c.limits.Abandoned = l.Abandoned
		}
		if l.Silence > 0 {
			c.limits.Silence = l.Silence
		}
	}
}

// WithMetrics counts into m (NewMetrics), which several caches may share.
func WithMetrics(m *Metrics) Option { return func(c *Cache) { c.metrics = m } }

// WithPrefetch fetches, whenever a tag brings a new index, the children for
// these platforms and their blobs, so that they pull fast and pull while
// the upstream is down.
func WithPrefetch(platforms []v1.Platform) Option { return func(c *Cache) { c.prefetch = platforms } }

// WithPrefetchCheck asks check before prefetching an index's children:
// an error leaves them unfetched, as a verify policy refusing the index
// wants (prefetching is warming no client asked for). It runs in the
// prefetch's background, never delaying the tag's answer.
func WithPrefetchCheck(check func(ctx context.Context, repo string, idx *Manifest) error) Option {
	return func(c *Cache) { c.prefetchable = check }
}

// WithRedirect sends clients of cached blobs to the storage's own URL
// (presigned S3) when the storage has one, instead of streaming them.
func WithRedirect(on bool) Option { return func(c *Cache) { c.redirect = on } }

// DefaultMemory is the budget of manifests kept in memory.
const DefaultMemory = 64 << 20

// WithMemory keeps recently served manifests in memory within this many
// bytes (0 keeps none): within the recheck interval, a warm tag costs no
// storage round trip.
func WithMemory(bytes int64) Option { return func(c *Cache) { c.memory = newMemory(bytes) } }

// WithRegistry keeps this cache's tags under its registry's name, apart
// from other registries' tags (the same repository and tag on two
// registries are two images).
func WithRegistry(name string) Option { return func(c *Cache) { c.registry = name } }

// WithOrigins records, for each blob a manifest fetched from this
// upstream names, that it came from this registry: with several
// upstreams, a blob asked for without a registry (SOCI does that) goes
// to the upstream whose manifest named it.
func WithOrigins(on bool) Option { return func(c *Cache) { c.origins = on } }

// WithHot serves blobs from this replica's disk first, and keeps there
// those it downloads or reads from the storage. Its spool (WithSpoolDir)
// should be on the same filesystem, so that keeping a download is a link.
func WithHot(h Hot) Option { return func(c *Cache) { c.hot = h } }

// WithUpstreamNotFound says what a cached tag the upstream answers 404
// for (deleted, pruned) gets: served as cached (serveCached, the
// default), or a 404 too, unless pinned says the tag is kept.
func WithUpstreamNotFound(serveCached bool, pinned func(repo, tag string) bool) Option {
	return func(c *Cache) { c.forgetDeleted, c.pinned = !serveCached, pinned }
}

// Stored is what one write added to storage: bytes of a blob or a
// manifest, or a tag stored new or pointing elsewhere.
type Stored struct {
	Bytes int64
	// Tag, when set, was stored; NewTag when it was not there before.
	Tag    string
	Repo   string
	NewTag bool
}

// WithStored calls fn after every write to storage (the summary keeps
// count with it).
func WithStored(fn func(Stored)) Option { return func(c *Cache) { c.stored = fn } }

// WithListTTL sets how long a tags/list or referrers answer is reused
// without asking the upstream (DefaultListTTL without it).
func WithListTTL(d time.Duration) Option { return func(c *Cache) { c.listTTL = d } }

// WithClock sets the clock last reads are recorded with (tests age
// objects with it).
func WithClock(now func() time.Time) Option { return func(c *Cache) { c.now = now } }

// New returns a cache.
func New(up Upstream, store storage.Storage, opts ...Option) *Cache {
	c := &Cache{
		up:          up,
		store:       store,
		log:         logr.Discard(),
		spoolDir:    os.TempDir(),
		fillTimeout: time.Hour,
		fills:       map[digest.Digest]*fill{},
		checked:     map[string]confirmed{},
		memory:      newMemory(DefaultMemory),
		declared:    newDeclared(),
		now:         time.Now,
		stored:      func(Stored) {},
		limits:      DefaultLimits,
		listTTL:     DefaultListTTL,
	}
	c.background, c.stop = context.WithCancel(context.Background())
	for _, o := range opts {
		o(c)
	}
	if c.metrics == nil {
		c.metrics = NewMetrics(nil)
	}
	c.metrics.exportUpstream(c.registry)
	c.downloads = make(chan struct{}, c.limits.MaxDownloads)
	c.linking = make(chan struct{}, maxLinking)
	c.reads = newReadTracker(store, c.now, c.log)
	return c
}

// Close cancels the downloads still running and waits for them to end,
// their spool files removed. Requests still being served see their
// downloads fail.
func (c *Cache) Close() {
	c.stop()
	c.running.Wait()
}

// HitCounts reports manifest and blob requests since start: served from
// storage, and the rest.
func (c *Cache) HitCounts() (hits, misses int64) {
	return c.metrics.hitCount.Load(), c.metrics.missCount.Load()
}

// storageFailed logs a storage error that the cache works around.
func (c *Cache) storageFailed(err error, what string, kv ...any) {
	if err == nil || errors.Is(err, storage.ErrNotFound) || errors.Is(err, layout.ErrDamaged) {
		return
	}
	c.metrics.storageErrors.Inc()
	c.log.Error(err, "storage unavailable, passing through to upstream", append([]any{"op", what}, kv...)...)
}
