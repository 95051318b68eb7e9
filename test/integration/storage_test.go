package integration

import (
	"context"
	"strings"
	"testing"

	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/storage/storagetest"
	"github.com/depproxy/depproxy/test/testenv"
)

// The suite every storage backend passes, on a real MinIO.
func TestS3Backend(t *testing.T) {
	m := testenv.StartMinIO(t)
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		return m.Storage(t, "suite", nonName.ReplaceAllString(t.Name(), "-"))
	})
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
