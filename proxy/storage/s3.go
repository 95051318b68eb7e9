package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3 keeps objects in a bucket, under an optional prefix.
type S3 struct {
	client *minio.Client
	bucket string
	prefix string
}

// S3Options says how to reach the bucket.
type S3Options struct {
	// Endpoint is host:port, or a URL; empty means AWS.
	Endpoint string
	// Insecure talks plain HTTP.
	Insecure bool
	// Region is optional.
	Region string
	// Credentials default to AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
	Credentials *credentials.Credentials
}

// partSize bounds the memory a multipart upload uses per part.
const partSize = 16 << 20

// ParseS3URL splits s3://bucket/prefix.
func ParseS3URL(raw string) (bucket, prefix string, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return "", "", fmt.Errorf("storage %q: want s3://BUCKET/PREFIX", raw)
	}
	return u.Host, strings.Trim(u.Path, "/"), nil
}

// NewS3 returns a backend for bucket.
func NewS3(bucket, prefix string, o S3Options) (*S3, error) {
	endpoint, secure := o.Endpoint, !o.Insecure
	if endpoint == "" {
		endpoint = "s3.amazonaws.com"
	}
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		endpoint, secure = u.Host, u.Scheme == "https"
	}
	t, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, err
	}
	// A storage outage must cost a request seconds, not minutes: the
	// cache then passes through to the upstream.
	t.ResponseHeaderTimeout = 30 * time.Second
	creds := o.Credentials
	if creds == nil {
		creds = credentials.NewEnvAWS()
	}
	client, err := minio.New(endpoint, &minio.Options{
		Creds:      creds,
		Secure:     secure,
		Region:     o.Region,
		Transport:  t,
		MaxRetries: 2,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 endpoint %q: %w", endpoint, err)
	}
	if prefix != "" {
		prefix = strings.Trim(prefix, "/") + "/"
	}
	return &S3{client: client, bucket: bucket, prefix: prefix}, nil
}

// EnsureBucket creates the bucket when it does not exist.
func (s *S3) EnsureBucket(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", s.bucket, err)
	}
	if ok {
		return nil
	}
	if err := s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{}); err != nil {
		return fmt.Errorf("creating bucket %s: %w", s.bucket, err)
	}
	return nil
}

func (s *S3) Open(ctx context.Context, key string) (io.ReadSeekCloser, Info, error) {
	info, err := s.Stat(ctx, key)
	if err != nil {
		return nil, Info{}, err
	}
	// minio.Object reads lazily and seeks with ranged GETs.
	obj, err := s.client.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, Info{}, s3Error(err)
	}
	return obj, info, nil
}

func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	st, err := s.client.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return Info{}, s3Error(err)
	}
	return Info{Size: st.Size, ModTime: st.LastModified}, nil
}

// Put relies on S3's own atomicity: an object appears only when its
// single PUT or its multipart upload completes, and a reader error aborts
// either.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	_, err := s.client.PutObject(ctx, s.bucket, s.prefix+key, r, size, minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		PartSize:    partSize,
	})
	if err != nil {
		return fmt.Errorf("writing %s: %w", key, s3Error(err))
	}
	return nil
}

// PutFile uploads a local file; its parts are read with ReadAt, so no part
// is held in memory whole.
func (s *S3) PutFile(ctx context.Context, key, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return s.Put(ctx, key, f, st.Size())
}

func (s *S3) Delete(ctx context.Context, key string) error {
	err := s.client.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{})
	if err != nil && !errors.Is(s3Error(err), ErrNotFound) {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	return nil
}

func s3Error(err error) error {
	resp := minio.ToErrorResponse(err)
	if resp.StatusCode == http.StatusNotFound || resp.Code == "NoSuchKey" {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}
