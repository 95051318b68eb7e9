package cache

import (
	"context"
	"errors"
	"io"
)

// maxStalledResumes is how many times in a row a cut download is resumed
// without a byte coming between: an upstream that cuts every answer at
// once is given up, one that makes progress never is.
const maxStalledResumes = 3

// resuming reads an upstream blob's body and, when the transfer is cut
// before its announced end (a reset, an early EOF), asks the upstream for
// the rest with a range and reads on: a 100 GB layer cut at 90% costs the
// 10% left, not a restart. The digest is computed over the whole by the
// reader above it, so a resumed blob is checked as one.
type resuming struct {
	ctx    context.Context
	body   io.ReadCloser
	off    int64 // bytes read so far
	size   int64 // the blob's announced size; < 0: unknown, never resumed
	reopen func(ctx context.Context, off, end int64) (io.ReadCloser, error)
	onCut  func(off int64, err error)
	// stalled counts the resumes since the last byte came.
	stalled int
}

func (r *resuming) Read(p []byte) (int, error) {
	for {
		n, err := r.body.Read(p)
		r.off += int64(n)
		if n > 0 {
			r.stalled = 0
		}
		cut := err != nil && r.size >= 0 && r.off < r.size && r.ctx.Err() == nil &&
			!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
		if !cut || r.reopen == nil || r.stalled >= maxStalledResumes {
			return n, err
		}
		body, rerr := r.reopen(r.ctx, r.off, r.size)
		if rerr != nil {
			return n, err // the cut, not why the rest could not be had
		}
		r.onCut(r.off, err)
		r.body.Close()
		r.body = body
		r.stalled++
		if n > 0 {
			return n, nil
		}
	}
}

func (r *resuming) Close() error { return r.body.Close() }
