package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
	core   minio.Core
	bucket string
	prefix string
	secure bool // HTTPS to the endpoint
	health *health
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
	// Timeout bounds each call (DefaultTimeout when zero); uploads and
	// listings may be silent for that long.
	Timeout time.Duration
}

// partSize bounds the memory a multipart upload uses per part.
const partSize = 16 << 20

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
	return &S3{client: client, core: minio.Core{Client: client}, bucket: bucket, prefix: prefix, secure: secure,
		health: newHealth(o.Timeout)}, nil
}

// EnsureBucket creates the bucket when it does not exist.
func (s *S3) EnsureBucket(ctx context.Context) error {
	return s.health.call(ctx, "bucket "+s.bucket, func(ctx context.Context) error {
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
	})
}

func (s *S3) Open(ctx context.Context, key string) (io.ReadSeekCloser, Info, error) {
	info, err := s.Stat(ctx, key)
	if err != nil {
		return nil, Info{}, err
	}
	return &s3Reader{ctx: ctx, s: s, key: s.prefix + key, size: info.Size}, info, nil
}

// ReadAll reads a small object with one GET.
func (s *S3) ReadAll(ctx context.Context, key string, limit int64) ([]byte, error) {
	var b []byte
	err := s.health.call(ctx, "read "+key, func(ctx context.Context) error {
		body, _, _, err := s.core.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
		if err != nil {
			return s3Error(err)
		}
		defer body.Close()
		b, err = io.ReadAll(io.LimitReader(body, limit))
		return err
	})
	return b, err
}

func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	var info Info
	err := s.health.call(ctx, "stat "+key, func(ctx context.Context) error {
		st, err := s.client.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
		if err != nil {
			return s3Error(err)
		}
		info = Info{Size: st.Size, ModTime: st.LastModified}
		return nil
	})
	return info, err
}

// Put relies on S3's own atomicity: an object appears only when its
// single PUT or its multipart upload completes, and a reader error aborts
// either.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.health.guarded(ctx, "write "+key, func(ctx context.Context, w *watchdog) error {
		return s.put(ctx, key, withProgress(r, w), size)
	})
}

func (s *S3) put(ctx context.Context, key string, r io.Reader, size int64) error {
	_, err := s.client.PutObject(ctx, s.bucket, s.prefix+key, r, size, minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		PartSize:    partSize,
		// Over plain HTTP minio-go would sign every chunk's SHA-256 (and
		// MinIO check it): the whole blob hashed twice more, on the cores
		// that serve it right after its fill. The payload goes unsigned,
		// as it does over HTTPS; plain HTTP was trusted with every read
		// already.
		DisableContentSha256: true,
	})
	if err != nil && minio.ToErrorResponse(err).Code == "NoSuchBucket" {
		// The bucket could not be made at start (S3 was still coming up):
		// make it now. The next write of this object succeeds; this one
		// is lost, as a failed write always is in a cache.
		if berr := s.EnsureBucket(ctx); berr != nil {
			err = errors.Join(err, berr)
		}
	}
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

// redirectExpiry is how long a presigned URL stays valid: long enough for
// a slow pull of a large layer to start.
const redirectExpiry = 20 * time.Minute

// RedirectURL presigns a GET of key.
func (s *S3) RedirectURL(ctx context.Context, key string) (string, error) {
	u, err := s.client.PresignedGetObject(ctx, s.bucket, s.prefix+key, redirectExpiry, nil)
	if err != nil {
		return "", err
	}
	return u.String(), nil
}

func (s *S3) Delete(ctx context.Context, key string) error {
	return s.health.call(ctx, "delete "+key, func(ctx context.Context) error {
		err := s.client.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{})
		if err != nil && !errors.Is(s3Error(err), ErrNotFound) {
			return fmt.Errorf("deleting %s: %w", key, err)
		}
		return nil
	})
}

func (s *S3) List(ctx context.Context, prefix string, fn func(key string, info Info) error) error {
	return s.ListAfter(ctx, prefix, "", fn)
}

