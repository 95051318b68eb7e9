package cache

import (
	"bytes"
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/upstream"
)

// DefaultListTTL is how long a tags/list or referrers answer is reused
// without asking again.
const DefaultListTTL = 30 * time.Second

// listMaxEntries and listMaxBytes bound the in-memory list cache: the
// least recently used answers are forgotten past either.
const (
	listMaxEntries = 4096
	listMaxBytes   = 64 << 20
)

const maxListSize = 4 << 20

// listCache keeps recent tags/list and referrers answers in memory: they
// change often, are cheap to refetch, and are worth serving stale when the
// upstream is down. It is the only place an empty referrers answer for
// a digest the cache does not hold is kept: anyone can ask for any
// number of those, and storage is not for them.
type listCache struct {
	mu    sync.Mutex
	order *list.List // of *listEntry, most recently used first
	byKey map[string]*list.Element
	bytes int
}

type listEntry struct {
	key     string
	body    []byte
	fetched time.Time
	// stored: the body is in storage as well (a referrers answer).
	stored bool
}

func (l *listCache) get(key string) (listEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	el, ok := l.byKey[key]
	if !ok {
		return listEntry{}, false
	}
	l.order.MoveToFront(el)
	return *el.Value.(*listEntry), true
}

func (l *listCache) put(key string, body []byte, stored bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byKey == nil {
		l.order, l.byKey = list.New(), map[string]*list.Element{}
	}
	if el, ok := l.byKey[key]; ok {
		l.bytes -= len(el.Value.(*listEntry).body)
		l.order.Remove(el)
	}
	l.byKey[key] = l.order.PushFront(&listEntry{key: key, body: body, fetched: time.Now(), stored: stored})
	l.bytes += len(body)
	for l.order.Len() > listMaxEntries || l.bytes > listMaxBytes {
		last := l.order.Back()
		old := last.Value.(*listEntry)
		l.order.Remove(last)
		delete(l.byKey, old.key)
		l.bytes -= len(old.body)
	}
}

// Tags returns the upstream's tags/list answer, passing its query (n, last)
// through, reused for a short while and served stale when the upstream
// fails.
func (c *Cache) Tags(ctx context.Context, repo string, query url.Values) ([]byte, error) {
	key := "tags " + repo + "?" + query.Encode()
	e, ok := c.lists.get(key)
	if ok && time.Since(e.fetched) < c.listTTL {
		return e.body, nil
	}
	body, err := c.up.Tags(ctx, repo, query, maxListSize)
	if err == nil && !json.Valid(body) {
		err = errors.New("upstream tags/list is not JSON")
	}
	if err != nil {
		if ok {
			c.log.Info("upstream failed, serving cached tag list", "repository", repo, "error", err.Error())
			return e.body, nil
		}
		return nil, err
	}
	c.lists.put(key, body, false)
	return body, nil
}

