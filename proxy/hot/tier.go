// Package hot keeps the blobs a replica fetched or served recently on its
// own disk, in front of the S3 bucket every replica shares: served from
// there with sendfile, least recently read out first, S3 staying the
// truth.
//
// Copies are named by their digest, so a copy is never stale, only
// damaged. A copy is trusted once this process has checked its digest and
// the file has not changed since (same size, same change time, which no
// one can set back): serving a trusted copy costs no hashing, where
// hashing every read would halve the speed the tier is for. Copies found
// at start are checked on their first read.
//
// A copy open for reading is not evicted until its last reader is done: a
// removed file that is still open keeps its blocks on the disk, so
// evicting it would free nothing until then, and the tier would hold more
// than its size on the disk while it counted less.
package hot

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"
)

// blobsDir holds the copies, as blobs/<algorithm>/<hex>; the rest of the
// tier's directory is free for the spool, so that keeping a download is a
// link, not a copy.
const blobsDir = "blobs"

// touchEvery is how often a copy's modification time is moved to its
// last read: after a restart, that time is the order copies go out in.
const touchEvery = time.Minute

// Tier is one replica's hot blobs.
type Tier struct {
	dir     string
	max     int64
	log     logr.Logger
	metrics *Metrics
	now     func() time.Time
	// free reports the bytes free on the tier's filesystem and the
	// floor it must not go under.
	free func() (free, floor int64, err error)

	mu      sync.Mutex
	entries map[digest.Digest]*list.Element
	lru     *list.List // of *entry, most recently read at the front
	used    int64
	// reading is the bytes of the indexed copies open for reading,
	// which no eviction can free.
	reading int64
}

type entry struct {
	digest digest.Digest
	size   int64
	// changed is the file's change time when it was last checked or
	// touched; verified, whether this process has checked its digest.
	changed  time.Time
	verified bool
	read     time.Time
	// readers is how many Gets of this copy are not done yet.
	readers int
}

// Option configures a Tier.
type Option func(*Tier)

// WithLogger sets the logger.
func WithLogger(l logr.Logger) Option { return func(t *Tier) { t.log = l } }

// WithMetrics counts into m.
func WithMetrics(m *Metrics) Option { return func(t *Tier) { t.metrics = m } }

// Open indexes the copies already in dir (a restart keeps what was hot),
// trusting only their names and sizes until each is first read, and keeps
// at most maxBytes there from now on.
func Open(dir string, maxBytes int64, opts ...Option) (*Tier, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("hot tier: a size is needed, got %d bytes", maxBytes)
	}
	t := &Tier{dir: dir, max: maxBytes, log: logr.Discard(), now: time.Now,
		entries: map[digest.Digest]*list.Element{}, lru: list.New()}
	for _, o := range opts {
		o(t)
	}
	if t.metrics == nil {
		t.metrics = NewMetrics(nil)
	}
	t.free = func() (int64, int64, error) { return freeSpace(t.dir) }
	if err := os.MkdirAll(filepath.Join(dir, blobsDir), 0o755); err != nil {
		return nil, fmt.Errorf("hot tier: %w", err)
	}
	if err := t.reindex(); err != nil {
		return nil, fmt.Errorf("hot tier %s: %w", dir, err)
	}
	t.metrics.limit.Set(float64(maxBytes))
	t.metrics.size.Set(float64(t.used))
	return t, nil
}

// Dir is the tier's directory: a spool under it is on the same
// filesystem, so that a verified download becomes a hot copy by a move.
func (t *Tier) Dir() string { return t.dir }

// Bytes is what the tier holds.
func (t *Tier) Bytes() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.used
}

