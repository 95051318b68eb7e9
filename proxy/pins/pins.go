// Package pins is what a cache keeps whatever its cleanup says: images
// named in a file, one reference a line (docker.io/library/postgres:16,
// ghcr.io/org/tool@sha256:...), and the set of manifests they resolved to,
// which the cache stores beside what it caches, so that the cleanup job
// and every replica see one set.
package pins

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/storage"
)

// Ref is one pinned image: a tag or a digest of a repository of a
// registry, named as the cache names them (docker.io, library/postgres).
type Ref struct {
	Registry string        `json:"registry"`
	Repo     string        `json:"repository"`
	Tag      string        `json:"tag,omitempty"`
	Digest   digest.Digest `json:"digest,omitempty"`
}

func (r Ref) String() string {
	if r.Digest != "" {
		return r.Registry + "/" + r.Repo + "@" + r.Digest.String()
	}
	return r.Registry + "/" + r.Repo + ":" + r.Tag
}

// ParseRef reads one image reference; a bare name is Docker Hub's, and a
// reference without tag or digest means :latest, as everywhere else.
func ParseRef(s string) (Ref, error) {
	ref, err := name.ParseReference(s)
	if err != nil {
		return Ref{}, err
	}
	r := Ref{Registry: ref.Context().RegistryStr(), Repo: ref.Context().RepositoryStr()}
	if registryname.IsDockerHub(r.Registry) {
		r.Registry = registryname.DockerHub
	}
	switch ref := ref.(type) {
	case name.Digest:
		r.Digest, err = digest.Parse(ref.DigestStr())
	case name.Tag:
		r.Tag = ref.TagStr()
	}
	return r, err
}

// Parse reads a pins file: a reference a line; blank lines and lines
// starting with # are skipped. A line that is not a reference is an error
// naming it, so that a typo is not a pin silently lost.
func Parse(text []byte) ([]Ref, error) {
	var refs []Ref
	var errs []error
	seen := map[Ref]bool{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r, err := ParseRef(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %q is not an image reference: %w", n, line, err))
			continue
		}
		if !seen[r] {
			seen[r] = true
			refs = append(refs, r)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return refs, errors.Join(errs...)
}

// Read reads the pins file at path.
func Read(path string) ([]Ref, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	refs, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return refs, nil
}

// Set is what the pins resolved to: the manifests to keep (an index
// keeps its children, an image its blobs) and the tags to keep, by
// storage key.
type Set struct {
	Manifests []digest.Digest `json:"manifests"`
	Tags      []string        `json:"tags"`
}

// Key is where the set is stored.
const Key = "_pins/set.json"

// Store writes the set, sorted, so that replicas resolving the same file
// to the same digests write the same bytes.
func Store(ctx context.Context, store storage.Storage, s Set) error {
	sort.Slice(s.Manifests, func(i, j int) bool { return s.Manifests[i] < s.Manifests[j] })
	sort.Strings(s.Tags)
	raw, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return store.Put(ctx, Key, bytes.NewReader(raw), int64(len(raw)))
}

// Load reads the stored set; no set is an empty one.
func Load(ctx context.Context, store storage.Storage) (Set, error) {
	raw, err := storage.ReadAll(ctx, store, Key, 64<<20)
	if errors.Is(err, storage.ErrNotFound) {
		return Set{}, nil
	}
	if err != nil {
		return Set{}, err
	}
	var s Set
	if err := json.Unmarshal(raw, &s); err != nil {
		return Set{}, fmt.Errorf("%s: %w", Key, err)
	}
	return s, nil
}
