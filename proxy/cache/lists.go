package cache

import (
	"bytes"
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

// listTTL is how long a tags/list answer is reused without asking again.
const listTTL = 30 * time.Second

// listMaxEntries bounds the in-memory list cache.
const listMaxEntries = 1024

const maxListSize = 4 << 20

// listCache keeps recent tags/list and referrers answers in memory: they
// change often, are cheap to refetch, and are worth serving stale when the
// upstream is down.
type listCache struct {
	mu      sync.Mutex
	entries map[string]listEntry
}

type listEntry struct {
	body    []byte
	fetched time.Time
}

func (l *listCache) get(key string) (listEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[key]
	return e, ok
}

func (l *listCache) put(key string, body []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.entries == nil || len(l.entries) >= listMaxEntries {
		l.entries = map[string]listEntry{}
	}
	l.entries[key] = listEntry{body: body, fetched: time.Now()}
}

// Tags returns the upstream's tags/list answer, passing its query (n, last)
// through, reused for a short while and served stale when the upstream
// fails.
func (c *Cache) Tags(ctx context.Context, repo string, query url.Values) ([]byte, error) {
	key := "tags " + repo + "?" + query.Encode()
	e, ok := c.lists.get(key)
	if ok && time.Since(e.fetched) < listTTL {
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
	c.lists.put(key, body)
	return body, nil
}

// emptyIndex is the answer for a digest nothing refers to.
const emptyIndex = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`

// Referrers returns the OCI index of manifests referring to d, filtered
// by the query's artifactType (filtered says so).
//
// An upstream with the referrers API gives it: the answer is kept in
// storage and reused for listTTL, and served as kept while the upstream
// is down, on any replica and after a restart. An upstream without the
// API (it answers 404, as CNCF Distribution does) keeps what refers to d
// in the fallback tag, sha256-<hex>, as the spec has pushers do: the
// answer is that tag's index, cached like any tag. Answering 404 instead
// would send each client to the fallback tag itself; building the answer
// here serves clients that never fall back (and the filter) alike.
//
// The index is empty only when the upstream said so (an empty list, or
// no fallback tag): an upstream that cannot be asked, with nothing kept,
// is an error.
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
// serves every filter. The answer is kept however it was built (the
// API's, the fallback tag's, or empty because neither names anything),
// so that a replica that never asked, or a restart, can serve it while
// the upstream is down.
func (c *Cache) referrers(ctx context.Context, repo string, d digest.Digest) ([]byte, error) {
	key := layout.Referrers(c.registry, repo, d)
	c.reads.touch(key)
	e, remembered := c.lists.get(key)
	if remembered && time.Since(e.fetched) < listTTL {
		return e.body, nil
	}
	body, err := c.up.Referrers(ctx, repo, d, nil, maxListSize)
	switch {
	case errors.Is(err, upstream.ErrNotFound):
		body, err = c.fallbackReferrers(ctx, repo, d)
	case err == nil && !validIndex(body):
		err = fmt.Errorf("%w: the referrers answer is not an OCI index", upstream.ErrUnreachable)
	}
	if err == nil {
		c.lists.put(key, body)
		if !remembered || !bytes.Equal(e.body, body) {
			if err := c.store.Put(ctx, key, bytes.NewReader(body), int64(len(body))); err != nil {
				c.storageFailed(err, "store referrers", "repository", repo, "digest", d)
			}
		}
		return body, nil
	}
	if remembered {
		c.log.Info("upstream failed, serving the referrers as cached", "repository", repo, "digest", d, "error", err.Error())
		return e.body, nil
	}
	if kept, serr := storage.ReadAll(ctx, c.store, key, maxListSize); serr == nil && validIndex(kept) {
		c.log.Info("upstream failed, serving the referrers as stored", "repository", repo, "digest", d, "error", err.Error())
		c.lists.put(key, kept)
		return kept, nil
	}
	return nil, err
}

// fallbackTag is the tag that holds what refers to d on a registry
// without the referrers API.
func fallbackTag(d digest.Digest) string { return d.Algorithm().String() + "-" + d.Encoded() }

// fallbackReferrers is the fallback tag's index; an empty one when the
// upstream has no such tag.
func (c *Cache) fallbackReferrers(ctx context.Context, repo string, d digest.Digest) ([]byte, error) {
	m, err := c.Manifest(ctx, repo, manifest.TagRef(fallbackTag(d)), []string{string(types.OCIImageIndex)})
	switch {
	case errors.Is(err, upstream.ErrNotFound):
		return []byte(emptyIndex), nil
	case err != nil:
		return nil, err
	case m.MediaType != string(types.OCIImageIndex) || !validIndex(m.Body):
		// Not what a pusher keeps there: nothing refers to d that way.
		return []byte(emptyIndex), nil
	}
	return m.Body, nil
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

func validIndex(body []byte) bool {
	var idx struct {
		Manifests json.RawMessage `json:"manifests"`
	}
	return json.Unmarshal(body, &idx) == nil && strings.HasPrefix(strings.TrimSpace(string(idx.Manifests)), "[")
}
