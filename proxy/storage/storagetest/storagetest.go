// Package storagetest is the one suite every storage backend passes:
// the filesystem and memory in the storage package's own tests, S3 on a
// real MinIO in the integration tests.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/depproxy/depproxy/proxy/storage"
)

// failingReader gives some bytes, then fails, like a cut upstream.
type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("connection reset")
	}
	n := min(len(p), f.n)
	f.n -= n
	return n, nil
}

// Run runs the suite against the backend open makes: call open once per
// case, for an empty store.
func Run(t *testing.T, open func(t *testing.T) storage.Storage) {
	ctx := context.Background()
	t.Run("missing key is ErrNotFound", func(t *testing.T) {
		s := open(t)
		if _, _, err := s.Open(ctx, "blobs/sha256/nothing"); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Open: %v", err)
		}
		if _, err := s.Stat(ctx, "blobs/sha256/nothing"); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Stat: %v", err)
		}
		if _, err := storage.ReadAll(ctx, s, "blobs/sha256/nothing", 10); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("ReadAll: %v", err)
		}
		if err := s.Delete(ctx, "blobs/sha256/nothing"); err != nil {
			t.Errorf("Delete of a missing key: %v", err)
		}
	})
	t.Run("put, stat, open, seek, overwrite, delete", func(t *testing.T) {
		s := open(t)
		key := "registries/docker.io/library/alpine/_tags/3.20"
		if err := s.Put(ctx, key, strings.NewReader("hello world"), 11); err != nil {
			t.Fatal(err)
		}
		info, err := s.Stat(ctx, key)
		if err != nil || info.Size != 11 {
			t.Fatalf("Stat: %+v %v", info, err)
		}
		r, info, err := s.Open(ctx, key)
		if err != nil || info.Size != 11 {
			t.Fatalf("Open: %+v %v", info, err)
		}
		if _, err := r.Seek(6, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r)
		r.Close()
		if string(b) != "world" {
			t.Fatalf("read after seek: %q", b)
		}
		if err := s.Put(ctx, key, strings.NewReader("bye"), -1); err != nil {
			t.Fatal(err)
		}
		r, _, _ = s.Open(ctx, key)
		b, _ = io.ReadAll(r)
		r.Close()
		if string(b) != "bye" {
			t.Fatalf("after overwrite: %q", b)
		}
		if err := s.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("after delete: %v", err)
		}
	})
	t.Run("a failing writer leaves nothing", func(t *testing.T) {
		s := open(t)
		for _, size := range []int64{-1, 1 << 20, 40 << 20} {
			key := "blobs/sha256/failing"
			if err := s.Put(ctx, key, &failingReader{n: 512 << 10}, size); err == nil {
				t.Fatalf("size %d: Put of a failing reader succeeded", size)
			}
			if _, err := s.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("size %d: a failed Put left an object: %v", size, err)
			}
		}
	})
	t.Run("a short writer leaves nothing", func(t *testing.T) {
		s := open(t)
		if err := s.Put(ctx, "blobs/sha256/short", strings.NewReader("abc"), 10); err == nil {
			t.Fatal("Put of fewer bytes than announced succeeded")
		}
		if _, err := s.Stat(ctx, "blobs/sha256/short"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("a short Put left an object: %v", err)
		}
	})
	t.Run("readers never see a partial object", func(t *testing.T) {
		s := open(t)
		key := "manifests/sha256/racy"
		a, b := bytes.Repeat([]byte("a"), 256<<10), bytes.Repeat([]byte("b"), 256<<10)
		s.Put(ctx, key, bytes.NewReader(a), int64(len(a)))
		var wg sync.WaitGroup
		stop := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				s.Put(ctx, key, bytes.NewReader([][]byte{a, b}[i%2]), int64(len(a)))
			}
			close(stop)
		}()
		for done := false; !done; {
			select {
			case <-stop:
				done = true
			default:
			}
			r, _, err := s.Open(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil {
				continue // the object was replaced mid-read: an error, never mixed bytes
			}
			if !bytes.Equal(got, a) && !bytes.Equal(got, b) {
				t.Fatalf("read a partial or mixed object of %d bytes", len(got))
			}
		}
		wg.Wait()
	})
	t.Run("list", func(t *testing.T) {
		s := open(t)
		want := map[string]int64{"blobs/sha256/aa": 1, "blobs/sha256/bb": 2, "registries/docker.io/x/y/_tags/v1": 3}
		for k, n := range want {
			if err := s.Put(ctx, k, strings.NewReader(strings.Repeat("x", int(n))), n); err != nil {
				t.Fatal(err)
			}
		}
		got := map[string]int64{}
		if err := s.List(ctx, "", func(k string, info storage.Info) error { got[k] = info.Size; return nil }); err != nil {
			t.Fatal(err)
		}
		for k, n := range want {
			if got[k] != n {
				t.Errorf("List: %s has size %d, want %d (all: %v)", k, got[k], n, got)
			}
		}
		if len(got) != len(want) {
			t.Errorf("List found %v, want %v", got, want)
		}
		blobs := 0
		s.List(ctx, "blobs/", func(string, storage.Info) error { blobs++; return nil })
		if blobs != 2 {
			t.Errorf("List blobs/: %d objects, want 2", blobs)
		}
		if err := s.List(ctx, "nothing/", func(string, storage.Info) error { return errors.New("called") }); err != nil {
			t.Errorf("List of an empty prefix: %v", err)
		}
	})
	t.Run("put file", func(t *testing.T) {
		s := open(t)
		fp, ok := s.(storage.FilePutter)
		if !ok {
			t.Fatal("backend cannot put files")
		}
		path := filepath.Join(t.TempDir(), "f")
		os.WriteFile(path, []byte("file content"), 0o644)
		if err := fp.PutFile(ctx, "blobs/sha256/file", path); err != nil {
			t.Fatal(err)
		}
		r, _, err := s.Open(ctx, "blobs/sha256/file")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if b, _ := io.ReadAll(r); string(b) != "file content" {
			t.Fatalf("got %q", b)
		}
	})
}