// reindex takes in the copies on disk, oldest read last in line, and
// removes what is not a copy (a write cut by a crash).
func (t *Tier) reindex() error {
	var found []*entry
	root := filepath.Join(t.dir, blobsDir)
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		d := digest.Digest(strings.Replace(filepath.ToSlash(rel), "/", ":", 1))
		info, ierr := de.Info()
		if d.Validate() != nil || ierr != nil || !info.Mode().IsRegular() {
			os.Remove(p)
			return nil
		}
		found = append(found, &entry{digest: d, size: info.Size(), changed: changeTime(info), read: info.ModTime()})
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(found, func(i, j int) bool { return found[i].read.After(found[j].read) })
	for _, e := range found {
		t.entries[e.digest] = t.lru.PushBack(e)
		t.used += e.size
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.evictLocked(0)
	return nil
}

func (t *Tier) path(d digest.Digest) string {
	return filepath.Join(t.dir, blobsDir, d.Algorithm().String(), d.Encoded())
}

// Get opens the hot copy of d, checked, or says there is none. A copy that
// fails its digest is dropped: the caller reads the blob from S3 instead.
// done closes f and ends the read (calling it again does nothing): the
// copy is not evicted until every reader of it is done.
func (t *Tier) Get(d digest.Digest) (f *os.File, info fs.FileInfo, done func(), ok bool) {
	f, info, done, err := t.get(d)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			t.log.Info("hot copy unusable, read from storage instead", "digest", d, "error", err.Error())
		}
		t.metrics.misses.Inc()
		return nil, nil, nil, false
	}
	t.metrics.hits.Inc()
	t.metrics.hitBytes.Add(float64(info.Size()))
	return f, info, done, true
}

// Size is d's size when it is hot, from the index alone: a HEAD needs no
// more.
func (t *Tier) Size(d digest.Digest) (int64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if el := t.entries[d]; el != nil {
		return el.Value.(*entry).size, true
	}
	return 0, false
}

func (t *Tier) get(d digest.Digest) (*os.File, fs.FileInfo, func(), error) {
	t.mu.Lock()
	el := t.entries[d]
	if el == nil {
		t.mu.Unlock()
		return nil, nil, nil, fs.ErrNotExist
	}
	t.lru.MoveToFront(el)
	// The read starts before the file is opened: an eviction meanwhile
	// would leave nothing to open.
	t.startReadLocked(el)
	e := *el.Value.(*entry)
	t.mu.Unlock()

	f, err := os.Open(t.path(d))
	if err != nil {
		t.endRead(el)
		t.drop(el)
		return nil, nil, nil, err
	}
	info, err := f.Stat()
	if err == nil && (!e.verified || info.Size() != e.size || !changeTime(info).Equal(e.changed)) {
		err = verify(f, d, e.size)
		if err != nil {
			t.metrics.damaged.Inc()
		}
	}
	if err != nil {
		f.Close()
		t.endRead(el)
		t.drop(el)
		return nil, nil, nil, err
	}
	now := t.now()
	if now.Sub(e.read) >= touchEvery {
		// Touching changes the change time: read it back, so that
		// the touch is not taken for damage.
		os.Chtimes(f.Name(), now, now)
		e.read = now
	}
	if info, err = f.Stat(); err != nil {
		f.Close()
		t.endRead(el)
		t.drop(el)
		return nil, nil, nil, err
	}
	t.mu.Lock()
	if t.entries[d] == el {
		cur := el.Value.(*entry)
		cur.verified, cur.changed, cur.read = true, changeTime(info), e.read
	}
	t.mu.Unlock()
	var once sync.Once
	return f, info, func() {
		once.Do(func() {
			f.Close()
			t.endRead(el)
		})
	}, nil
}

// startReadLocked counts a reader of el's copy.
func (t *Tier) startReadLocked(el *list.Element) {
	e := el.Value.(*entry)
	if e.readers++; e.readers == 1 {
		t.setReadingLocked(t.reading + e.size)
	}
}

// endRead counts one reader of el's copy done. A copy dropped meanwhile
// (damaged) no longer counts as read.
func (t *Tier) endRead(el *list.Element) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := el.Value.(*entry)
	if e.readers--; e.readers == 0 && t.entries[e.digest] == el {
		t.setReadingLocked(t.reading - e.size)
	}
}

func (t *Tier) setReadingLocked(n int64) {
	t.reading = n
	t.metrics.reading.Set(float64(n))
}

