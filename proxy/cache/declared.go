package cache

import (
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/manifest"
)

// maxDeclared bounds how many blob sizes are remembered: about 100 bytes
// each, a few MiB in all, enough for every layer of thousands of images.
const maxDeclared = 1 << 16

// declared remembers the size the cache's own manifests give each blob
// they name (config and layers), so that a download is cut there: an
// upstream that sends more than the manifest says is not read on to the
// blob size limit. The oldest are forgotten first; a forgotten size
// leaves the upstream's Content-Length, or the limit, to bound it.
type declared struct {
	mu    sync.Mutex
	sizes map[digest.Digest]int64
	order []digest.Digest // ring of insertion order
	next  int
}

func newDeclared() *declared { return &declared{sizes: map[digest.Digest]int64{}} }

// learn records the blob sizes of an image manifest; an index names no
// blobs and is passed over.
func (d *declared) learn(m *Manifest) {
	if manifest.IsIndex(m.MediaType) {
		return
	}
	blobs, err := manifest.Blobs(m.Body)
	if err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range blobs {
		dg, err := digest.Parse(b.Digest.String())
		if err != nil || b.Size < 0 {
			continue
		}
		if _, ok := d.sizes[dg]; !ok {
			if len(d.order) < maxDeclared {
				d.order = append(d.order, dg)
			} else {
				delete(d.sizes, d.order[d.next])
				d.order[d.next] = dg
				d.next = (d.next + 1) % maxDeclared
			}
		}
		d.sizes[dg] = b.Size
	}
}

// size is the size a cached manifest gives blob dg, if one does.
func (d *declared) size(dg digest.Digest) (int64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.sizes[dg]
	return s, ok
}
