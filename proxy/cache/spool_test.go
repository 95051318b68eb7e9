package cache

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/upstream"
)

// slowUpload is a storage whose uploads wait until let go: the seconds a
// large blob takes to reach S3 after its download checked out.
type slowUpload struct {
	storage.Storage
	release chan struct{}
}

func (s slowUpload) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	<-s.release
	return s.Storage.Put(ctx, key, r, size)
}

// Right after a cold fill, while the blob is still on its way into the
// storage, a read of it is the verified spool file itself (served with
// sendfile), not a copy through the download's reader; once stored, it
// is read from the storage.
func TestVerifiedDownloadServedAsAFileWhileStored(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	content := bytes.Repeat([]byte("layer bytes "), 100_000)
	layer := static.NewLayer(content, types.OCILayer)
	repo, err := name.NewRepository(strings.TrimPrefix(srv.URL, "http://")+"/library/app", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(repo, layer); err != nil {
		t.Fatal(err)
	}
	up, err := upstream.New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	store := slowUpload{Storage: storage.NewMemory(), release: make(chan struct{})}
	c := New(up, store, WithSpoolDir(t.TempDir()))
	t.Cleanup(c.Close)
	ctx := context.Background()
	d := digest.FromBytes(content)

	read := func(what string) *Blob {
		t.Helper()
		b, err := c.Blob(ctx, "library/app", d)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer b.Close()
		got, err := io.ReadAll(b)
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("%s: %d bytes, %v; want the blob's %d", what, len(got), err, len(content))
		}
		if b.Size != int64(len(content)) || !b.Cold && !b.Verified {
			t.Errorf("%s: size %d, verified %t", what, b.Size, b.Verified)
		}
		return b
	}
	read("the cold read")
	b := read("a read while the blob is uploaded")
	if _, isFile := b.ReadSeeker.(*os.File); !b.File || !isFile || b.Cold {
		t.Errorf("a read after the download checked out is served from %T (file %t, cold %t), not the spool file", b.ReadSeeker, b.File, b.Cold)
	}
	close(store.release)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := store.Stat(ctx, layout.Blob(d)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the blob was never stored")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Close() // waits for the fill to be forgotten
	if b := read("a read once stored"); b.Cold {
		t.Error("a stored blob is read as a download")
	}
}
