package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Spool is a directory of this process's own for files being written:
// downloads in progress, objects not yet in place. It holds a lock on it
// while the process lives, so that a process starting later in the same
// parent (a restart after kill -9, an emptyDir that survived a crash)
// removes every spool whose owner is gone, and none that is in use.
type Spool struct {
	dir  string
	lock *os.File
}

const (
	spoolPrefix = "spool-"
	spoolLock   = ".lock"
)

// OpenSpool clears the abandoned spools under parent and makes this
// process's own.
func OpenSpool(parent string) (*Spool, error) {
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	clearAbandoned(parent)
	dir, err := os.MkdirTemp(parent, spoolPrefix)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	lock, err := os.Create(filepath.Join(dir, spoolLock))
	if err == nil {
		err = syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("spool: locking %s: %w", dir, err)
	}
	return &Spool{dir: dir, lock: lock}, nil
}

// SpoolFor is where downloads into store wait until they are stored: the
// backend's own spool when it has one (the same filesystem, so storing is
// a rename), else a spool of this process's own under parent, which
// close removes.
func SpoolFor(store Storage, parent string) (dir string, close func() error, err error) {
	if sp, ok := store.(Spooler); ok {
		return sp.SpoolDir(), func() error { return nil }, nil
	}
	spool, err := OpenSpool(parent)
	if err != nil {
		return "", nil, err
	}
	return spool.Dir(), spool.Close, nil
}

// Dir is where to create files.
func (s *Spool) Dir() string { return s.dir }

// Close removes the spool and everything in it.
func (s *Spool) Close() error {
	err := os.RemoveAll(s.dir)
	return errors.Join(err, s.lock.Close())
}

// clearAbandoned removes spools no live process holds.
func clearAbandoned(parent string) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		path := filepath.Join(parent, e.Name())
		if e.IsDir() && strings.HasPrefix(e.Name(), spoolPrefix) && abandoned(path) {
			os.RemoveAll(path)
		}
	}
}

// abandoned: the spool's lock can be taken, so its owner is gone.
func abandoned(dir string) bool {
	f, err := os.Open(filepath.Join(dir, spoolLock))
	if err != nil {
		// No lock file: its owner died before making one, or it is not
		// a spool at all; only an old one is taken for abandoned.
		info, serr := os.Stat(dir)
		return serr == nil && time.Since(info.ModTime()) > time.Minute
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return false
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return true
}
