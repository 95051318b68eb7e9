package verify

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
)

// unsigned is an upstream with no signatures at all; it counts what it
// is asked.
type unsigned struct{ asked int }

func (u *unsigned) Manifest(context.Context, string, manifest.Ref) ([]byte, error) {
	u.asked++
	return nil, ErrNotFound
}

func (u *unsigned) Blob(context.Context, string, digest.Digest, int64) ([]byte, error) {
	u.asked++
	return nil, ErrNotFound
}

func (u *unsigned) Referrers(context.Context, string, digest.Digest) ([]byte, error) {
	u.asked++
	return nil, ErrNotFound
}

// failingStat is a storage that cannot say what it holds.
type failingStat struct{ storage.Storage }

func (failingStat) Stat(context.Context, string) (storage.Info, error) {
	return storage.Info{}, errors.New("storage unreachable")
}

// A pass stored under the policy's hash and rule is taken without
// reading a signature or counting a verification; stored under another
// policy it is not. A refusal is not stored. A storage that fails to
// answer is no pass.
func TestStoredVerdicts(t *testing.T) {
	dir := t.TempDir()
	writeKey(t, filepath.Join(dir, "k.pub"))
	p, err := Parse([]byte("rules: [{images: [nginx], keys: [{file: k.pub}], ignoreTlog: true}]"), dir)
	if err != nil {
		t.Fatal(err)
	}
	passed, other, refusedOne := digest.FromString("passed"), digest.FromString("passed elsewhere"), digest.FromString("unsigned")
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		stored []string // verdict keys there before
		store  func(storage.Storage) storage.Storage
		d      digest.Digest
		want   string // a part of the refusal; "" passes
		asked  bool   // signatures looked for
	}{
		{"stored under this policy", []string{layout.Verified(passed, p.Hash(), 1)}, nil, passed, "", false},
		{"stored under another policy", []string{layout.Verified(other, strings.Repeat("0", 64), 1)}, nil, other, reasonNone, true},
		{"stored under another rule", []string{layout.Verified(other, p.Hash(), 2)}, nil, other, reasonNone, true},
		{"nothing stored", nil, nil, refusedOne, reasonNone, true},
		{"the storage fails", []string{layout.Verified(passed, p.Hash(), 1)}, func(s storage.Storage) storage.Storage { return failingStat{s} }, passed, reasonNone, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var store storage.Storage = storage.NewMemory()
			for _, k := range c.stored {
				if err := store.Put(ctx, k, strings.NewReader("{}"), 2); err != nil {
					t.Fatal(err)
				}
			}
			if c.store != nil {
				store = c.store(store)
			}
			v := New(p, "", prometheus.NewRegistry(), logr.Discard(), WithVerdicts(store))
			src := &unsigned{}
			err := v.Check(ctx, src, []string{"docker.io"}, "library/nginx", c.d, "application/vnd.oci.image.manifest.v1+json", []byte(`{"layers":[]}`))
			var refusal *Refusal
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && (!errors.As(err, &refusal) || !strings.Contains(refusal.Reason, c.want)):
				t.Errorf("Check: %v, want a refusal saying %q", err, c.want)
			}
			if (src.asked > 0) != c.asked {
				t.Errorf("signatures looked for %d times, want them looked for: %v", src.asked, c.asked)
			}
			if n := v.count(verified) + v.count(refused); (n > 0) != c.asked {
				t.Errorf("%d verifications counted; want one only when the signatures were looked for", n)
			}
			var after []string
			store.List(ctx, layout.VerifiedPrefix, func(k string, _ storage.Info) error {
				after = append(after, k)
				return nil
			})
			if len(after) != len(c.stored) {
				t.Errorf("verdicts stored %v, want %v: a refusal is not stored", after, c.stored)
			}
		})
	}
}
