package summary

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/storage"
)

// The journal is how a summary keeps up with the cache without listing
// it all: every replica (and every cleanup run) writes what it changed,
// a small object per second at most, under layout.JournalPrefix, named
// by time; every replica's scanner lists only what came since it last
// looked.

// Change is what one write did to the summary.
type Change struct {
	// Bytes of blobs and manifests stored.
	Bytes int64 `json:"bytes,omitempty"`
	// Images: tags stored new.
	Images int64 `json:"images,omitempty"`
	// Tag stored new, or pointing elsewhere.
	Tag *report.SummaryImage `json:"tag,omitempty"`
}

// journalEntry is one journal object.
type journalEntry struct {
	Changes []Change `json:"changes,omitempty"`
	// Rescan: the storage changed in ways not written down (a cleanup
	// run deleted things); summaries scan it all again.
	Rescan bool `json:"rescan,omitempty"`
}

const (
	// flushEvery bounds how late another replica hears of a change.
	flushEvery = time.Second
	// overlap is how far back a scanner looks again, for journal objects
	// that a replica wrote with a slower clock or that took long to
	// appear.
	overlap = 30 * time.Second
	// keepJournal is how long journal objects stay; a scanner that has
	// not looked for longer scans everything.
	keepJournal = time.Hour
	// maxPending bounds the changes held between flushes; past it, a
	// rescan is asked for instead.
	maxPending = 10_000
)

// journalPosition is where in the journal time t is: names of objects
// written at t or later sort after it.
func journalPosition(t time.Time) string {
	return fmt.Sprintf("%s%020d", layout.JournalPrefix, t.UnixNano())
}

// journalKey names a journal object written at t.
func journalKey(t time.Time) string {
	var r [4]byte
	rand.Read(r[:])
	return journalPosition(t) + "-" + hex.EncodeToString(r[:])
}

// journalTime is when a journal object was written, from its name.
func journalTime(key string) (time.Time, bool) {
	name, ok := strings.CutPrefix(key, layout.JournalPrefix)
	if !ok {
		return time.Time{}, false
	}
	stamp, _, _ := strings.Cut(name, "-")
	n, err := strconv.ParseInt(stamp, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}

// Record notes a change; it reaches the journal with the next flush.
func (s *Scanner) Record(c Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dirty = true
	if len(s.pending.Changes) >= maxPending {
		s.pending.Changes, s.pending.Rescan = nil, true
		return
	}
	if !s.pending.Rescan {
		s.pending.Changes = append(s.pending.Changes, c)
	}
}

// flush writes what was recorded since the last flush as one journal
// object.
func (s *Scanner) flush(ctx context.Context) error {
	s.flushing.Lock()
	defer s.flushing.Unlock()
	s.mu.Lock()
	e := s.pending
	s.pending = journalEntry{}
	s.mu.Unlock()
	if len(e.Changes) == 0 && !e.Rescan {
		return nil
	}
	if err := writeJournal(ctx, s.store, e, s.now()); err != nil {
		// Lost: the next full scan corrects the summaries.
		return fmt.Errorf("writing the summary journal: %w", err)
	}
	return nil
}

func writeJournal(ctx context.Context, store storage.Storage, e journalEntry, now time.Time) error {
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return store.Put(ctx, journalKey(now), bytes.NewReader(raw), int64(len(raw)))
}

// Journal writes recorded changes every second until ctx ends, then
// once more.
func (s *Scanner) Journal(ctx context.Context) {
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			flushCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := s.flush(flushCtx); err != nil {
				s.log.Error(err, "summary journal lost")
			}
			return
		case <-tick.C:
			if err := s.flush(ctx); err != nil {
				s.log.Error(err, "summary journal lost")
			}
		}
	}
}

// readJournal reads one journal object.
func (s *Scanner) readJournal(ctx context.Context, key string) (journalEntry, error) {
	var e journalEntry
	r, _, err := s.store.Open(ctx, key)
	if err != nil {
		return e, err
	}
	defer r.Close()
	err = json.NewDecoder(io.LimitReader(r, 16<<20)).Decode(&e)
	return e, err
}

// AskRescan writes a journal object that makes every summary scan the
// whole storage again: for writers that change it in bulk (a cleanup
// run).
func AskRescan(ctx context.Context, store storage.Storage) error {
	return writeJournal(ctx, store, journalEntry{Rescan: true}, time.Now())
}
