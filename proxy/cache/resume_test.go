package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// cutReader gives up to n bytes of data from off, then fails.
type cutReader struct {
	data []byte
	off  int64
	n    int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.off >= int64(len(c.data)) {
		return 0, io.EOF
	}
	if c.n <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	k := copy(p[:min(len(p), c.n)], c.data[c.off:])
	c.off += int64(k)
	c.n -= k
	return k, nil
}

func (c *cutReader) Close() error { return nil }

// A cut transfer is resumed from where it stopped, each time it makes
// progress; an upstream whose ranges bring nothing is given up after
// maxStalledResumes, and an unknown size is never resumed.
func TestResumingReader(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		size    int64
		perOpen int // bytes each ranged answer brings
		whole   bool
		cuts    int
	}{
		{"ranges bring the rest", int64(len(data)), 3000, true, 3},
		{"ranges bring nothing", int64(len(data)), 0, false, maxStalledResumes},
		{"size unknown", -1, 3000, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			cuts := 0
			r := &resuming{ctx: ctx, body: &cutReader{data: data, n: 1000}, size: c.size,
				reopen: func(_ context.Context, off, end int64) (io.ReadCloser, error) {
					if end != c.size {
						t.Errorf("asked for the rest up to %d, the size is %d", end, c.size)
					}
					return &cutReader{data: data, off: off, n: c.perOpen}, nil
				},
				onCut: func(int64, error) { cuts++ }}
			got, err := io.ReadAll(r)
			if c.whole != (err == nil && bytes.Equal(got, data)) {
				t.Errorf("read %d bytes, %v; whole: want %t", len(got), err, c.whole)
			}
			if !c.whole && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("a transfer that cannot be resumed ends with %v, want the cut", err)
			}
			if cuts != c.cuts {
				t.Errorf("%d resumes, want %d", cuts, c.cuts)
			}
		})
	}
}
