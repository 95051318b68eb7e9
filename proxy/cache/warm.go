package cache

import (
	"context"
	"errors"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/manifest"
)

// Warmed is what warming an image cached: the manifest the reference
// names and, for an index, the children fetched for the platforms.
type Warmed struct {
	Digest   digest.Digest
	Children []digest.Digest
}

// Warm caches an image before any client pulls it: the manifest ref
// names (a tag stored as a pull stores it), for an index its children for
// platforms (all of them when none is given), and their blobs. Nothing
// is counted as a request; the reads are recorded, as a pull's are.
func (c *Cache) Warm(ctx context.Context, repo string, ref manifest.Ref, platforms []v1.Platform) (Warmed, error) {
	ctx = Warming(ctx)
	m, err := c.Manifest(ctx, repo, ref, nil)
	if err != nil {
		return Warmed{}, err
	}
	c.Link(ctx, repo, m) // warmed for repo: served under it with the upstream down
	w := Warmed{Digest: m.Digest}
	if !manifest.IsIndex(m.MediaType) {
		return w, c.prefetchImage(ctx, repo, m.Digest)
	}
	children, err := manifest.Children(m.Body)
	if err != nil {
		return w, err
	}
	var errs []error
	for _, child := range children {
		if len(platforms) > 0 && (child.Platform == nil || !matches(*child.Platform, platforms)) {
			continue
		}
		d, err := digest.Parse(child.Digest)
		if err != nil {
			continue
		}
		w.Children = append(w.Children, d)
		errs = append(errs, c.prefetchImage(ctx, repo, d))
	}
	return w, errors.Join(errs...)
}

func matches(p v1.Platform, want []v1.Platform) bool {
	for _, w := range want {
		if p.Satisfies(w) {
			return true
		}
	}
	return false
}

// Warming marks ctx as warming's: what is fetched under it is not
// counted as a client's request, as in Warm. For a caller that reads the
// manifest itself before warming (to check its signatures).
func Warming(ctx context.Context) context.Context { return context.WithValue(ctx, warmingKey{}, true) }