// ListAfter lists from after on (StartAfter): S3 sorts keys.
// The deadline moves with every object listed, and waits while fn
// works: a listing may be as long as the bucket is large, but the storage
// may not be silent for longer than its timeout.
func (s *S3) ListAfter(ctx context.Context, prefix, after string, fn func(key string, info Info) error) error {
	return s.health.guarded(ctx, "list "+prefix, func(ctx context.Context, w *watchdog) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel() // stops minio-go's lister if fn returns early
		opts := minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}
		if after != "" {
			opts.StartAfter = s.prefix + after
		}
		for obj := range s.client.ListObjects(ctx, s.bucket, opts) {
			if obj.Err != nil {
				return fmt.Errorf("listing %s: %w", prefix, obj.Err)
			}
			w.pause()
			err := fn(strings.TrimPrefix(obj.Key, s.prefix), Info{Size: obj.Size, ModTime: obj.LastModified})
			w.progress()
			if err != nil {
				return err
			}
		}
		// A listing cut by a cancel may end without an error: never
		// take it for a whole one.
		return ctx.Err()
	})
}

func s3Error(err error) error {
	resp := minio.ToErrorResponse(err)
	if resp.StatusCode == http.StatusNotFound || resp.Code == "NoSuchKey" {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// s3Reader reads an object through one plain GET body from the current
// offset, reopened with a Range only when a seek moves it. (minio.Object
// hands every Read to a goroutine, which halves throughput for a server
// copying 32 KiB at a time.)
type s3Reader struct {
	ctx  context.Context
	s    *S3
	key  string
	size int64
	off  int64
	body io.ReadCloser
}

func (r *s3Reader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if r.body == nil {
		opts := minio.GetObjectOptions{}
		if r.off > 0 {
			if err := opts.SetRange(r.off, 0); err != nil {
				return 0, err
			}
		}
		body, _, _, err := r.s.core.GetObject(r.ctx, r.s.bucket, r.key, opts)
		if err != nil {
			return 0, s3Error(err)
		}
		r.body = body
	}
	n, err := r.body.Read(p)
	r.off += int64(n)
	if err == io.EOF && r.off < r.size {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// WriteTo sends the rest of the object to w. Where w reads from a
// connection itself (an HTTP response on a plain TCP connection), the
// object is fetched over a connection of its own and its bytes go from
// the storage's socket to the client's inside the kernel (splice): a
// warm blob streams at the storage's speed, not at the speed of copying
// it through this process.
func (r *s3Reader) WriteTo(w io.Writer) (int64, error) {
	rf, ok := w.(io.ReaderFrom)
	if !ok || r.body != nil || r.s.secure || r.off >= r.size {
		return io.CopyBuffer(writerOnly{w}, readerOnly{r}, make([]byte, 256<<10))
	}
	conn, buffered, err := r.s.rawGet(r.ctx, r.key, r.off)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	// A client that goes away unblocks the storage side too.
	stop := context.AfterFunc(r.ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var n int64
	if len(buffered) > 0 {
		m, err := w.Write(buffered)
		n += int64(m)
		r.off += int64(m)
		if err != nil {
			return n, err
		}
	}
	m, err := rf.ReadFrom(&io.LimitedReader{R: conn, N: r.size - r.off})
	n += m
	r.off += m
	if err == nil && r.off < r.size {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// rawGet sends a presigned GET of key from off on a connection of its
// own, and returns the connection positioned in the body, with the body
// bytes already read along with the headers.
func (s *S3) rawGet(ctx context.Context, key string, off int64) (net.Conn, []byte, error) {
	u, err := s.client.PresignedGetObject(ctx, s.bucket, key, time.Minute, nil)
	if err != nil {
		return nil, nil, s3Error(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, err
	}
	req.Close = true
	if off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
	}
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second)) // until the headers
	br := bufio.NewReaderSize(conn, 4096)
	resp, err := func() (*http.Response, error) {
		if err := req.Write(conn); err != nil {
			return nil, err
		}
		return http.ReadResponse(br, req)
	}()
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("reading %s: %w", key, err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		conn.Close()
		err := fmt.Errorf("reading %s: storage answered %s", key, resp.Status)
		if resp.StatusCode == http.StatusNotFound {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, nil, err
	}
	conn.SetDeadline(time.Time{})
	buffered, _ := br.Peek(br.Buffered())
	return conn, buffered, nil
}

// readerOnly and writerOnly hide the other methods of a reader and a
// writer, so that a copy between them uses the buffer it is given.
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

func (r *s3Reader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.size
	}
	if offset < 0 {
		return 0, errors.New("seek before start")
	}
	if offset != r.off && r.body != nil {
		r.body.Close()
		r.body = nil
	}
	r.off = offset
	return offset, nil
}

func (r *s3Reader) Close() error {
	if r.body != nil {
		return r.body.Close()
	}
	return nil
}