// verify reads f whole and checks it is d, size bytes long; f is left at
// its start.
func verify(f *os.File, d digest.Digest, size int64) error {
	v := d.Verifier()
	n, err := io.Copy(v, f)
	if err != nil {
		return err
	}
	if n != size || !v.Verified() {
		return fmt.Errorf("%w: the hot copy of %s is damaged (%d bytes)", ErrDamaged, d, n)
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// ErrDamaged is a hot copy whose bytes are not its digest's.
var ErrDamaged = errors.New("hot copy damaged")

// drop forgets a copy and removes its file, read or not (it is damaged,
// or gone); a reader that has it open keeps reading it.
func (t *Tier) drop(el *list.Element) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := el.Value.(*entry)
	if t.entries[e.digest] != el {
		return
	}
	t.removeLocked(el)
}

func (t *Tier) removeLocked(el *list.Element) {
	e := el.Value.(*entry)
	if e.readers > 0 {
		t.setReadingLocked(t.reading - e.size)
	}
	delete(t.entries, e.digest)
	t.lru.Remove(el)
	t.used -= e.size
	os.Remove(t.path(e.digest))
	t.metrics.size.Set(float64(t.used))
}

// Room makes room for a blob of size bytes, evicting the least recently
// read, and says whether it fits: within the tier's size, and leaving the
// disk's free-space floor. A blob that does not fit is served from S3.
//
// Copies open for reading are not evicted, and a blob that fits only in
// their room does not fit: it is served from S3 (or, on a node, from the
// cache) and not kept while the read goes on. The other way, keeping it
// and evicting the read copy once its reader is done, would hold both on
// the disk at once: with a 100 GB blob being served, the next one would
// overrun the disk the size was chosen for, or its free-space floor, for
// as long as the first one's read takes.
func (t *Tier) Room(size int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if size < 0 || size > t.max-t.reading {
		return false // evicting the rest would be in vain
	}
	return t.evictLocked(size)
}

// evictLocked evicts until need more bytes fit under the size and the
// floor; false when they cannot.
func (t *Tier) evictLocked(need int64) bool {
	for t.used+need > t.max {
		if !t.evictOldestLocked() {
			return false
		}
	}
	for {
		free, floor, err := t.free()
		if err != nil {
			return false
		}
		if free-need >= floor {
			return true
		}
		if !t.evictOldestLocked() {
			return false
		}
	}
}

// evictOldestLocked evicts the least recently read copy that nobody is
// reading; false when there is none.
func (t *Tier) evictOldestLocked() bool {
	for el := t.lru.Back(); el != nil; el = el.Prev() {
		if el.Value.(*entry).readers == 0 {
			t.removeLocked(el)
			t.metrics.evictions.Inc()
			return true
		}
	}
	return false
}

// Keep makes the verified file at path (a finished download) the hot copy
// of d: moved into the tier when it is on the tier's filesystem, copied
// when not (the caller then removes path). Moved, not linked: removing the
// spool's name later would change the copy's change time, which is taken
// for damage, and the first hot read would hash the whole blob again.
// It reports whether the tier holds d now.
func (t *Tier) Keep(d digest.Digest, path string, size int64) bool {
	t.mu.Lock()
	_, have := t.entries[d]
	fits := !have && size >= 0 && size <= t.max-t.reading && t.evictLocked(0)
	t.mu.Unlock()
	if !fits {
		return have
	}
	dst := t.path(d)
	err := os.MkdirAll(filepath.Dir(dst), 0o755)
	var placed fs.FileInfo
	if err == nil {
		placed, err = place(path, dst)
	}
	if err != nil {
		t.log.Info("cannot keep a hot copy; it is served from storage", "digest", d, "error", err.Error())
		return false
	}
	// What is at dst now must be the file placed: anything else (put
	// there since, by whoever can write the directory) is not indexed
	// as checked.
	info, err := os.Stat(dst)
	if err != nil || !os.SameFile(info, placed) || info.Size() != size {
		os.Remove(dst)
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, have := t.entries[d]; have {
		return true
	}
	t.entries[d] = t.lru.PushFront(&entry{digest: d, size: size, changed: changeTime(info), verified: true, read: info.ModTime()})
	t.used += size
	t.evictLocked(0)
	t.metrics.size.Set(float64(t.used))
	return true
}

// place puts src at dst atomically, replacing whatever is there (a file
// at a copy's name is not taken for the copy: only bytes this process
// checked are): src itself, moved, or a copy where src is on another
// filesystem, made under a temporary name and renamed over dst. It
// returns what it placed.
func place(src, dst string) (fs.FileInfo, error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".tmp-")
	if err != nil {
		return nil, err
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName) // gone by the rename, unless it failed
	err = os.Rename(src, tmpName)
	if errors.Is(err, syscall.EXDEV) {
		// A copy cannot replace a file: free the temporary name for it.
		if err := os.Remove(tmpName); err != nil {
			return nil, err
		}
		err = copyFile(src, tmpName)
	}
	if err != nil {
		return nil, err
	}
	info, err := os.Stat(tmpName)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmpName, dst); err != nil {
		return nil, err
	}
	return info, nil
}

// copyFile copies src to a new file dst.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
