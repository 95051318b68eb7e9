package cache

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"
)

// A blob the spool has no room for (a full disk, a quota) is streamed
// through to the client and not cached: the first request takes the
// fill's upstream body, any other one downloads for itself. Slower for
// a crowd, but every client gets its bytes while the disk is full.

var errPassedThrough = errors.New("streamed through uncached: the spool had no room")

// startStream hands the fill the upstream body itself, for one reader.
func (f *fill) startStream(body io.Reader, size int64) {
	f.mu.Lock()
	f.stream, f.size, f.streamed = body, size, make(chan struct{})
	f.mu.Unlock()
	close(f.ready)
}

// claimStream takes the stream for one reader; false if another has.
func (f *fill) claimStream() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.claimed {
		return false
	}
	f.claimed = true
	return true
}

// passThrough runs a fill whose spool had no room: it waits until the
// one reader has the whole body (or gives up), then ends the fill so
// that later requests start anew.
func (c *Cache) passThrough(ctx context.Context, f *fill, body io.Reader, size int64) {
	c.metrics.passedThrough.Inc()
	f.startStream(newVerifier(body, f.digest, size), size)
	select {
	case <-f.streamed:
	case <-ctx.Done():
	}
	f.finish(errPassedThrough)
}

// streamBlob serves the fill's stream to the reader that claimed it.
func (c *Cache) streamBlob(f *fill) *Blob {
	r := &streamReader{r: f.stream, size: f.size}
	done := func() { close(f.streamed); f.release() }
	return &Blob{ReadSeeker: r, Size: f.size, close: done, err: func() error { return r.err }}
}

// directBlob downloads a blob for one request alone, uncached.
func (c *Cache) directBlob(ctx context.Context, repo string, d digest.Digest) (*Blob, error) {
	blob, err := c.up.GetBlob(ctx, repo, d)
	if err != nil {
		return nil, err
	}
	size := blob.Size
	if known, ok := c.declared.size(d); ok {
		size = known
	}
	r := &streamReader{r: newVerifier(blob.Body, d, size), size: size}
	return &Blob{ReadSeeker: r, Size: size, close: func() { blob.Body.Close() }, err: func() error { return r.err }}, nil
}

// verifier reads a blob's body and fails at its end, or past its size,
// when the bytes are not the blob's.
type verifier struct {
	r      io.Reader
	want   digest.Digest
	h      hash.Hash
	size   int64 // -1: not known
	n      int64
	failed error
}

func newVerifier(r io.Reader, d digest.Digest, size int64) *verifier {
	return &verifier{r: r, want: d, h: d.Algorithm().Hash(), size: size}
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.failed != nil {
		return 0, v.failed
	}
	if v.size >= 0 && int64(len(p)) > v.size-v.n+1 {
		p = p[:v.size-v.n+1] // one byte past the size shows a body too long
	}
	n, err := v.r.Read(p)
	v.n += int64(n)
	v.h.Write(p[:n])
	switch {
	case v.size >= 0 && v.n > v.size:
		v.failed = fmt.Errorf("%w: the upstream sent more than %d bytes", ErrTooLarge, v.size)
	case err == io.EOF && v.size >= 0 && v.n != v.size:
		v.failed = fmt.Errorf("%w: %d bytes, %d announced", ErrDigestMismatch, v.n, v.size)
	case err == io.EOF && digest.NewDigest(v.want.Algorithm(), v.h) != v.want:
		v.failed = fmt.Errorf("%w: %s", ErrDigestMismatch, v.want)
	case err != nil && err != io.EOF:
		v.failed = err
	}
	if v.failed != nil {
		return n, v.failed
	}
	return n, err
}

// streamReader is a blob read once, from start to end: it answers the
// seeks http.ServeContent makes to learn the size, and no others.
type streamReader struct {
	r    io.Reader
	size int64
	read int64
	err  error
}

func (s *streamReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.read += int64(n)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

func (s *streamReader) Seek(offset int64, whence int) (int64, error) {
	switch {
	case s.read == 0 && offset == 0 && (whence == io.SeekStart || whence == io.SeekCurrent):
		return 0, nil
	case s.read == 0 && offset == 0 && whence == io.SeekEnd && s.size >= 0:
		return s.size, nil
	}
	return 0, errors.New("a blob streamed through uncached cannot seek: ask again without a Range")
}
