// Package storage keeps a cache's objects: a local directory or an S3
// bucket. Keys are slash-separated paths; the cache decides their layout.
//
// Writes are atomic on every backend: a reader sees the whole object or
// nothing, never a partial one, and a Put whose reader fails leaves nothing.
package storage

import (
	"context"
	"errors"
	"io"
	"time"
)

// ErrNotFound is returned when a key holds no object.
var ErrNotFound = errors.New("not found")

// ErrNoSpace is a spool (or disk) that cannot take an object of the size
// asked for.
var ErrNoSpace = errors.New("no space left for it")

// Info describes a stored object.
type Info struct {
	Size    int64
	ModTime time.Time
}

// Storage is what a cache needs from a place to keep objects.
type Storage interface {
	// Open returns the object at key. The reader can seek, so that a
	// Range request reads only what it asks for.
	Open(ctx context.Context, key string) (io.ReadSeekCloser, Info, error)
	// Stat returns the object's size and time without reading it.
	Stat(ctx context.Context, key string) (Info, error)
	// Put stores r under key. size is the exact length, or -1 when
	// unknown. If r fails, nothing is stored.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List calls fn for every object under prefix, in no set order, one
	// page at a time: memory does not grow with the number of objects.
	List(ctx context.Context, prefix string, fn func(key string, info Info) error) error
}

// FilePutter is implemented by backends that can take a complete local file
// more cheaply than reading it (the filesystem backend renames it).
type FilePutter interface {
	// PutFile stores the file at path under key. The caller still owns
	// path: it may be moved away, or copied and left in place.
	PutFile(ctx context.Context, key, path string) error
}

// Spooler is implemented by backends that keep files being written in a
// local directory: spooling downloads there makes FilePutter a rename.
type Spooler interface {
	SpoolDir() string
}

// Redirector is implemented by backends that can hand a client a URL to
// read an object from directly (S3's presigned URLs).
type Redirector interface {
	RedirectURL(ctx context.Context, key string) (string, error)
}

// WholeReader is implemented by backends that read a small object in one
// request, where Open costs two (S3: a HEAD for its size, then a GET).
type WholeReader interface {
	ReadAll(ctx context.Context, key string, limit int64) ([]byte, error)
}

// ReadAll reads at most limit bytes of a small object (a tag, a
// manifest, a marker) and closes it.
func ReadAll(ctx context.Context, s Storage, key string, limit int64) ([]byte, error) {
	if wr, ok := s.(WholeReader); ok {
		return wr.ReadAll(ctx, key, limit)
	}
	r, _, err := s.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(io.LimitReader(r, limit))
}

// AfterLister is implemented by backends that can list from a key on
// (S3's StartAfter), so that a listing costs what comes after it.
type AfterLister interface {
	// ListAfter calls fn for every object under prefix whose key sorts
	// after after.
	ListAfter(ctx context.Context, prefix, after string, fn func(key string, info Info) error) error
}

// ListAfter lists the objects under prefix whose keys sort after after,
// with the backend's own means where it has them.
func ListAfter(ctx context.Context, s Storage, prefix, after string, fn func(key string, info Info) error) error {
	if al, ok := s.(AfterLister); ok {
		return al.ListAfter(ctx, prefix, after, fn)
	}
	return s.List(ctx, prefix, func(key string, info Info) error {
		if key <= after {
			return nil
		}
		return fn(key, info)
	})
}
