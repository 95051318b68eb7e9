package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Filesystem keeps objects as files under a root directory.
type Filesystem struct {
	root  string
	spool *Spool
}

// NewFilesystem returns a backend rooted at dir, creating it if needed.
func NewFilesystem(dir string) (*Filesystem, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("storage directory %q: %w", dir, err)
	}
	spool, err := OpenSpool(filepath.Join(abs, tmpDir))
	if err != nil {
		return nil, fmt.Errorf("storage directory %q: %w", dir, err)
	}
	return &Filesystem{root: abs, spool: spool}, nil
}

// Close removes the writes in progress.
func (f *Filesystem) Close() error { return f.spool.Close() }

// tmpDir holds writes in progress, inside root so that a rename into place
// never crosses a filesystem.
const tmpDir = ".tmp"

// SpoolDir is where files being written live until they are put in place:
// on the same filesystem, so that putting one is a rename.
func (f *Filesystem) SpoolDir() string { return f.spool.Dir() }

func (f *Filesystem) path(key string) (string, error) {
	clean := filepath.ToSlash(filepath.Clean("/" + key))
	if key == "" || clean != "/"+key || strings.HasPrefix(key, tmpDir) {
		return "", fmt.Errorf("invalid storage key %q", key)
	}
	return filepath.Join(f.root, filepath.FromSlash(key)), nil
}

func (f *Filesystem) Open(_ context.Context, key string) (io.ReadSeekCloser, Info, error) {
	p, err := f.path(key)
	if err != nil {
		return nil, Info{}, err
	}
	file, err := os.Open(p)
	if err != nil {
		return nil, Info{}, notFound(err)
	}
	st, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, Info{}, err
	}
	// The *os.File itself goes back, so that serving it can use sendfile.
	return file, Info{Size: st.Size(), ModTime: st.ModTime()}, nil
}

func (f *Filesystem) Stat(_ context.Context, key string) (Info, error) {
	p, err := f.path(key)
	if err != nil {
		return Info{}, err
	}
	st, err := os.Stat(p)
	if err != nil {
		return Info{}, notFound(err)
	}
	return Info{Size: st.Size(), ModTime: st.ModTime()}, nil
}

func (f *Filesystem) Put(_ context.Context, key string, r io.Reader, size int64) error {
	p, err := f.path(key)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(f.SpoolDir(), "put-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, r)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("writing %s: got %d bytes, want %d", key, n, size)
	}
	return f.place(tmp.Name(), p)
}

func (f *Filesystem) PutFile(_ context.Context, key, path string) error {
	p, err := f.path(key)
	if err != nil {
		return err
	}
	return f.place(path, p)
}

// place renames a complete file into its final path: the atomic step.
func (f *Filesystem) place(from, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.Rename(from, to)
}

func (f *Filesystem) Delete(_ context.Context, key string) error {
	p, err := f.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

func (f *Filesystem) List(ctx context.Context, prefix string, fn func(key string, info Info) error) error {
	root := filepath.Join(f.root, filepath.FromSlash(prefix))
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(f.root, p)
		if d.IsDir() {
			if rel == tmpDir {
				return filepath.SkipDir
			}
			return nil
		}
		st, err := d.Info()
		if err != nil {
			return nil // removed while listing
		}
		return fn(filepath.ToSlash(rel), Info{Size: st.Size(), ModTime: st.ModTime()})
	})
	return err
}
