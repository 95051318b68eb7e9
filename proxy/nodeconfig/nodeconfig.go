// Package nodeconfig puts on a node what makes its container runtime pull
// through the cache (the files RenderNodeFile renders): written
// atomically and marked as depproxy's, a file that was there before kept
// aside and put back when depproxy's is removed; and the agent that keeps
// them in step with the cache.
package nodeconfig

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// savedSuffix names a file kept aside.
const savedSuffix = ".depproxy-saved"

// File is one file an agent keeps on the node.
type File struct {
	Path    string
	Content []byte
	// Merge, when set, makes the content from the file that was there
	// before depproxy's (nil if none): for a file that holds the admin's
	// settings too.
	Merge func(original []byte) ([]byte, error)
}

// Put writes the file (Write), merged with what was there first if it
// merges.
func (f File) Put() error {
	if f.Merge == nil {
		return Write(f.Path, f.Content)
	}
	original, err := os.ReadFile(f.Path + savedSuffix)
	if errors.Is(err, os.ErrNotExist) {
		if original, err = os.ReadFile(f.Path); err == nil && ours(original) {
			original = nil
		}
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	content, err := f.Merge(original)
	if err != nil {
		return err
	}
	return Write(f.Path, content)
}

// Write puts content at path atomically. A file there that depproxy did
// not write is kept aside first, once.
func Write(path string, content []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if old, err := os.ReadFile(path); err == nil {
		if bytes.Equal(old, content) {
			return nil
		}
		if !ours(old) {
			if err := os.Rename(path, path+savedSuffix); err != nil {
				return fmt.Errorf("keeping %s aside: %w", path, err)
			}
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".depproxy-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Remove takes out depproxy's file at path and puts back the one kept
// aside, if any. A file at path that is not depproxy's is left alone.
func Remove(path string) error {
	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	case !ours(old):
		return nil
	default:
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	if _, err := os.Stat(path + savedSuffix); err == nil {
		return os.Rename(path+savedSuffix, path)
	}
	// The directory depproxy made for hosts.toml goes if it is empty.
	if filepath.Base(path) == "hosts.toml" {
		os.Remove(filepath.Dir(path))
	}
	return nil
}

// Present reports whether depproxy's file is at path.
func Present(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && ours(b)
}

func ours(b []byte) bool { return bytes.HasPrefix(b, []byte(NodeFileMarker)) }
