package storage_test

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
	"github.com/depproxy/depproxy/test/testenv"
)

// TestBackends runs one suite against every backend: the filesystem and
// a real MinIO.
func TestBackends(t *testing.T) {
	m := testenv.StartMinIO(t)
	backends := map[string]func(t *testing.T) storage.Storage{
		"filesystem": func(t *testing.T) storage.Storage {
			fs, err := storage.NewFilesystem(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return fs
		},
		"s3": func(t *testing.T) storage.Storage {
			return m.Storage(t, "suite", strings.ReplaceAll(t.Name(), "/", "-"))
		},
	}
	for name, open := range backends {
		t.Run(name, func(t *testing.T) { suite(t, open) })
	}
}

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

func suite(t *testing.T, open func(t *testing.T) storage.Storage) {
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

func TestFilesystemRejectsEscapingKeys(t *testing.T) {
	fs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"../x", "a/../../x", "/abs", "", ".tmp/x", "a//b"} {
		if err := fs.Put(context.Background(), key, strings.NewReader("x"), 1); err == nil {
			t.Errorf("Put(%q) accepted", key)
		}
	}
}

// A bucket that could not be made at start is made by the first write
// that needs it.
func TestS3MakesAMissingBucketOnWrite(t *testing.T) {
	m := testenv.StartMinIO(t)
	s3, err := storage.NewS3("late-bucket", "p", storage.S3Options{Endpoint: m.Addr, Insecure: true, Credentials: m.Credentials()})
	if err != nil {
		t.Fatal(err)
	}
	m.Storage(t, "warmup", "") // waits until MinIO serves buckets
	ctx := context.Background()
	if err := s3.Put(ctx, "k", strings.NewReader("v"), 1); err == nil {
		t.Fatal("a write to a missing bucket reported success")
	}
	if err := s3.Put(ctx, "k", strings.NewReader("v"), 1); err != nil {
		t.Fatalf("the write after the bucket was made: %v", err)
	}
}

// A tag, a manifest or a marker costs one request to read on S3, not a
// HEAD for its size and then a GET.
func TestS3ReadsASmallObjectWithOneGet(t *testing.T) {
	m := testenv.StartMinIO(t)
	m.Storage(t, "small", "") // waits until MinIO serves buckets
	front := testenv.StartFront(t, "http://"+m.Addr)
	s3, err := storage.NewS3("small", "p", storage.S3Options{Endpoint: front.Addr, Insecure: true, Credentials: m.Credentials()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s3.Put(ctx, "k", strings.NewReader("sha256:abc"), 10); err != nil {
		t.Fatal(err)
	}
	front.Reset()
	got, err := storage.ReadAll(ctx, s3, "k", 256)
	if err != nil || string(got) != "sha256:abc" {
		t.Fatalf("ReadAll: %q, %v", got, err)
	}
	if gets, heads := front.Count("GET", "other"), front.Count("HEAD", "other"); gets != 1 || heads != 0 {
		t.Fatalf("a small read cost %d GETs and %d HEADs, want one GET", gets, heads)
	}
	if got, err := storage.ReadAll(ctx, s3, "k", 6); err != nil || string(got) != "sha256" {
		t.Fatalf("ReadAll within a limit: %q, %v", got, err)
	}
}

// A spool whose owner died is removed by the next process to open one
// in the same place; one still held is left alone.
func TestSpoolClearsAbandoned(t *testing.T) {
	parent := t.TempDir()
	live, err := storage.OpenSpool(parent)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := storage.OpenSpool(parent)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dead.Dir(), "blob-123"), []byte("half a download"), 0o600)
	os.WriteFile(filepath.Join(live.Dir(), "blob-456"), []byte("a download"), 0o600)
	storage.AbandonForTest(dead) // as kill -9 would: the lock goes, the files stay

	next, err := storage.OpenSpool(parent)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead.Dir()); !os.IsNotExist(err) {
		t.Errorf("the dead process's spool is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(live.Dir(), "blob-456")); err != nil {
		t.Errorf("a live process's spool was touched: %v", err)
	}
	next.Close()
	if _, err := os.Stat(next.Dir()); !os.IsNotExist(err) {
		t.Errorf("Close left the spool: %v", err)
	}
	live.Close()
}
