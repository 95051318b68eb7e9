// Package summary reports what a cache holds, for the operator's status:
// counts and bytes of everything stored, and the most recently cached
// tags with their platform images. It reads storage through layout, as
// cleanup does, and never the upstream.
package summary

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/storage"
)

// maxImages bounds how many tags a summary lists; counts and bytes cover
// everything.
const maxImages = 50

// Live adds to a summary what is not in storage but in the running
// proxy, fresh on every request: request counts, throttled upstreams.
type Live func(*report.Summary)

// Scanner makes summaries. The first lists all of storage; later ones
// read only the journal written since, so that a summary costs what
// changed, not what is stored. A full scan runs again every fullEvery,
// after a cleanup run, and whenever the journal may have gaps.
type Scanner struct {
	store storage.Storage
	live  Live
	// hidden: a repository the access rules refuse, left out of what
	// the summary and the catalog show.
	hidden func(registry, repo string) bool
	log    logr.Logger
	now    func() time.Time

	mu      sync.Mutex
	pending journalEntry // recorded, not yet written
	dirty   bool         // recorded since the last summary
	// flushing keeps flushes in order.
	flushing sync.Mutex

	// reading: one summary is made at a time; the others wait for it.
	reading sync.Mutex
	state   *state

	// catalog is the tag space the cache browser last listed.
	catalog tagList
}

// state is a scanner's running summary.
type state struct {
	sum    report.Summary       // Images: the newest tags, described
	fullAt time.Time            // when the last full scan started
	after  time.Time            // journal objects from before this are in sum
	seen   map[string]time.Time // journal objects within overlap of after, already applied
	rescan bool
	// Stats of the last summary: what it cost.
	stats Stats
}

// Stats are what making a summary cost.
type Stats struct {
	Full           bool
	ObjectsListed  int64
	JournalObjects int64
	Duration       time.Duration
}

// fullEvery bounds drift: a full scan puts right what a lost journal
// object or a crash left out.
const fullEvery = 6 * time.Hour

// New returns a scanner of store; live may be nil.
func New(store storage.Storage, live Live) *Scanner {
	if live == nil {
		live = func(*report.Summary) {}
	}
	return &Scanner{store: store, live: live, log: logr.Discard(), now: time.Now}
}

// SetLive sets what a summary takes from the running proxy; call it
// before the first summary.
func (s *Scanner) SetLive(live Live) { s.live = live }

// SetHidden leaves the repositories hidden says are refused out of the
// summary's images and the catalog: what the rules refuse is not shown
// either, though it may still be stored.
func (s *Scanner) SetHidden(hidden func(registry, repo string) bool) { s.hidden = hidden }

// shown: not hidden.
func (s *Scanner) shown(registry, repo string) bool {
	return s.hidden == nil || !s.hidden(registry, repo)
}

// WithLogger sets the logger.
func (s *Scanner) WithLogger(l logr.Logger) *Scanner { s.log = l; return s }

// Summary returns the summary, no older than maxAge: what this replica
// recorded is written out, and the journal read since the last one.
func (s *Scanner) Summary(ctx context.Context, maxAge time.Duration) (*report.Summary, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
	defer cancel()
	s.reading.Lock()
	defer s.reading.Unlock()
	s.mu.Lock()
	changed := s.dirty
	s.dirty = false
	s.mu.Unlock()
	if st := s.state; st != nil && !changed && s.now().Sub(st.sum.ScannedAt) < maxAge {
		return s.withLive(st.sum), nil
	}
	if err := s.flush(ctx); err != nil {
		s.log.Error(err, "summary journal lost")
	}
	start := s.now()
	st := s.state
	var err error
	if st == nil || st.rescan || start.Sub(st.fullAt) > fullEvery || start.Sub(st.after) > keepJournal-overlap {
		st, err = s.scan(ctx)
	} else {
		err = s.catchUp(ctx, st)
	}
	if err != nil {
		return nil, err
	}
	st.stats.Duration = s.now().Sub(start)
	st.sum.ScannedAt = s.now()
	s.state = st
	return s.withLive(st.sum), nil
}

// LastStats is what the last summary cost.
func (s *Scanner) LastStats() Stats {
	s.reading.Lock()
	defer s.reading.Unlock()
	if s.state == nil {
		return Stats{}
	}
	return s.state.stats
}

func (s *Scanner) withLive(sum report.Summary) *report.Summary {
	sum.Images = slices.DeleteFunc(slices.Clone(sum.Images), func(img report.SummaryImage) bool {
		return !s.shown(img.Registry, img.Repository)
	})
	if len(sum.Images) > maxImages {
		sum.Images = sum.Images[:maxImages]
	}
	s.live(&sum)
	return &sum
}

