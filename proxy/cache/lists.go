package cache

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/manifest"
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

// emptyIndex is the answer for a digest nothing is known to refer to.
const emptyIndex = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`

// Referrers returns the OCI index of manifests referring to d, filtered
// by the query's artifactType (filtered says so). It is never an error.
// An upstream with the referrers API gives it; one without it (it
// answers 404, as CNCF Distribution does) keeps what refers to d in the
// fallback tag, sha256-<hex>, as the spec has pushers do: the answer is
// built from that tag, cached like any tag (rechecked, and served while
// the upstream is down). Only when neither says anything is the index
// empty.
func (c *Cache) Referrers(ctx context.Context, repo string, d digest.Digest, query url.Values) (body []byte, filtered bool) {
	key := "referrers " + repo + "@" + d.String() + "?" + query.Encode()
	body, err := c.up.Referrers(ctx, repo, d, query, maxListSize)
	switch {
	case err == nil && validIndex(body):
		c.lists.put(key, body)
	case errors.Is(err, upstream.ErrNotFound):
		body = c.fallbackReferrers(ctx, repo, d)
	default:
		if err != nil {
			c.log.Info("upstream referrers failed", "repository", repo, "digest", d, "error", err.Error())
		}
		if e, ok := c.lists.get(key); ok {
			body = e.body
		} else {
			body = c.fallbackReferrers(ctx, repo, d)
		}
	}
	if t := query.Get("artifactType"); t != "" {
		return filterReferrers(body, t), true
	}
	return body, false
}

// fallbackTag is the tag that holds what refers to d on a registry
// without the referrers API.
func fallbackTag(d digest.Digest) string { return d.Algorithm().String() + "-" + d.Encoded() }

// fallbackReferrers is the fallback tag's index, or an empty one.
func (c *Cache) fallbackReferrers(ctx context.Context, repo string, d digest.Digest) []byte {
	m, err := c.Manifest(ctx, repo, manifest.TagRef(fallbackTag(d)), []string{string(types.OCIImageIndex)})
	if err != nil || m.MediaType != string(types.OCIImageIndex) || !validIndex(m.Body) {
		return []byte(emptyIndex)
	}
	return m.Body
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
