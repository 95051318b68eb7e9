package cleanup

import (
	"context"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
)

// budgetTarget is where eviction stops, as a share of the budget: a
// little room, so that the next pulls do not start another pass at once.
const budgetTarget = 0.9

// maxEvictedNames bounds the names the summary lists.
const maxEvictedNames = 20

// image is what eviction takes or leaves whole: a manifest no stored
// index lists, with its children, their blobs and the tags pointing at
// them; or a blob no manifest names.
type image struct {
	name      string // a tag of it, or its digest, for people
	manifests []digest.Digest
	blobs     []digest.Digest
	tags      []string
	pulled    time.Time // the last read of any of its manifests or tags
	keep      bool      // pinned, or written within the grace period
}

// stored is one object found by the inventory.
type stored struct {
	size int64
	mod  time.Time
}

// inventory is what the storage holds, as eviction needs it.
type inventory struct {
	manifests map[digest.Digest]stored
	blobs     map[digest.Digest]stored
	children  map[digest.Digest][]digest.Digest // an index's
	uses      map[digest.Digest][]digest.Digest // an image manifest's blobs
	tags      map[string]digest.Digest          // tag key -> manifest
}

// budget evicts whole images, least recently pulled first and never a
// pinned one, until what is stored is under budgetTarget of MaxSize; a
// blob goes only with the last image that uses it.
func (r *run) budget(ctx context.Context) error {
	inv, err := r.inventory(ctx)
	if err != nil {
		return err
	}
	var used int64
	for _, o := range inv.manifests {
		used += o.size
	}
	for _, o := range inv.blobs {
		used += o.size
	}
	r.sum.MaxSize = r.opts.MaxSize
	images := r.images(ctx, inv)
	defer func() { r.sum.StoredBytes = used }()
	if used <= r.opts.MaxSize {
		return nil
	}
	// How many kept images use each manifest and blob: an object shared
	// with an image that stays, stays.
	manifestUsers, blobUsers := map[digest.Digest]int{}, map[digest.Digest]int{}
	for _, im := range images {
		for _, d := range im.manifests {
			manifestUsers[d]++
		}
		for _, d := range im.blobs {
			blobUsers[d]++
		}
	}
	sort.SliceStable(images, func(i, j int) bool { return images[i].pulled.Before(images[j].pulled) })
	target := int64(float64(r.opts.MaxSize) * budgetTarget)
	for _, im := range images {
		if used <= target {
			break
		}
		if im.keep {
			continue
		}
		for _, key := range im.tags {
			r.sum.DeletedTags++
			if err := r.delete(ctx, key, 0); err != nil {
				return err
			}
		}
		for _, d := range im.manifests {
			if manifestUsers[d]--; manifestUsers[d] > 0 {
				continue
			}
			r.sum.DeletedManifests++
			used -= inv.manifests[d].size
			if err := r.delete(ctx, layout.Manifest(d), inv.manifests[d].size); err != nil {
				return err
			}
		}
		for _, d := range im.blobs {
			if blobUsers[d]--; blobUsers[d] > 0 {
				continue
			}
			r.sum.DeletedBlobs++
			used -= inv.blobs[d].size
			if err := r.delete(ctx, layout.Blob(d), inv.blobs[d].size); err != nil {
				return err
			}
			if !r.opts.DryRun {
				if err := r.store.Delete(ctx, layout.Origin(d)); err != nil {
					return err
				}
			}
		}
		r.sum.EvictedImages++
		if r.sum.Evicted = append(r.sum.Evicted, im.name); len(r.sum.Evicted) > maxEvictedNames {
			r.sum.Evicted = r.sum.Evicted[1:]
		}
	}
	// What is left over the budget is pinned (or being written): no
	// eviction can help; the status says the budget is too small.
	r.sum.OverBudget = used > r.opts.MaxSize
	return nil
}