// scan lists storage once, page by page, keeping only counters and the
// newest tags: its memory does not grow with the cache. Journal objects
// it meets count as read (what they say is in what it lists), and those
// older than keepJournal are deleted.
func (s *Scanner) scan(ctx context.Context) (*state, error) {
	start := s.now()
	st := &state{fullAt: start, after: start.Add(-overlap), seen: map[string]time.Time{}, stats: Stats{Full: true}}
	var newest []report.SummaryImage
	var old []string
	err := s.store.List(ctx, "", func(key string, info storage.Info) error {
		st.stats.ObjectsListed++
		if at, ok := journalTime(key); ok {
			if start.Sub(at) > keepJournal {
				old = append(old, key)
			} else if !at.Before(st.after) {
				st.seen[key] = at
			}
			return nil
		}
		if strings.HasPrefix(key, layout.BlobsPrefix) || strings.HasPrefix(key, layout.ManifestsPrefix) {
			st.sum.Bytes += info.Size
			return nil
		}
		registry, repo, tag, ok := layout.ParseTag(key)
		if !ok {
			return nil
		}
		st.sum.ImageCount++
		newest = append(newest, report.SummaryImage{Registry: registry, Repository: repo, Tag: tag, CachedAt: info.ModTime})
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
			st.sum.Images = append(st.sum.Images, img)
		}
	}
	for _, key := range old {
		if err := s.store.Delete(ctx, key); err != nil {
			s.log.Error(err, "deleting an old summary journal object", "key", key)
			break
		}
	}
	return st, nil
}

// catchUp applies the journal objects written since the last summary.
func (s *Scanner) catchUp(ctx context.Context, st *state) error {
	st.stats = Stats{}
	from := journalPosition(st.after)
	var keys []string
	err := storage.ListAfter(ctx, s.store, layout.JournalPrefix, from, func(key string, _ storage.Info) error {
		st.stats.ObjectsListed++
		if _, done := st.seen[key]; !done {
			keys = append(keys, key)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(keys)
	var moved []report.SummaryImage
	for _, key := range keys {
		at, ok := journalTime(key)
		if !ok {
			continue
		}
		e, err := s.readJournal(ctx, key)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		st.stats.JournalObjects++
		st.seen[key] = at
		if e.Rescan {
			st.rescan = true
		}
		for _, c := range e.Changes {
			st.sum.Bytes += c.Bytes
			st.sum.ImageCount += c.Images
			if c.Tag != nil {
				moved = append(moved, *c.Tag)
			}
		}
	}
	// Journal objects may land late, by up to overlap: look that far back
	// next time, and forget what is older.
	newest := st.after
	for _, at := range st.seen {
		if at.After(newest) {
			newest = at
		}
	}
	st.after = newest.Add(-overlap)
	for key, at := range st.seen {
		if at.Before(st.after) {
			delete(st.seen, key)
		}
	}
	if st.rescan {
		fresh, err := s.scan(ctx)
		if err != nil {
			return err
		}
		*st = *fresh
		return nil
	}
	for _, img := range moved {
		if s.describe(ctx, &img) {
			st.sum.Images = slices.DeleteFunc(st.sum.Images, func(x report.SummaryImage) bool {
				return x.Registry == img.Registry && x.Repository == img.Repository && x.Tag == img.Tag
			})
			st.sum.Images = append(st.sum.Images, img)
		}
	}
	st.sum.Images = keepNewest(st.sum.Images)
	return nil
}

// describe fills in a tag's digest, media type and platforms; false if
// the tag went since it was listed.
func (s *Scanner) describe(ctx context.Context, img *report.SummaryImage) bool {
	d, err := layout.ReadTag(ctx, s.store, img.Registry, img.Repository, img.Tag)
	if err != nil {
		return false
	}
	body, mt, err := layout.ReadManifest(ctx, s.store, d)
	if err != nil {
		return false
	}
	img.Digest, img.MediaType, img.Platforms = d.String(), mt, nil
	if manifest.IsIndex(mt) {
		children, _ := manifest.Children(body)
		for _, ch := range children {
			p := "unknown"
			if ch.Platform != nil {
				p = ch.Platform.String()
			}
			img.Platforms = append(img.Platforms, report.SummaryPlatform{Platform: p, Digest: ch.Digest})
		}
	}
	return true
}

func keepNewest(imgs []report.SummaryImage) []report.SummaryImage {
	sort.Slice(imgs, func(i, j int) bool { return imgs[i].CachedAt.After(imgs[j].CachedAt) })
	if len(imgs) > maxImages {
		imgs = imgs[:maxImages]
	}
	return imgs
}

// Handler serves the summary as JSON at report.SummaryPath.
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
