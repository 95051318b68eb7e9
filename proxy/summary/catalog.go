package summary

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
)

// CatalogImage is a cached tag as a person browsing the cache sees it.
type CatalogImage struct {
	Registry, Repository, Tag string
	Digest, MediaType         string
	// Size is what pulling it costs: its manifests and blobs; for an
	// index, every platform image's.
	Size int64
	// CachedAt is when the tag was last stored; LastPulled when it was
	// last served (zero: not recorded yet).
	CachedAt, LastPulled time.Time
	Platforms            []CatalogPlatform
}

// CatalogPlatform is one platform image of a cached index.
type CatalogPlatform struct {
	Platform, Digest string
	Size             int64
	Cached           bool // its manifest is in the cache
}

// catalogReuse is how long one listing of the tag space serves every
// page view: a person browsing (or a page left to reload) costs one LIST
// of all tags per this long, not one per view.
const catalogReuse = 5 * time.Second

// tagList is the tag space as last listed, in name order.
type tagList struct {
	mu   sync.Mutex // one listing at a time; the others wait for it
	tags []CatalogImage
	at   time.Time
}

// Catalog lists the cached tags whose registry/repository:tag contains
// filter (any case), in name order: the first limit of them described,
// and how many match in all. It lists the tags alone, not the blobs.
func (s *Scanner) Catalog(ctx context.Context, filter string, limit int) ([]CatalogImage, int, error) {
	filter = strings.ToLower(strings.TrimSpace(filter))
	all, err := s.listTags(ctx)
	if err != nil {
		return nil, 0, err
	}
	var found []CatalogImage
	for _, img := range all {
		if !s.shown(img.Registry, img.Repository) {
			continue
		}
		if filter == "" || strings.Contains(strings.ToLower(img.Registry+"/"+img.Repository+":"+img.Tag), filter) {
			found = append(found, img)
		}
	}
	total := len(found)
	if len(found) > limit {
		found = found[:limit]
	}
	// Each tag costs a few small reads: eight at a time.
	var wg sync.WaitGroup
	work := make(chan *CatalogImage)
	for range 8 {
		wg.Go(func() {
			for img := range work {
				s.describeForCatalog(ctx, img)
			}
		})
	}
	for i := range found {
		work <- &found[i]
	}
	close(work)
	wg.Wait()
	return found, total, nil
}

// listTags returns every cached tag, listed at most once per
// catalogReuse.
func (s *Scanner) listTags(ctx context.Context) ([]CatalogImage, error) {
	l := &s.catalog
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tags != nil && s.now().Sub(l.at) < catalogReuse {
		return l.tags, nil
	}
	at := s.now()
	found := []CatalogImage{}
	err := s.store.List(ctx, layout.RegistriesPrefix, func(key string, info storage.Info) error {
		registry, repo, tag, ok := layout.ParseTag(key)
		if !ok {
			return nil
		}
		found = append(found, CatalogImage{Registry: registry, Repository: repo, Tag: tag, CachedAt: info.ModTime})
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(found, func(i, j int) bool {
		a, b := found[i], found[j]
		if a.Registry != b.Registry {
			return a.Registry < b.Registry
		}
		if a.Repository != b.Repository {
			return a.Repository < b.Repository
		}
		return a.Tag < b.Tag
	})
	l.tags, l.at = found, at
	return found, nil
}

func (s *Scanner) describeForCatalog(ctx context.Context, img *CatalogImage) {
	tagKey := layout.Tag(img.Registry, img.Repository, img.Tag)
	d, err := layout.ReadDigest(ctx, s.store, tagKey)
	if err != nil {
		return
	}
	img.LastPulled = s.lastRead(ctx, tagKey)
	body, mt, err := layout.ReadManifest(ctx, s.store, d)
	if err != nil {
		return
	}
	img.Digest, img.MediaType = d.String(), mt
	if !manifest.IsIndex(mt) {
		img.Size = imageSize(body)
		return
	}
	img.Size = int64(len(body))
	children, _ := manifest.Children(body)
	for _, ch := range children {
		p := CatalogPlatform{Platform: "unknown", Digest: ch.Digest}
		if ch.Platform != nil {
			p.Platform = ch.Platform.String()
		}
		if cd, err := digest.Parse(ch.Digest); err == nil {
			if child, _, err := layout.ReadManifest(ctx, s.store, cd); err == nil {
				p.Size, p.Cached = imageSize(child), true
				img.Size += p.Size
			}
		}
		img.Platforms = append(img.Platforms, p)
	}
}

// imageSize is an image manifest's own size, its config's and its
// layers'.
func imageSize(body []byte) int64 {
	size := int64(len(body))
	blobs, _ := manifest.Blobs(body)
	for _, b := range blobs {
		size += b.Size
	}
	return size
}

func (s *Scanner) lastRead(ctx context.Context, key string) time.Time {
	r, _, err := s.store.Open(ctx, layout.LastRead(key))
	if err != nil {
		return time.Time{}
	}
	defer r.Close()
	buf := make([]byte, 32)
	n, _ := r.Read(buf)
	t, _ := layout.ParseLastRead(buf[:n])
	return t
}