// inventory lists manifests, blobs and tags, and reads every manifest
// for what it references.
func (r *run) inventory(ctx context.Context) (*inventory, error) {
	inv := &inventory{manifests: map[digest.Digest]stored{}, blobs: map[digest.Digest]stored{},
		children: map[digest.Digest][]digest.Digest{}, uses: map[digest.Digest][]digest.Digest{}, tags: map[string]digest.Digest{}}
	err := r.store.List(ctx, layout.ManifestsPrefix, func(key string, info storage.Info) error {
		if d, ok := layout.ParseDigest(key); ok {
			inv.manifests[d] = stored{info.Size, info.ModTime}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for d := range inv.manifests {
		body, mediaType, err := layout.ReadManifest(ctx, r.store, d)
		if err != nil {
			continue
		}
		if manifest.IsIndex(mediaType) {
			children, _ := manifest.Children(body)
			for _, c := range children {
				if cd, err := digest.Parse(c.Digest); err == nil {
					inv.children[d] = append(inv.children[d], cd)
				}
			}
			continue
		}
		refs, _ := manifest.References(body)
		for _, ref := range refs {
			if bd, err := digest.Parse(ref); err == nil {
				inv.uses[d] = append(inv.uses[d], bd)
			}
		}
	}
	err = r.store.List(ctx, layout.BlobsPrefix, func(key string, info storage.Info) error {
		if d, ok := layout.ParseDigest(key); ok {
			inv.blobs[d] = stored{info.Size, info.ModTime}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = r.store.List(ctx, layout.RegistriesPrefix, func(key string, info storage.Info) error {
		if _, _, _, ok := layout.ParseTag(key); !ok {
			return nil
		}
		if d, err := layout.ReadDigest(ctx, r.store, key); err == nil {
			inv.tags[key] = d
		}
		return nil
	})
	return inv, err
}

// images groups the inventory into what is evicted whole.
func (r *run) images(ctx context.Context, inv *inventory) []*image {
	listed := map[digest.Digest]bool{} // children of a stored index
	for idx, children := range inv.children {
		if _, ok := inv.manifests[idx]; ok {
			for _, c := range children {
				listed[c] = true
			}
		}
	}
	graceFrom := r.start.Add(-r.opts.Grace)
	var images []*image
	imageOf := map[digest.Digest]*image{}
	used := map[digest.Digest]bool{} // blobs some manifest names
	for d := range inv.manifests {
		if listed[d] {
			continue
		}
		im := &image{name: d.String()}
		for _, m := range append([]digest.Digest{d}, inv.children[d]...) {
			mo, ok := inv.manifests[m]
			if !ok {
				continue
			}
			im.manifests = append(im.manifests, m)
			imageOf[m] = im
			im.keep = im.keep || r.pinnedManifests[m] || mo.mod.After(graceFrom)
			im.pulled = latest(im.pulled, r.lastRead(ctx, layout.Manifest(m), mo.mod))
			for _, b := range inv.uses[m] {
				if bo, ok := inv.blobs[b]; ok {
					im.blobs = append(im.blobs, b)
					used[b] = true
					im.keep = im.keep || bo.mod.After(graceFrom)
				}
			}
		}
		images = append(images, im)
	}
	for key, d := range inv.tags {
		im := imageOf[d]
		if im == nil {
			continue // a tag of a manifest not stored: the TTL cleanup's
		}
		if len(im.tags) == 0 {
			if registry, repo, tag, ok := layout.ParseTag(key); ok {
				im.name = registry + "/" + repo + ":" + tag
			}
		}
		im.tags = append(im.tags, key)
		im.keep = im.keep || r.pinnedTags[key]
		im.pulled = latest(im.pulled, r.lastRead(ctx, key, time.Time{}))
	}
	for d, o := range inv.blobs {
		if used[d] {
			continue
		}
		images = append(images, &image{name: d.String(), blobs: []digest.Digest{d}, keep: o.mod.After(graceFrom),
			pulled: r.lastRead(ctx, layout.Blob(d), o.mod)})
	}
	return images
}

// lastRead is when key was last pulled: its marker, or else written.
func (r *run) lastRead(ctx context.Context, key string, written time.Time) time.Time {
	if raw, err := storage.ReadAll(ctx, r.store, layout.LastRead(key), 64); err == nil {
		if t, ok := layout.ParseLastRead(raw); ok {
			return t
		}
	}
	return written
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