// emptyIndex is the answer for a digest nothing refers to.
const emptyIndex = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`

// Referrers returns the OCI index of manifests referring to d, filtered
// by the query's artifactType (filtered says so).
//
// An upstream with the referrers API gives it. An upstream without the
// API (it answers 404, as CNCF Distribution does) keeps what refers to d
// in the fallback tag, sha256-<hex>, as the spec has pushers do: the
// answer is that tag's index, cached like any tag. Answering 404 instead
// would send each client to the fallback tag itself; building the answer
// here serves clients that never fall back (and the filter) alike.
//
// The answer is reused for the list TTL and served as last seen while the
// upstream is down. The index is empty only when the upstream said so
// (an empty list, no fallback tag, no such repository): an upstream that
// cannot be asked, with nothing kept, is an error.
func (c *Cache) Referrers(ctx context.Context, repo string, d digest.Digest, query url.Values) (body []byte, filtered bool, err error) {
	body, err = c.referrers(ctx, repo, d)
	if err != nil {
		return nil, false, err
	}
	if t := query.Get("artifactType"); t != "" {
		return filterReferrers(body, t), true, nil
	}
	return body, false, nil
}

// referrers is the whole index of what refers to d. The upstream is asked
// for all of it, and the filter applied here, so that one kept answer
// serves every filter.
//
// What is kept where is bounded by what the cache holds, not by what
// clients ask: an answer that names referrers, or any answer for a
// manifest the cache holds, is stored, so that a replica that never
// asked, or a restart, can serve it while the upstream is down; an empty
// answer for anything else (any digest anyone makes up) is kept in
// memory only, and served from there alike. A repository the upstream
// says does not exist is remembered as such for the list TTL, as is an
// upstream without the referrers API: random digests cost the upstream
// one GET each (the fallback tag; and its tags/list once per TTL, to
// learn whether the repository exists), and under a repository it does
// not have, one GET per TTL in all.
func (c *Cache) referrers(ctx context.Context, repo string, d digest.Digest) ([]byte, error) {
	key := layout.Referrers(c.registry, repo, d)
	unknownKey := "unknown repository " + repo
	e, remembered := c.lists.get(key)
	if remembered && time.Since(e.fetched) < c.listTTL {
		c.touchReferrers(e)
		return e.body, nil
	}
	u, unknown := c.lists.get(unknownKey)
	if unknown && time.Since(u.fetched) < c.listTTL {
		return []byte(emptyIndex), nil
	}
	var body []byte
	var err error
	nameUnknown := false
	if a, ok := c.lists.get(noReferrersAPI); ok && time.Since(a.fetched) < c.listTTL {
		body, nameUnknown, err = c.fallbackReferrers(ctx, repo, d)
	} else {
		body, err = c.up.Referrers(ctx, repo, d, maxListSize)
		switch {
		case upstream.NameUnknown(err):
			body, err, nameUnknown = []byte(emptyIndex), nil, true
		case errors.Is(err, upstream.ErrNotFound):
			var se *upstream.StatusError
			if errors.As(err, &se) && se.Code == "" {
				// A 404 that is no registry error: there is no such
				// route, no referrers API (one would answer an empty
				// index). The next digests go to the fallback tag
				// straight away.
				c.lists.put(noReferrersAPI, nil, false)
			}
			body, nameUnknown, err = c.fallbackReferrers(ctx, repo, d)
		case err == nil && !validIndex(body):
			err = fmt.Errorf("%w: the referrers answer is not an OCI index", upstream.ErrUnreachable)
		}
	}
	if err == nil {
		if nameUnknown {
			c.lists.put(unknownKey, nil, false)
		}
		stored := remembered && e.stored
		if stored || !emptyReferrers(body) || c.holds(ctx, d) {
			if !stored || !bytes.Equal(e.body, body) {
				if err := c.store.Put(ctx, key, bytes.NewReader(body), int64(len(body))); err != nil {
					c.storageFailed(err, "store referrers", "repository", repo, "digest", d)
				} else {
					stored = true
				}
			}
		}
		e = listEntry{key: key, body: body, stored: stored}
		c.lists.put(key, body, stored)
		c.touchReferrers(e)
		return body, nil
	}
	if remembered {
		c.log.Info("upstream failed, serving the referrers as cached", "repository", repo, "digest", d, "error", err.Error())
		c.touchReferrers(e)
		return e.body, nil
	}
	if unknown {
		c.log.Info("upstream failed, serving the referrers of a repository it said does not exist", "repository", repo, "digest", d, "error", err.Error())
		return []byte(emptyIndex), nil
	}
	if kept, serr := storage.ReadAll(ctx, c.store, key, maxListSize); serr == nil && validIndex(kept) {
		c.log.Info("upstream failed, serving the referrers as stored", "repository", repo, "digest", d, "error", err.Error())
		c.lists.put(key, kept, true)
		c.reads.touch(key)
		return kept, nil
	}
	return nil, err
}

// noReferrersAPI is the list cache's note that the upstream answered the
// referrers API 404: it has none, and for the list TTL it is not asked.
const noReferrersAPI = "no referrers API"

// touchReferrers notes a read of a stored answer (one in memory only has
// no last-read marker to keep: nothing to clean up).
func (c *Cache) touchReferrers(e listEntry) {
	if e.stored {
		c.reads.touch(e.key)
	}
}

// holds reports whether the cache holds the manifest d: what is known
// of it is worth keeping.
func (c *Cache) holds(ctx context.Context, d digest.Digest) bool {
	if c.memory.get(d) != nil {
		return true
	}
	_, err := c.store.Stat(ctx, layout.Manifest(d))
	return err == nil
}

// fallbackTag is the tag that holds what refers to d on a registry
// without the referrers API.
func fallbackTag(d digest.Digest) string { return d.Algorithm().String() + "-" + d.Encoded() }

// fallbackReferrers is the fallback tag's index; an empty one when the
// upstream has no such tag (nameUnknown: no such repository either).
func (c *Cache) fallbackReferrers(ctx context.Context, repo string, d digest.Digest) (body []byte, nameUnknown bool, err error) {
	if c.repositoryUnknown(ctx, repo) {
		return []byte(emptyIndex), true, nil
	}
	m, err := c.Manifest(ctx, repo, manifest.TagRef(fallbackTag(d)), []string{string(types.OCIImageIndex)})
	switch {
	case errors.Is(err, upstream.ErrNotFound):
		return []byte(emptyIndex), upstream.NameUnknown(err), nil
	case errors.Is(err, upstream.ErrTooLarge):
		// The index a referrers answer is, not a manifest a client asked for.
		return nil, false, fmt.Errorf("%w: in the fallback tag %s: %w", upstream.ErrReferrersTooLarge, fallbackTag(d), err)
	case err != nil:
		return nil, false, err
	case m.MediaType != string(types.OCIImageIndex) || !validIndex(m.Body):
		// Not what a pusher keeps there: nothing refers to d that way.
		return []byte(emptyIndex), false, nil
	}
	return m.Body, false, nil
}

// repositoryUnknown asks the upstream whether repo exists before its
// fallback tag is asked for, as a missing tag does not say (CNCF
// Distribution answers MANIFEST_UNKNOWN for a tag of a repository it
// does not have): its tags/list, one tag's worth, answers 404
// NAME_UNKNOWN then. A 200 is reused for the list TTL, as any tags/list
// answer is: a repository that exists costs one more small GET per TTL,
// one that does not costs that GET alone.
func (c *Cache) repositoryUnknown(ctx context.Context, repo string) bool {
	_, err := c.Tags(ctx, repo, url.Values{"n": {"1"}})
	return upstream.NameUnknown(err)
}

// filterReferrers keeps the descriptors of one artifact type.
func filterReferrers(body []byte, artifactType string) []byte {
	var idx map[string]json.RawMessage
	var descs []map[string]any
	if json.Unmarshal(body, &idx) != nil || json.Unmarshal(idx["manifests"], &descs) != nil {
		return []byte(emptyIndex)
	}
	kept := []map[string]any{}
	for _, d := range descs {
		if d["artifactType"] == artifactType {
			kept = append(kept, d)
		}
	}
	out, err := json.Marshal(kept)
	if err != nil {
		return []byte(emptyIndex)
	}
	idx["manifests"] = out
	if out, err = json.Marshal(idx); err != nil {
		return []byte(emptyIndex)
	}
	return out
}

// emptyReferrers: the index names nothing.
func emptyReferrers(body []byte) bool {
	var idx struct {
		Manifests []json.RawMessage `json:"manifests"`
	}
	return json.Unmarshal(body, &idx) == nil && len(idx.Manifests) == 0
}

func validIndex(body []byte) bool {
	var idx struct {
		Manifests json.RawMessage `json:"manifests"`
	}
	return json.Unmarshal(body, &idx) == nil && strings.HasPrefix(strings.TrimSpace(string(idx.Manifests)), "[")
}
