package cache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/storage"
)

// readGranularity: a marker is rewritten at most this often per object
// and replica; cleanup TTLs are days, so an hour is plenty.
const readGranularity = time.Hour

// maxTrackedReads bounds the memory of what was written; forgetting costs
// one extra marker write per object.
const maxTrackedReads = 200_000

// readTracker records when objects were last read, cheaply: reads are
// noted in memory, and a marker is written only when this replica's last
// one for the object is older than readGranularity, in batches. Replicas
// sharing a bucket each write their own recent time; any of them will do.
type readTracker struct {
	store storage.Storage
	now   func() time.Time
	log   logr.Logger

	mu      sync.Mutex
	written map[string]time.Time // markers this replica wrote, and when
	dirty   map[string]time.Time // reads not yet written
}

func newReadTracker(store storage.Storage, now func() time.Time, log logr.Logger) *readTracker {
	return &readTracker{store: store, now: now, log: log, written: map[string]time.Time{}, dirty: map[string]time.Time{}}
}

// touch notes that key was read now.
func (t *readTracker) touch(keys ...string) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, key := range keys {
		if w, ok := t.written[key]; ok && now.Sub(w) < readGranularity {
			continue
		}
		t.dirty[key] = now
	}
}

// flush writes the pending markers.
func (t *readTracker) flush(ctx context.Context) error {
	t.mu.Lock()
	dirty := t.dirty
	t.dirty = map[string]time.Time{}
	t.mu.Unlock()
	var errs []error
	for key, at := range dirty {
		v := layout.LastReadValue(at)
		if err := t.store.Put(ctx, layout.LastRead(key), strings.NewReader(v), int64(len(v))); err != nil {
			errs = append(errs, err)
			continue
		}
		t.mu.Lock()
		if len(t.written) >= maxTrackedReads {
			t.written = map[string]time.Time{}
		}
		t.written[key] = at
		t.mu.Unlock()
	}
	if len(errs) > 0 {
		// Lost reads only make an object look older: a later read of it
		// writes again. Storage being down is logged where it happens.
		return errors.Join(errs...)
	}
	return nil
}

// TrackReads writes last-read markers every interval until ctx ends,
// then once more: a clean shutdown loses nothing.
func (c *Cache) TrackReads(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			c.FlushReads(ctx)
		case <-ctx.Done():
			flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			c.FlushReads(flushCtx)
			return
		}
	}
}

// FlushReads writes the pending last-read markers now.
func (c *Cache) FlushReads(ctx context.Context) {
	if err := c.reads.flush(ctx); err != nil {
		c.storageFailed(err, "write last-read markers")
	}
}
