package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/audit"
	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/upstream"
)

// Manifest is a manifest to serve: the upstream's bytes, unchanged.
type Manifest struct {
	MediaType string
	Digest    digest.Digest
	Body      []byte

	// fromReplica: another replica fetched it, and stores it and its tag.
	fromReplica bool
}

// Manifest returns the manifest ref names in repo. accept is the
// client's Accept list; it is forwarded upstream together with every type
// depproxy serves.
func (c *Cache) Manifest(ctx context.Context, repo string, ref manifest.Ref, accept []string) (*Manifest, error) {
	if d, ok := ref.Digest(); ok {
		m, err := c.manifestByDigest(ctx, repo, d, accept)
		if err == nil {
			c.reads.touch(layout.Manifest(m.Digest))
		}
		return m, err
	}
	m, err := c.manifestByTag(ctx, repo, ref.Tag(), accept)
	if err == nil {
		c.reads.touch(layout.Tag(c.registry, repo, ref.Tag()), layout.Manifest(m.Digest))
	}
	return m, err
}

// manifestByDigest: a digest names immutable content, so a cached copy is
// served without asking the upstream anything.
func (c *Cache) manifestByDigest(ctx context.Context, repo string, d digest.Digest, accept []string) (*Manifest, error) {
	if m, err := c.loadManifest(ctx, d); err == nil {
		c.count(ctx, kindManifest, hit)
		return m, nil
	}
	started := false
	v, err, shared := c.flight.Do(repo+"@"+d.String(), func() (any, error) {
		started = true
		ctx, cancel := detach(ctx)
		defer cancel()
		return c.fetchManifest(ctx, repo, manifest.DigestRef(d), accept)
	})
	c.count(ctx, kindManifest, missOrShared(shared && !started))
	if err != nil {
		return nil, err
	}
	return v.(*Manifest), nil
}

// manifestByTag serves a cached tag while the upstream's HEAD says it has
// not moved, or while the upstream cannot be asked; it downloads only a
// tag that moved or was never cached.
func (c *Cache) manifestByTag(ctx context.Context, repo, tag string, accept []string) (*Manifest, error) {
	// Confirmed within the recheck interval: the tag points where it did,
	// and its manifest is very likely in memory.
	if d, ok := c.fresh(repo, tag); ok {
		if m, err := c.loadManifest(ctx, d); err == nil {
			c.count(ctx, kindManifest, hit)
			return m, nil
		}
	}
	cached := c.loadTag(ctx, repo, tag)
	// Concurrent requests for one tag share one HEAD, and one GET.
	// started: this request's flight ran (Do runs it in the goroutine of
	// the first caller); the others shared it.
	started := false
	v, err, shared := c.flight.Do(repo+":"+tag, func() (any, error) {
		started = true
		ctx, cancel := detach(ctx)
		defer cancel()
		if cached != nil {
			if until, waiting := c.up.Waiting(); waiting {
				c.log.V(1).Info("upstream asked to wait, serving cached tag", "repository", repo, "tag", tag, "until", until)
				return c.serveStale(cached, upstream.Reason429), nil
			}
			desc, err := c.up.HeadManifest(ctx, repo, manifest.TagRef(tag), upstreamAccept(accept))
			switch {
			case c.deletedUpstream(repo, tag, err):
				return nil, err
			case err != nil:
				c.log.Info("upstream failed, serving cached tag", "repository", repo, "tag", tag, "error", err.Error())
				return c.serveStale(cached, upstream.Reason(err)), nil
			case desc.Digest == cached.Digest:
				c.markFresh(repo, tag, cached.Digest)
				return tagAnswer{m: cached}, nil
			case c.up.Sparing():
				// Moved, but what is left of the rate limit is kept for
				// what is not cached; the next recheck tries again.
				c.log.V(1).Info("upstream rate limit nearly spent, serving the cached tag although it moved", "repository", repo, "tag", tag)
				return c.serveStale(cached, upstream.ReasonRateLimit), nil
			}
		}
		m, err := c.fetchManifest(ctx, repo, manifest.TagRef(tag), accept)
		if err != nil {
			if cached != nil && !c.deletedUpstream(repo, tag, err) {
				c.log.Info("upstream failed, serving cached tag", "repository", repo, "tag", tag, "error", err.Error())
				return c.serveStale(cached, upstream.Reason(err)), nil
			}
			return nil, err
		}
		c.markFresh(repo, tag, m.Digest)
		if m.fromReplica {
			return tagAnswer{m: m}, nil // the replica that fetched it stores it, and prefetches
		}
		moved := cached == nil || cached.Digest != m.Digest
		if err := c.storeTag(ctx, repo, tag, m.Digest); err != nil {
			c.storageFailed(err, "store tag", "repository", repo, "tag", tag)
		} else if moved {
			c.stored(Stored{Repo: repo, Tag: tag, NewTag: cached == nil})
		}
		if moved && manifest.IsIndex(m.MediaType) && len(c.prefetch) > 0 {
			c.running.Add(1)
			go func() {
				defer c.running.Done()
				c.prefetchIndex(repo, m)
			}()
		}
		return tagAnswer{m: m}, nil
	})
	if err != nil {
		return nil, err
	}
	answer := v.(tagAnswer)
	m := answer.m
	switch {
	case cached != nil && m.Digest == cached.Digest:
		c.count(ctx, kindManifest, hit)
	case shared && !started:
		c.count(ctx, kindManifest, coalesced)
	default:
		c.count(ctx, kindManifest, miss)
	}
	if answer.stale != "" {
		setOutcome(ctx, audit.Stale, answer.stale)
	}
	return m, nil
}

