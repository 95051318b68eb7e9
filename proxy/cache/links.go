package cache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"k8s.io/utils/lru"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/upstream"
)

// Storage is shared by digest: a blob cached for one repository is the
// same object for every other. With access rules in force that sharing
// would let a digest of a refused repository be read under an allowed
// name, so, as Distribution's repository links do, the cache records
// which repositories each manifest and blob was served for, and serves a
// digest under a repository only when it is linked to it or the upstream
// confirms that repository has it.

// maxKnownLinks bounds the links a cache remembers it has confirmed.
const maxKnownLinks = 1 << 16

// links remembers confirmed links, so that a warm pull costs no storage
// round trip for them, and for a while the upstream's refusals, so that
// a client asking for a cached digest under names that do not have it
// costs one upstream request per name and minute, not one per request.
type links struct {
	once    sync.Once
	known   *lru.Cache
	refused *lru.Cache // key -> refusal
}

// refusal is the upstream's answer that a repository does not have a
// digest, and until when it is taken as said.
type refusal struct {
	err   error
	until time.Time
}

// refusedFor is how long an upstream's refusal is remembered.
const refusedFor = time.Minute

func (l *links) init() {
	l.once.Do(func() { l.known, l.refused = lru.New(maxKnownLinks), lru.New(maxKnownLinks) })
}

func (l *links) has(key string) bool {
	l.init()
	_, ok := l.known.Get(key)
	return ok
}

func (l *links) add(key string) {
	l.init()
	l.known.Add(key, struct{}{})
	l.refused.Remove(key)
}

// refusedNow is the upstream's remembered refusal of key, if any.
func (l *links) refusedNow(key string, now time.Time) error {
	l.init()
	if v, ok := l.refused.Get(key); ok && now.Before(v.(refusal).until) {
		return v.(refusal).err
	}
	return nil
}

// refuse remembers err when it is the upstream's own answer (not found,
// refused), not a failure to ask it.
func (l *links) refuse(key string, err error, now time.Time) {
	var se *upstream.StatusError
	if errors.As(err, &se) && se.StatusCode >= 400 && se.StatusCode < 500 && se.StatusCode != http.StatusTooManyRequests {
		l.init()
		l.refused.Add(key, refusal{err: err, until: now.Add(refusedFor)})
	}
}

// Linked says whether d may be served under repo: it was served for repo
// before (a link says so), or the upstream answers that repo has it,
// which links it. An error is the upstream's answer otherwise (not
// found, refused, unreachable): the upstream decides, never the shared
// storage.
func (c *Cache) Linked(ctx context.Context, repo string, d digest.Digest, isManifest bool) error {
	key := layout.Link(d, c.registry, repo)
	if c.links.has(key) {
		return nil
	}
	if err := c.links.refusedNow(key, c.now()); err != nil {
		return err
	}
	if _, err := c.store.Stat(ctx, key); err == nil {
		c.links.add(key)
		return nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		c.storageFailed(err, "read a link", "repository", repo, "digest", d)
	}
	var err error
	if isManifest {
		var got upstream.Descriptor
		got, err = c.up.HeadManifest(ctx, repo, manifest.DigestRef(d), upstreamAccept(nil))
		if err == nil && got.Digest != "" && got.Digest != d {
			err = fmt.Errorf("%w: the upstream answered %s for %s", ErrDigestMismatch, got.Digest, d)
		}
	} else {
		_, err = c.up.HeadBlob(ctx, repo, d)
	}
	if err != nil {
		c.log.V(1).Info("the upstream did not confirm a digest for a repository it is not linked to", "repository", repo, "digest", d, "error", err.Error())
		c.links.refuse(key, err, c.now())
		return err
	}
	c.link(repo, d)
	return nil
}

// Link records m, and what it references (an index's children, an
// image's config and layers), as content of repo: m was served, or
// warmed, for repo. This replica knows at once; the links are stored in
// the background (a slow storage never holds up a pull), references
// first and the manifest's own link last, so that a manifest's link in
// storage means its references are linked too.
func (c *Cache) Link(_ context.Context, repo string, m *Manifest) {
	if c.links.has(layout.Link(m.Digest, c.registry, repo)) {
		return
	}
	var refs []digest.Digest
	if manifest.IsIndex(m.MediaType) {
		children, _ := manifest.Children(m.Body)
		for _, ch := range children {
			if d, err := digest.Parse(ch.Digest); err == nil {
				refs = append(refs, d)
			}
		}
	} else {
		blobs, _ := manifest.References(m.Body)
		for _, b := range blobs {
			if d, err := digest.Parse(b); err == nil {
				refs = append(refs, d)
			}
		}
	}
	c.link(repo, append(refs, m.Digest)...)
}

// maxLinking bounds the background writes of links at once; past it a
// link is known to this replica only, and another asks the upstream.
const maxLinking = 16

// link records ds as repo's: in memory now, in storage in the
// background unless the last of them is stored already.
func (c *Cache) link(repo string, ds ...digest.Digest) {
	for _, d := range ds {
		c.links.add(layout.Link(d, c.registry, repo))
	}
	select {
	case c.linking <- struct{}{}:
	default:
		return
	}
	c.running.Add(1)
	go func() {
		defer func() { <-c.linking; c.running.Done() }()
		ctx, cancel := context.WithTimeout(c.background, time.Minute)
		defer cancel()
		if _, err := c.store.Stat(ctx, layout.Link(ds[len(ds)-1], c.registry, repo)); err == nil {
			return
		}
		for _, d := range ds {
			if err := c.store.Put(ctx, layout.Link(d, c.registry, repo), strings.NewReader(""), 0); err != nil {
				c.storageFailed(err, "store a link", "repository", repo, "digest", d)
				return
			}
		}
	}()
}
