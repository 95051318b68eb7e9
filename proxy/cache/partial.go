package cache

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/storage"
)

// A large download is spooled in a file named by its digest, beside the
// process's own spool, with a record of how far it was written and
// synced. A download cut by a restart of the proxy (or abandoned, or
// stopped by the upstream going away) then resumes where the record says:
// what is in the file is hashed again, not fetched again, and the rest is
// asked for with a range. A model's 100 GB layer cut at 90% costs the
// last 10%, not all of it again.
const (
	// resumableSize: smaller blobs start again, which costs less than
	// the record and the syncs.
	resumableSize = 32 << 20
	// checkpointEvery is how many bytes a resume may have to fetch
	// again: the file is synced and the record written each time.
	checkpointEvery = 64 << 20
	// partialsKept: a partial download nobody came back for in a day
	// is removed.
	partialsKept = 24 * time.Hour
)

// partial is a resumable download's file, locked by this process while
// it writes it, and its record.
type partial struct {
	file   *os.File
	record string
	digest digest.Digest
	size   int64
	// resumeAt is what an earlier download left, hashed again; drop,
	// set once the download ended with the blob or with bytes that are
	// not it, has close remove the file and the record.
	resumeAt int64
	drop     bool
	// asked is where the writer last asked for a checkpoint; one runs
	// at a time, in the background (syncing), and synced is where the
	// last one got.
	asked   int64
	syncing sync.WaitGroup
	busy    atomic.Bool
	mu      sync.Mutex
	synced  int64
}

type partialRecord struct {
	Digest  digest.Digest `json:"digest"`
	Size    int64         `json:"size"`
	Written int64         `json:"written"`
}

// partialDir is where resumable downloads are, next to the spools:
// beside them, a restart does not remove them, and on their filesystem,
// storing one is a rename.
func partialDir(spoolDir string) string {
	return filepath.Join(filepath.Dir(spoolDir), "partial")
}

// openPartial opens d's resumable download of size bytes (-1: whatever
// an earlier one recorded), locked for this process. With a verifier,
// what an earlier download left of it is hashed into it, to be resumed
// (synced); without, the download starts from its first byte. nil when
// another process is downloading it, or there is nothing to resume and
// no size: the download goes to an ordinary spool file then.
func (c *Cache) openPartial(d digest.Digest, size int64, verifier io.Writer) (*partial, error) {
	dir := partialDir(c.spoolDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ClearPartials(c.spoolDir, time.Now())
	name := filepath.Join(dir, d.Algorithm().String()+"-"+d.Encoded())
	file, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(file.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		file.Close()
		return nil, nil // another process's
	}
	p := &partial{file: file, record: name + ".json", digest: d, size: size}
	if rec, ok := readPartialRecord(p.record); ok && verifier != nil && rec.Digest == d && (size < 0 || rec.Size == size) {
		p.size = rec.Size
		if n, err := io.Copy(verifier, io.NewSectionReader(file, 0, rec.Written)); err == nil && n == rec.Written {
			p.resumeAt = rec.Written
		}
	}
	p.synced, p.asked = p.resumeAt, p.resumeAt
	if p.resumeAt == 0 {
		// Nothing to resume: a verifier that read part of a damaged
		// file is not used.
		os.Remove(p.record)
	}
	if p.size < 0 {
		p.drop = true
		p.close()
		return nil, nil // nothing recorded, and no size to record
	}
	// Whatever was written past the last sync is written again.
	err = file.Truncate(p.resumeAt)
	if err == nil {
		_, err = file.Seek(p.resumeAt, io.SeekStart)
	}
	if err == nil {
		err = storage.Reserve(file, p.size)
	}
	if err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

func readPartialRecord(path string) (partialRecord, bool) {
	var rec partialRecord
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &rec) != nil || rec.Written < 0 || rec.Written > rec.Size || rec.Digest.Validate() != nil {
		return partialRecord{}, false
	}
	return rec, true
}

// checkpoint has the file's first written bytes synced and recorded,
// in the background: the writer goes on meanwhile (a sync in its path
// would hold every large download to the disk's synced speed). One runs
// at a time; a checkpoint due while one runs is left to the next.
func (p *partial) checkpoint(written int64) {
	if written-p.asked < checkpointEvery || !p.busy.CompareAndSwap(false, true) {
		return
	}
	p.asked = written
	p.syncing.Go(func() {
		defer p.busy.Store(false)
		p.save(written)
	})
}

// save syncs the file and records its first written bytes.
func (p *partial) save(written int64) {
	if p.file.Sync() != nil {
		return // a longer resume
	}
	b, _ := json.Marshal(partialRecord{Digest: p.digest, Size: p.size, Written: written})
	tmp := p.record + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return
	}
	if err := os.Rename(tmp, p.record); err != nil {
		os.Remove(tmp)
		return
	}
	p.mu.Lock()
	p.synced = written
	p.mu.Unlock()
}

// close lets the file go (and its lock), removing it and the record when
// the download is over for good.
func (p *partial) close() {
	p.syncing.Wait()
	if p.drop {
		os.Remove(p.record)
		os.Remove(p.file.Name()) // moved into storage or the hot tier already, it is not there
	} else {
		// Cut: what came is kept for the next download, and only
		// that, not the disk reserved for the whole blob.
		if info, err := p.file.Stat(); err == nil {
			p.save(info.Size())
		}
		p.mu.Lock()
		synced := p.synced
		p.mu.Unlock()
		p.file.Truncate(synced)
		storage.Unreserve(p.file, synced, p.size)
	}
	p.file.Close()
}

// ClearPartials removes the resumable downloads next to spoolDir that
// nobody came back for in a day, and records without their file.
func ClearPartials(spoolDir string, now time.Time) {
	dir := partialDir(spoolDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		info, err := e.Info()
		if err != nil {
			continue
		}
		if data, isRecord := strings.CutSuffix(path, ".json"); isRecord {
			if _, err := os.Stat(data); errors.Is(err, os.ErrNotExist) {
				os.Remove(path)
			}
			continue
		}
		if now.Sub(info.ModTime()) < partialsKept {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil { // nobody writes it
			os.Remove(path + ".json")
			os.Remove(path)
		}
		f.Close()
	}
}
