package cache

import (
	"context"
	"sort"
	"time"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
)

// summaryImages bounds how many tags a summary lists; counts and bytes
// cover everything.
const summaryImages = 50

// Summary is what a cache holds: counts and size of everything, and the
// most recently cached tags, an index with its platform images.
type Summary struct {
	Images     []SummaryImage `json:"images"`
	ImageCount int64          `json:"imageCount"`
	Bytes      int64          `json:"bytes"`
	// Hits and Misses count manifest and blob requests since start.
	Hits      int64     `json:"hits"`
	Misses    int64     `json:"misses"`
	ScannedAt time.Time `json:"scannedAt"`
}

// SummaryImage is one cached tag.
type SummaryImage struct {
	Repository string            `json:"repository"`
	Tag        string            `json:"tag"`
	Digest     string            `json:"digest"`
	MediaType  string            `json:"mediaType"`
	Platforms  []SummaryPlatform `json:"platforms,omitempty"`
	cachedAt   time.Time
}

// SummaryPlatform is a child of a cached index.
type SummaryPlatform struct {
	Platform string `json:"platform"`
	Digest   string `json:"digest"`
}

// Summary returns a summary no older than maxAge, scanning storage when
// the last one is older. Concurrent callers share one scan.
func (c *Cache) Summary(ctx context.Context, maxAge time.Duration) (*Summary, error) {
	if s := c.lastSummary.Load(); s != nil && time.Since(s.ScannedAt) < maxAge {
		return c.withCounters(*s), nil
	}
	v, err, _ := c.flight.Do("summary", func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer cancel()
		return c.scan(ctx)
	})
	if err != nil {
		return nil, err
	}
	s := v.(*Summary)
	c.lastSummary.Store(s)
	return c.withCounters(*s), nil
}

func (c *Cache) withCounters(s Summary) *Summary {
	s.Hits, s.Misses = c.metrics.hits.Load(), c.metrics.misses.Load()
	return &s
}

// scan lists storage once, page by page, keeping only counters and the
// newest tags: its memory does not grow with the cache.
func (c *Cache) scan(ctx context.Context) (*Summary, error) {
	s := &Summary{ScannedAt: time.Now()}
	var newest []SummaryImage
	err := c.store.List(ctx, "", func(key string, info storage.Info) error {
		s.Bytes += info.Size
		repo, tag, ok := layout.ParseTag(key)
		if !ok {
			return nil
		}
		s.ImageCount++
		newest = append(newest, SummaryImage{Repository: repo, Tag: tag, cachedAt: info.ModTime})
		if len(newest) > 2*summaryImages {
			newest = keepNewest(newest)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, img := range keepNewest(newest) {
		m := c.loadTag(ctx, img.Repository, img.Tag)
		if m == nil {
			continue // deleted since listed
		}
		img.Digest, img.MediaType = m.Digest.String(), m.MediaType
		if manifest.IsIndex(m.MediaType) {
			children, _ := manifest.Children(m.Body)
			for _, ch := range children {
				p := "unknown"
				if ch.Platform != nil {
					p = ch.Platform.String()
				}
				img.Platforms = append(img.Platforms, SummaryPlatform{Platform: p, Digest: ch.Digest})
			}
		}
		s.Images = append(s.Images, img)
	}
	return s, nil
}

func keepNewest(imgs []SummaryImage) []SummaryImage {
	sort.Slice(imgs, func(i, j int) bool { return imgs[i].cachedAt.After(imgs[j].cachedAt) })
	if len(imgs) > summaryImages {
		imgs = imgs[:summaryImages]
	}
	return imgs
}