// tagAnswer is what one flight for a tag found: the manifest to serve,
// and why it is served without the upstream's word, if it is.
type tagAnswer struct {
	m     *Manifest
	stale string
}

// serveStale counts a cached tag served without the upstream's word,
// and says why.
func (c *Cache) serveStale(cached *Manifest, reason string) tagAnswer {
	c.countStale(reason)
	return tagAnswer{m: cached, stale: reason}
}

// deletedUpstream: the upstream says the cached tag is gone, and the
// cache is to say so too (it is not pinned).
func (c *Cache) deletedUpstream(repo, tag string, err error) bool {
	return c.forgetDeleted && errors.Is(err, upstream.ErrNotFound) && (c.pinned == nil || !c.pinned(repo, tag))
}

// detach frees work done for several requests from the one that started
// it: that client hanging up must not fail the others.
func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
}

// fetchManifest downloads a manifest, checks it and stores it.
func (c *Cache) fetchManifest(ctx context.Context, repo string, ref manifest.Ref, accept []string) (*Manifest, error) {
	um, err := c.up.GetManifest(ctx, repo, ref, upstreamAccept(accept), manifest.MaxSize)
	if err != nil {
		return nil, err
	}
	if !um.FromReplica {
		c.countPulled(kindManifest, int64(len(um.Body)))
	}
	want, _ := ref.Digest()
	m, err := checkManifest(um, want)
	if err != nil {
		return nil, err
	}
	c.memory.put(m)
	c.declared.learn(m)
	if m.fromReplica {
		return m, nil
	}
	rec := layout.ManifestRecord(m.MediaType, m.Body)
	if err := c.store.Put(ctx, layout.Manifest(m.Digest), bytes.NewReader(rec), int64(len(rec))); err != nil {
		c.storageFailed(err, "store manifest", "repository", repo, "digest", m.Digest)
	} else {
		c.stored(Stored{Bytes: int64(len(rec))})
	}
	if c.origins {
		c.recordOrigins(ctx, m)
	}
	c.log.Info("cached manifest", "repository", repo, "reference", ref.String(), "digest", m.Digest, "mediaType", m.MediaType)
	return m, nil
}

// recordOrigins notes this registry as where an image manifest's blobs
// come from: a small write per blob, when the manifest is fetched, never
// when it is served.
func (c *Cache) recordOrigins(ctx context.Context, m *Manifest) {
	if manifest.IsIndex(m.MediaType) {
		return
	}
	blobs, err := manifest.Blobs(m.Body)
	if err != nil {
		return
	}
	for _, b := range blobs {
		d, err := digest.Parse(b.Digest.String())
		if err != nil {
			continue
		}
		key := layout.Origin(d)
		if err := c.store.Put(ctx, key, strings.NewReader(c.registry), int64(len(c.registry))); err != nil {
			c.storageFailed(err, "record origin", "digest", d)
			return
		}
	}
}

// checkManifest decides the type to serve and the digest, and refuses
// bytes that are not what was asked for.
func checkManifest(um *upstream.Manifest, want digest.Digest) (*Manifest, error) {
	mt, err := manifest.MediaType(um.MediaType, um.Body)
	if err != nil {
		return nil, err
	}
	alg := digest.Canonical
	if want != "" {
		alg = want.Algorithm()
	}
	got := alg.FromBytes(um.Body)
	if want != "" && got != want {
		return nil, fmt.Errorf("%w: manifest %s hashes to %s", ErrDigestMismatch, want, got)
	}
	if h := um.Digest; h != "" && h.Algorithm().FromBytes(um.Body) != h {
		return nil, fmt.Errorf("%w: upstream said %s for a manifest that hashes otherwise", ErrDigestMismatch, h)
	}
	return &Manifest{MediaType: mt, Digest: got, Body: um.Body, fromReplica: um.FromReplica}, nil
}

// upstreamAccept is the client's Accept list plus every type depproxy
// serves, so that an old client's narrow list never makes the upstream
// fall back to schema 1.
func upstreamAccept(client []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, list := range [][]string{client, manifest.Accepted} {
		for _, a := range list {
			for _, t := range strings.Split(a, ",") {
				if t = strings.TrimSpace(t); t != "" && !seen[t] {
					seen[t] = true
					out = append(out, t)
				}
			}
		}
	}
	return out
}

