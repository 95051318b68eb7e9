package localmirror

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

const (
	// maxTags bounds the tags the node remembers: the oldest seen go
	// first.
	maxTags = 10000
	// maxNames bounds the repositories one digest is remembered under.
	maxNames = 64
	// maxDigests: past it, the digests the store no longer holds are
	// forgotten.
	maxDigests = 50000
)

// book is what the node remembers beside the bytes, on its disk, so that
// a restarted agent serves with the cache down too: the digest each tag
// had when the cache last answered for it, and the repositories each
// digest was pulled under. A digest is served from the store only under
// those: under another name the cache is asked first, as its access
// rules bind content to repositories.
type book struct {
	path string
	held func(digest.Digest) bool // whether the store holds a digest

	mu     sync.Mutex
	Tags   map[string]tagEntry       `json:"tags"`
	Names  map[digest.Digest]nameSet `json:"names"`
	saving *time.Timer               // a save is due: several pulls, one write
}

type tagEntry struct {
	Digest digest.Digest `json:"digest"`
	Seen   time.Time     `json:"seen"`
}

// nameSet is the repositories a digest was pulled under, and when last.
type nameSet map[string]time.Time

// repoKey names a repository as the runtime asked for it: the registry
// it named (?ns=, empty when it asked the cache's own name) and the
// repository.
func repoKey(ns, name string) string { return ns + "/" + name }

func openBook(path string, held func(digest.Digest) bool) (*book, error) {
	b := &book{path: path, held: held}
	raw, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("%s: %w", path, err)
	default:
		// A file cut by a crash is forgotten: the names are learnt again.
		_ = json.Unmarshal(raw, b)
	}
	if b.Tags == nil {
		b.Tags = map[string]tagEntry{}
	}
	if b.Names == nil {
		b.Names = map[digest.Digest]nameSet{}
	}
	for k, e := range b.Tags {
		if e.Digest.Validate() != nil {
			delete(b.Tags, k)
		}
	}
	b.forgetLocked() // what the store evicted while the agent was away
	return b, nil
}

// tag is the digest repo's tag had when the cache last answered.
func (b *book) tag(repo, tag string) (digest.Digest, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.Tags[repo+":"+tag]
	return e.Digest, ok
}

// named reports whether d was pulled under repo.
func (b *book) named(d digest.Digest, repo string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.Names[d][repo]
	return ok
}

// learn records that the cache served d under repo (as tag, when set),
// and saves the book when that is news.
func (b *book) learn(repo, tag string, d digest.Digest) {
	b.mu.Lock()
	defer b.mu.Unlock()
	names := b.Names[d]
	if names == nil {
		names = nameSet{}
		b.Names[d] = names
	}
	if last, ok := names[repo]; !ok || time.Since(last) > time.Hour {
		if !ok && len(names) >= maxNames {
			// The repository this digest was pulled under the longest
			// ago makes room.
			oldest := ""
			for n, at := range names {
				if oldest == "" || at.Before(names[oldest]) {
					oldest = n
				}
			}
			delete(names, oldest)
		}
		names[repo] = time.Now()
		b.saveSoonLocked()
		if len(b.Names) > maxDigests {
			b.forgetLocked()
		}
	}
	if tag != "" {
		key := repo + ":" + tag
		if old, had := b.Tags[key]; !had || old.Digest != d || time.Since(old.Seen) > time.Hour {
			b.Tags[key] = tagEntry{Digest: d, Seen: time.Now()}
			b.saveSoonLocked()
		}
		for len(b.Tags) > maxTags {
			oldest := ""
			for k, e := range b.Tags {
				if oldest == "" || e.Seen.Before(b.Tags[oldest].Seen) {
					oldest = k
				}
			}
			delete(b.Tags, oldest)
		}
	}
}

// forgetLocked drops what the store no longer holds, so that the book
// stays as small as the store.
func (b *book) forgetLocked() {
	for d := range b.Names {
		if !b.held(d) {
			delete(b.Names, d)
			b.saveSoonLocked()
		}
	}
	for k, e := range b.Tags {
		if !b.held(e.Digest) {
			delete(b.Tags, k)
			b.saveSoonLocked()
		}
	}
}

// saveDelay gathers the news of one image's pull into one write.
const saveDelay = time.Second

func (b *book) saveSoonLocked() {
	if b.saving == nil {
		b.saving = time.AfterFunc(saveDelay, b.save)
	}
}

// save writes the book (atomically: a crash leaves the old one).
func (b *book) save() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.saving != nil {
		b.saving.Stop()
		b.saving = nil
	}
	raw, err := json.Marshal(b)
	if err != nil {
		return
	}
	tmp := b.path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err == nil {
		os.Rename(tmp, b.path)
	}
}
