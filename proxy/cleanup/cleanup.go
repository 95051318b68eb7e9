// Package cleanup deletes what a cache's clients stopped pulling: tags and
// manifests not read within a TTL, then blobs that are unread too and
// that no kept manifest references. It walks storage page by page; what
// it holds in memory is the set of kept manifests and the blobs they
// reference, never the listing.
package cleanup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/pins"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/summary"
)

// Options of a run.
type Options struct {
	// TTL: what was not read for this long goes; 0 with a MaxSize: no
	// expiry, only the budget.
	TTL time.Duration
	// MaxSize is the storage budget: over it, whole images are evicted,
	// least recently pulled first, down to 90% of it.
	MaxSize int64
	// Pinned are images kept whatever their last pull, besides the set
	// the proxies stored (pins.Key).
	Pinned []pins.Ref
	// Grace protects objects written this recently, whatever their last
	// read: a blob being cached during the run is not deleted.
	Grace time.Duration
	// DryRun reports what would go and deletes nothing.
	DryRun bool
	// Now is the clock (tests age the cache with it).
	Now func() time.Time
	// Log gets one line per deleted object.
	Log io.Writer
	// SummaryKey is where the summary is stored: layout.CleanupSummary
	// unless set.
	SummaryKey string
}

// Summary is what a run did; the CronJob prints it as its last line.
type Summary = report.CleanupSummary

type run struct {
	store  storage.Storage
	opts   Options
	start  time.Time
	cutoff time.Time
	sum    Summary
	// keptManifests and referenced are what the run must hold in memory.
	keptManifests map[digest.Digest]bool
	referenced    map[digest.Digest]bool
	// pinnedManifests and pinnedTags are never deleted.
	pinnedManifests map[digest.Digest]bool
	pinnedTags      map[string]bool
}

// Run cleans store once.
func Run(ctx context.Context, store storage.Storage, opts Options) (*Summary, error) {
	if opts.TTL < 0 || (opts.TTL == 0 && opts.MaxSize <= 0) {
		return nil, errors.New("a positive TTL, or a budget (a maximum size), is needed")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.SummaryKey == "" {
		opts.SummaryKey = layout.CleanupSummary
	}
	r := &run{store: store, opts: opts, start: opts.Now(), keptManifests: map[digest.Digest]bool{}, referenced: map[digest.Digest]bool{},
		pinnedManifests: map[digest.Digest]bool{}, pinnedTags: map[string]bool{}}
	r.cutoff = r.start.Add(-opts.TTL)
	r.sum.DryRun = opts.DryRun
	if err := r.pins(ctx); err != nil {
		return &r.sum, err
	}
	var steps []func(context.Context) error
	if opts.TTL > 0 {
		steps = append(steps, r.tags, r.manifests, r.blobs)
	}
	if opts.MaxSize > 0 {
		steps = append(steps, r.budget)
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return &r.sum, err
		}
	}
	r.sum.DurationSeconds = opts.Now().Sub(r.start).Seconds()
	r.sum.FinishedAt = opts.Now().UTC().Format(time.RFC3339)
	if !opts.DryRun {
		raw, _ := json.Marshal(r.sum)
		if err := store.Put(ctx, opts.SummaryKey, bytes.NewReader(raw), int64(len(raw))); err != nil {
			return &r.sum, fmt.Errorf("storing the summary: %w", err)
		}
		if r.sum.DeletedTags+r.sum.DeletedManifests+r.sum.DeletedBlobs > 0 {
			// The proxies' summaries count what is stored from their
			// journal, which has none of this.
			if err := summary.AskRescan(ctx, store); err != nil {
				return &r.sum, fmt.Errorf("asking the summaries to rescan: %w", err)
			}
		}
	}
	return &r.sum, nil
}

// pins resolves what is pinned, in the file and in the set the proxies
// stored: the manifests and tags no step deletes.
func (r *run) pins(ctx context.Context) error {
	set, err := pins.Load(ctx, r.store)
	if err != nil {
		return fmt.Errorf("reading the pinned set: %w", err)
	}
	for _, d := range set.Manifests {
		r.pinnedManifests[d] = true
	}
	for _, key := range set.Tags {
		r.pinnedTags[key] = true
	}
	for _, ref := range r.opts.Pinned {
		if ref.Digest != "" {
			r.pinnedManifests[ref.Digest] = true
			continue
		}
		key := layout.Tag(ref.Registry, ref.Repo, ref.Tag)
		r.pinnedTags[key] = true
		if d, err := layout.ReadDigest(ctx, r.store, key); err == nil {
			r.pinnedManifests[d] = true
		}
	}
	for key := range r.pinnedTags {
		if d, err := layout.ReadDigest(ctx, r.store, key); err == nil {
			r.pinnedManifests[d] = true
		}
	}
	r.sum.PinnedManifests = len(r.pinnedManifests)
	for d := range r.pinnedManifests {
		r.keptManifests[d] = true
	}
	return nil
}

// tags deletes unread tags; a kept tag keeps its manifest.
func (r *run) tags(ctx context.Context) error {
	return r.store.List(ctx, layout.RegistriesPrefix, r.tag(ctx))
}

