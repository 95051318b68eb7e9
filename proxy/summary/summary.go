// Package summary reports what a cache holds, for the operator's status:
// counts and bytes of everything stored, and the most recently cached
// tags with their platform images. It reads storage through layout, as
// cleanup does, and never the upstream.
package summary

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sync/singleflight"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/wire"
)

// maxImages bounds how many tags a summary lists; counts and bytes cover
// everything.
const maxImages = 50

// Live adds to a summary what is not in storage but in the running
// proxy, fresh on every request: request counts, throttled upstreams.
type Live func(*wire.Summary)

// Scanner makes summaries by listing storage, and reuses the last one for
// a while: a scan lists every object.
type Scanner struct {
	store storage.Storage
	live  Live
	// legacyRegistry names the registry of tags that releases before
	// several upstreams wrote: the default upstream's.
	legacyRegistry string
	last           atomic.Pointer[wire.Summary]
	flight         singleflight.Group
}

// New returns a scanner of store; live may be nil. legacyRegistry is
// the registry older releases' tags belong to (the default upstream's).
func New(store storage.Storage, live Live, legacyRegistry string) *Scanner {
	if live == nil {
		live = func(*wire.Summary) {}
	}
	return &Scanner{store: store, live: live, legacyRegistry: legacyRegistry}
}

// Invalidate drops the last scan: a new or moved tag shows in the next
// summary rather than waiting for the interval.
func (s *Scanner) Invalidate() { s.last.Store(nil) }

// Summary returns a summary no older than maxAge, scanning storage when
// the last one is older. Concurrent callers share one scan.
func (s *Scanner) Summary(ctx context.Context, maxAge time.Duration) (*wire.Summary, error) {
	if last := s.last.Load(); last != nil && time.Since(last.ScannedAt) < maxAge {
		return s.withLive(*last), nil
	}
	v, err, _ := s.flight.Do("scan", func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer cancel()
		return s.scan(ctx)
	})
	if err != nil {
		return nil, err
	}
	sum := v.(*wire.Summary)
	s.last.Store(sum)
	return s.withLive(*sum), nil
}

func (s *Scanner) withLive(sum wire.Summary) *wire.Summary {
	s.live(&sum)
	return &sum
}

// scan lists storage once, page by page, keeping only counters and the
// newest tags: its memory does not grow with the cache.
func (s *Scanner) scan(ctx context.Context) (*wire.Summary, error) {
	sum := &wire.Summary{ScannedAt: time.Now()}
	var newest []wire.SummaryImage
	err := s.store.List(ctx, "", func(key string, info storage.Info) error {
		sum.Bytes += info.Size
		registry, repo, tag, ok := layout.ParseTag(key)
		if !ok {
			return nil
		}
		sum.ImageCount++
		newest = append(newest, wire.SummaryImage{Registry: registry, Repository: repo, Tag: tag, CachedAt: info.ModTime})
		if len(newest) > 2*maxImages {
			newest = keepNewest(newest)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, img := range keepNewest(newest) {
		if s.describe(ctx, &img) {
			sum.Images = append(sum.Images, img)
		}
	}
	return sum, nil
}

// describe fills in a tag's digest, media type and platforms; false if
// the tag went since it was listed.
func (s *Scanner) describe(ctx context.Context, img *wire.SummaryImage) bool {
	d, err := layout.ReadTag(ctx, s.store, img.Registry, img.Repository, img.Tag)
	if err != nil {
		return false
	}
	if img.Registry == "" {
		img.Registry = s.legacyRegistry
	}
	body, mt, err := layout.ReadManifest(ctx, s.store, d)
	if err != nil {
		return false
	}
	img.Digest, img.MediaType = d.String(), mt
	if manifest.IsIndex(mt) {
		children, _ := manifest.Children(body)
		for _, ch := range children {
			p := "unknown"
			if ch.Platform != nil {
				p = ch.Platform.String()
			}
			img.Platforms = append(img.Platforms, wire.SummaryPlatform{Platform: p, Digest: ch.Digest})
		}
	}
	return true
}

func keepNewest(imgs []wire.SummaryImage) []wire.SummaryImage {
	sort.Slice(imgs, func(i, j int) bool { return imgs[i].CachedAt.After(imgs[j].CachedAt) })
	if len(imgs) > maxImages {
		imgs = imgs[:maxImages]
	}
	return imgs
}

// Handler serves the summary as JSON at wire.SummaryPath.
func (s *Scanner) Handler(maxAge time.Duration, log logr.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum, err := s.Summary(r.Context(), maxAge)
		if err != nil {
			log.Error(err, "cache summary failed")
			http.Error(w, "cache summary failed: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(sum)
	})
}
