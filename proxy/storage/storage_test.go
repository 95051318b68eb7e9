package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/storage/storagetest"
)

// The suite every backend passes, on the filesystem and on the memory
// the fast tests use (on S3, with a real MinIO, it is in
// test/integration).
func TestFilesystem(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		fs, err := storage.NewFilesystem(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fs.Close() })
		return fs
	})
}

func TestMemory(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return storage.NewMemory() })
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