// tag decides one listed tag, of any registry.
func (r *run) tag(ctx context.Context) func(key string, info storage.Info) error {
	return func(key string, info storage.Info) error {
		if layout.IsReferrers(key) {
			// A referrers answer lives as long as it is read, like a tag,
			// and keeps nothing (what it lists is pulled by tag or digest).
			if r.fresh(ctx, key, info) {
				return nil
			}
			return r.delete(ctx, key, info.Size)
		}
		if _, _, _, ok := layout.ParseTag(key); !ok {
			return nil
		}
		if r.pinnedTags[key] || r.fresh(ctx, key, info) {
			r.sum.Kept++
			if d, err := layout.ReadDigest(ctx, r.store, key); err == nil {
				r.keptManifests[d] = true
			}
			return nil
		}
		r.sum.DeletedTags++
		return r.delete(ctx, key, info.Size)
	}
}

// manifests keeps those read recently or pointed at by a kept tag, and
// every child of a kept index; it deletes the rest.
func (r *run) manifests(ctx context.Context) error {
	var candidates []digest.Digest // unread, unless a kept index claims them
	sizes := map[digest.Digest]int64{}
	err := r.store.List(ctx, layout.ManifestsPrefix, func(key string, info storage.Info) error {
		d, ok := layout.ParseDigest(key)
		if !ok {
			return nil
		}
		if r.keptManifests[d] || r.fresh(ctx, key, info) {
			r.keptManifests[d] = true
			return nil
		}
		candidates = append(candidates, d)
		sizes[d] = info.Size
		return nil
	})
	if err != nil {
		return err
	}
	// Walk kept manifests: an index keeps its children, an image its blobs.
	queue := make([]digest.Digest, 0, len(r.keptManifests))
	for d := range r.keptManifests {
		queue = append(queue, d)
	}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		for _, child := range r.references(ctx, d) {
			if !r.keptManifests[child] {
				r.keptManifests[child] = true
				queue = append(queue, child)
			}
		}
	}
	for _, d := range candidates {
		if r.keptManifests[d] {
			continue
		}
		r.sum.DeletedManifests++
		if err := r.delete(ctx, layout.Manifest(d), sizes[d]); err != nil {
			return err
		}
	}
	r.sum.Kept += int64(len(r.keptManifests))
	return nil
}

// references reads a kept manifest: an index's children are returned (to
// keep), an image's config and layers are marked referenced.
func (r *run) references(ctx context.Context, d digest.Digest) []digest.Digest {
	body, mediaType, err := layout.ReadManifest(ctx, r.store, d)
	if err != nil {
		return nil
	}
	if manifest.IsIndex(mediaType) {
		children, _ := manifest.Children(body)
		var out []digest.Digest
		for _, c := range children {
			if cd, err := digest.Parse(c.Digest); err == nil {
				out = append(out, cd)
			}
		}
		return out
	}
	refs, _ := manifest.References(body)
	for _, ref := range refs {
		if bd, err := digest.Parse(ref); err == nil {
			r.referenced[bd] = true
		}
	}
	return nil
}

// blobs deletes blobs that are unread and unreferenced. Manifests cached
// while the run went on are read first, so that a new image never loses a
// blob it shares with an old one.
func (r *run) blobs(ctx context.Context) error {
	err := r.store.List(ctx, layout.ManifestsPrefix, func(key string, info storage.Info) error {
		if d, ok := layout.ParseDigest(key); ok && !r.keptManifests[d] && info.ModTime.After(r.start.Add(-r.opts.Grace)) {
			r.keptManifests[d] = true
			r.references(ctx, d)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return r.store.List(ctx, layout.BlobsPrefix, func(key string, info storage.Info) error {
		d, ok := layout.ParseDigest(key)
		if !ok {
			return nil
		}
		if r.referenced[d] || r.fresh(ctx, key, info) {
			r.sum.Kept++
			return nil
		}
		r.sum.DeletedBlobs++
		if err := r.delete(ctx, key, info.Size); err != nil || r.opts.DryRun {
			return err
		}
		return r.store.Delete(ctx, layout.Origin(d))
	})
}

// fresh: read within the TTL, or written within the grace period. An
// object without a marker counts as read when it was written.
func (r *run) fresh(ctx context.Context, key string, info storage.Info) bool {
	if info.ModTime.After(r.start.Add(-r.opts.Grace)) {
		return true
	}
	return !r.lastRead(ctx, key, info.ModTime).Before(r.cutoff)
}

func (r *run) delete(ctx context.Context, key string, size int64) error {
	r.sum.FreedBytes += size
	if r.opts.DryRun {
		fmt.Fprintf(r.opts.Log, "would delete %s (%d bytes)\n", key, size)
		return nil
	}
	fmt.Fprintf(r.opts.Log, "deleting %s (%d bytes)\n", key, size)
	if err := r.store.Delete(ctx, key); err != nil {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	if d, ok := layout.ParseDigest(key); ok {
		// Its links go with it (which repositories it was served for),
		// and its verdicts (which verify policies it passed).
		var links []string
		for _, prefix := range []string{layout.LinksOf(d), layout.VerifiedOf(d)} {
			if err := r.store.List(ctx, prefix, func(k string, _ storage.Info) error {
				links = append(links, k)
				return nil
			}); err != nil {
				return fmt.Errorf("listing %s: %w", prefix, err)
			}
		}
		for _, k := range links {
			if err := r.store.Delete(ctx, k); err != nil {
				return fmt.Errorf("deleting %s: %w", k, err)
			}
		}
	}
	return r.store.Delete(ctx, layout.LastRead(key))
}