func (c *Cache) loadManifest(ctx context.Context, d digest.Digest) (*Manifest, error) {
	if m := c.memory.get(d); m != nil {
		return m, nil
	}
	body, mt, err := layout.ReadManifest(ctx, c.store, d)
	switch {
	case errors.Is(err, layout.ErrDamaged):
		c.log.Error(err, "ignoring damaged cache entry")
		return nil, err
	case err != nil:
		c.storageFailed(err, "read manifest", "digest", d)
		return nil, err
	}
	if !manifest.Servable(mt) {
		if mt, err = manifest.MediaType("", body); err != nil {
			return nil, err
		}
	}
	m := &Manifest{MediaType: mt, Digest: d, Body: body}
	c.memory.put(m)
	c.declared.learn(m)
	return m, nil
}

// loadTag returns the cached manifest a tag points at, or nil.
func (c *Cache) loadTag(ctx context.Context, repo, tag string) *Manifest {
	d, err := layout.ReadTag(ctx, c.store, c.registry, repo, tag)
	if err != nil {
		c.storageFailed(err, "read tag", "repository", repo, "tag", tag)
		if !errors.Is(err, storage.ErrNotFound) {
			// The storage does not answer: what this replica last
			// confirmed, if it still has the manifest in memory.
			return c.remembered(repo, tag)
		}
		return nil
	}
	m, err := c.loadManifest(ctx, d)
	if err != nil {
		return c.remembered(repo, tag)
	}
	return m
}

// remembered is the manifest a tag pointed at when the upstream last
// confirmed it, from memory alone; nil when either is forgotten.
func (c *Cache) remembered(repo, tag string) *Manifest {
	c.mu.Lock()
	got, ok := c.checked[repo+":"+tag]
	c.mu.Unlock()
	if !ok {
		return nil
	}
	return c.memory.get(got.digest)
}

func (c *Cache) storeTag(ctx context.Context, repo, tag string, d digest.Digest) error {
	ds := d.String()
	return c.store.Put(ctx, layout.Tag(c.registry, repo, tag), strings.NewReader(ds), int64(len(ds)))
}

// maxChecked bounds the tags whose last check is remembered.
const maxChecked = 100_000

// confirmed is what the upstream last said of a tag, and when.
type confirmed struct {
	at     time.Time
	digest digest.Digest
}

// fresh returns the digest the upstream confirmed for a tag less than the
// recheck interval ago. (What it confirmed longer ago is remembered too,
// for when storage does not answer.)
func (c *Cache) fresh(repo, tag string) (digest.Digest, bool) {
	if c.recheck <= 0 {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	got, ok := c.checked[repo+":"+tag]
	return got.digest, ok && time.Since(got.at) < c.recheck
}

func (c *Cache) markFresh(repo, tag string, d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.checked) >= maxChecked {
		// Forgetting costs one HEAD per tag; never memory without bound.
		c.checked = map[string]confirmed{}
	}
	c.checked[repo+":"+tag] = confirmed{at: time.Now(), digest: d}
}

// prefetchIndex caches the children of an index for the configured
// platforms, and their blobs, in the background.
func (c *Cache) prefetchIndex(repo string, idx *Manifest) {
	ctx, cancel := context.WithTimeout(c.background, c.fillTimeout)
	defer cancel()
	if c.prefetchable != nil {
		if err := c.prefetchable(Warming(ctx), repo, idx); err != nil {
			c.log.Info("index not prefetched", "repository", repo, "digest", idx.Digest, "reason", err.Error())
			return
		}
	}
	children, err := manifest.Children(idx.Body)
	if err != nil {
		return
	}
	for _, child := range children {
		if child.Platform == nil || !c.wantPlatform(*child.Platform) {
			continue
		}
		d, err := digest.Parse(child.Digest)
		if err != nil {
			continue
		}
		if err := c.prefetchImage(ctx, repo, d); err != nil {
			c.log.Info("prefetch failed", "repository", repo, "digest", d, "error", err.Error())
		}
	}
}

func (c *Cache) prefetchImage(ctx context.Context, repo string, d digest.Digest) error {
	m, err := c.manifestByDigest(ctx, repo, d, nil)
	if err != nil {
		return err
	}
	c.Link(ctx, repo, m)
	if manifest.IsIndex(m.MediaType) {
		return nil
	}
	refs, err := manifest.References(m.Body)
	if err != nil {
		return err
	}
	var errs []error
	for _, ref := range refs {
		bd, err := digest.Parse(ref)
		if err != nil {
			continue
		}
		errs = append(errs, c.warmBlob(ctx, repo, bd))
	}
	return errors.Join(errs...)
}

func (c *Cache) wantPlatform(p v1.Platform) bool { return matches(p, c.prefetch) }
