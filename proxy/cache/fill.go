package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// ErrDigestMismatch is returned when upstream bytes do not hash to the
// digest they were asked for (or their length is not the one announced).
var ErrDigestMismatch = errors.New("upstream blob does not match its digest")

// ErrTooLarge is returned for a blob over the size limit.
var ErrTooLarge = errors.New("blob too large")

// fill is one upstream download of a blob, shared by every request for
// that digest while it runs. Bytes land in a spool file as they arrive;
// readers follow the writer through the file, so each client gets its
// first byte as soon as the upstream sends it, and none of them holds the
// blob in memory.
type fill struct {
	digest digest.Digest
	ready  chan struct{} // closed once size is known or the fetch failed
	// cancel stops the download; abandoned is how long it may go on
	// with nobody reading it.
	cancel    context.CancelCauseFunc
	abandoned time.Duration
	// fromStorage: the bytes come from storage, to the hot tier, not
	// from the upstream. ranged opens the source from an offset, for a
	// read far ahead of the fill.
	fromStorage bool
	ranged      func(ctx context.Context, off, end int64) (io.ReadCloser, error)
	// lazy: a reader went far ahead of the download (a lazy-pulling
	// snapshotter). It comes back for more ranges at its own pace, and
	// between them nobody reads the download: it goes on regardless,
	// to be stored, rather than be abandoned and downloaded again.
	lazy bool

	mu      sync.Mutex
	cond    *sync.Cond
	file    *os.File
	size    int64 // -1: the upstream did not say
	written int64
	done    bool  // no more bytes will come
	err     error // why the fill failed; nil on success
	refs    int   // the fill itself plus open readers
	// stream, when the spool had no room, is the upstream body itself,
	// for the one reader that claims it; streamed closes when it is done.
	stream   io.Reader
	claimed  bool
	streamed chan struct{}
	// partial, when the blob is large, is file's resumable download:
	// the file outlives the fill unless it ended for good.
	partial *partial
}

func newFill(d digest.Digest, cancel context.CancelCauseFunc, abandoned time.Duration) *fill {
	f := &fill{digest: d, ready: make(chan struct{}), size: -1, refs: 1, cancel: cancel, abandoned: abandoned}
	f.cond = sync.NewCond(&f.mu)
	return f
}

// start records the spool file and the announced size and wakes waiters.
func (f *fill) start(file *os.File, size int64) {
	f.mu.Lock()
	f.file, f.size = file, size
	f.mu.Unlock()
	close(f.ready)
}

// wake rouses everyone waiting on the fill, so that a waiter whose
// context ended can notice.
func (f *fill) wake() {
	f.mu.Lock()
	f.cond.Broadcast()
	f.mu.Unlock()
}

// wait blocks until no more bytes will come, and returns why the fill
// failed, if it did.
func (f *fill) wait(ctx context.Context) error {
	stop := context.AfterFunc(ctx, f.wake)
	defer stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for !f.done {
		if err := ctx.Err(); err != nil {
			return err
		}
		f.cond.Wait()
	}
	return f.err
}

func (f *fill) advance(n int) {
	f.mu.Lock()
	f.written += int64(n)
	f.cond.Broadcast()
	f.mu.Unlock()
}

// finish ends the fill: no more bytes will come, and err says whether the
// ones that came are the blob. A fill that ends before start (no body)
// also releases those waiting for it to start.
func (f *fill) finish(err error) {
	f.mu.Lock()
	f.err, f.done = err, true
	started := f.file != nil || f.stream != nil
	f.cond.Broadcast()
	f.mu.Unlock()
	if !started {
		close(f.ready)
	}
}

// acquire adds a reader; false if the fill already failed.
func (f *fill) acquire() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done && f.err != nil {
		return false
	}
	f.refs++
	return true
}

// release drops a reference; the last one closes and removes the spool
// file (it may have been renamed into storage already, which is fine).
// When only the download itself is left, it has a grace period for a
// reader to come back before it is cancelled.
func (f *fill) release() {
	f.mu.Lock()
	f.refs--
	last := f.refs == 0
	unread := f.refs == 1 && !f.done
	file, part := f.file, f.partial
	f.mu.Unlock()
	if unread {
		time.AfterFunc(f.abandoned, f.cancelIfUnread)
	}
	switch {
	case last && part != nil:
		part.close()
	case last && file != nil:
		file.Close()
		os.Remove(file.Name())
	}
}

func (f *fill) cancelIfUnread() {
	f.mu.Lock()
	unread := f.refs == 1 && !f.done && !f.lazy
	f.mu.Unlock()
	if unread {
		f.cancel(errAbandoned)
	}
}

var (
	errAbandoned = errors.New("nobody is reading the download")
	errSilent    = errors.New("the upstream sent nothing for too long")
)

// copyFrom writes the upstream body into the spool file, hashing as it
// goes, and decides whether the bytes are the blob that was asked for.
// Past limit bytes it stops: a body that does not end is not spooled
// without end.
//
// verifier has hashed what is in the file already (a resumed download's
// first bytes); a resumable download is checkpointed as it goes.
func (f *fill) copyFrom(body io.Reader, limit int64, verifier digest.Verifier) error {
	buf := make([]byte, 256<<10)
	f.mu.Lock()
	at := f.written
	f.mu.Unlock()
	body = io.LimitReader(body, limit-at+1)
	total := at
	for {
		n, rerr := body.Read(buf)
		if total += int64(n); total > limit {
			// Not one byte past the limit reaches the spool, where
			// readers would pass it on.
			return fmt.Errorf("%w: the upstream sent more than %d bytes", ErrTooLarge, limit)
		}
		if n > 0 {
			if _, err := f.file.Write(buf[:n]); err != nil {
				return fmt.Errorf("spooling blob: %w", err)
			}
			verifier.Write(buf[:n])
			f.advance(n)
			if f.partial != nil {
				f.partial.checkpoint(total)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("reading upstream blob: %w", rerr)
		}
	}
	f.mu.Lock()
	size, written := f.size, f.written
	f.mu.Unlock()
	if size >= 0 && written != size {
		return fmt.Errorf("%w: got %d bytes, upstream announced %d", ErrDigestMismatch, written, size)
	}
	if !verifier.Verified() {
		return fmt.Errorf("%w: %s", ErrDigestMismatch, f.digest)
	}
	return nil
}

// fillReader reads a fill's bytes as they land. It holds back the last
// byte until the digest is verified, so that a client never receives a
// complete-looking corrupt blob: a failed fill cuts its response short.
type fillReader struct {
	f   *fill
	ctx context.Context
	off int64
	// cold opens the upstream from an offset, for a read far ahead of
	// the download (a lazy-pulling snapshotter reading a layer's footer
	// first); nil once it failed, or where ranges are not fetched.
	cold func(ctx context.Context, off, end int64) (io.ReadCloser, error)
	// far is the ranged upstream body being read, at farOff, up to
	// farEnd.
	far            io.ReadCloser
	farOff, farEnd int64
	// until, when set, is where the client's range ends (Blob.Expect):
	// a ranged request asks for no more.
	until int64
}

// coldAhead is how far past the download a read must start to be
// fetched with a range of its own: closer, the download gets there soon.
const coldAhead = 4 << 20

// coldChunk bounds one ranged upstream request, as the client's range
// does where its end is known (Blob.Expect): asking for the rest of the
// blob would have the upstream send far more than is read before the
// client hangs up. A longer read takes a chunk after another (or meets
// the download).
const coldChunk = 1 << 20

func (r *fillReader) Read(p []byte) (int, error) {
	f := r.f
	f.mu.Lock()
	for {
		if f.err != nil {
			f.mu.Unlock()
			return 0, f.err
		}
		if err := r.ctx.Err(); err != nil {
			f.mu.Unlock()
			return 0, err
		}
		limit := f.written
		if !f.done && f.size >= 0 && limit >= f.size {
			limit = f.size - 1
		}
		if r.off < limit {
			if n := limit - r.off; int64(len(p)) > n {
				p = p[:n]
			}
			break
		}
		if f.done {
			f.mu.Unlock()
			return 0, io.EOF
		}
		// Reading a ranged upstream body already, or far enough ahead of
		// the download to start one.
		reading := r.far != nil && r.farOff == r.off
		farAhead := r.cold != nil && f.size >= 0 && r.off < f.size && r.off > f.written+coldAhead
		if reading || farAhead {
			f.mu.Unlock()
			if n, err, ok := r.readCold(p); ok {
				return n, err
			}
			f.mu.Lock()
			continue
		}
		f.cond.Wait()
	}
	f.mu.Unlock()
	n, err := f.file.ReadAt(p, r.off)
	r.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// readCold reads from a ranged upstream request at r.off; !ok when one
// cannot be had (the read waits for the download instead), or when a
// chunk ended (the read decides again where its next bytes come from).
func (r *fillReader) readCold(p []byte) (int, error, bool) {
	if r.far == nil || r.farOff != r.off {
		r.closeFar()
		end := min(r.off+coldChunk, r.f.size)
		if r.until > r.off {
			end = min(end, r.until)
		}
		body, err := r.cold(r.ctx, r.off, end)
		if err != nil {
			r.cold = nil
			return 0, nil, false
		}
		r.f.mu.Lock()
		r.f.lazy = true
		r.f.mu.Unlock()
		r.far, r.farOff, r.farEnd = body, r.off, end
	}
	n, err := r.far.Read(p)
	r.off += int64(n)
	r.farOff = r.off
	if err == io.EOF {
		r.closeFar()
		if r.off < r.farEnd {
			return n, io.ErrUnexpectedEOF, true
		}
		if n == 0 {
			return 0, nil, false
		}
		err = nil
	}
	return n, err, true
}

func (r *fillReader) closeFar() {
	if r.far != nil {
		r.far.Close()
		r.far = nil
	}
}

// Seek supports http.ServeContent (size probe and Range), only when the
// size is known.
func (r *fillReader) Seek(offset int64, whence int) (int64, error) {
	size := r.f.size
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		if size < 0 {
			return 0, errors.New("seek from end of a blob of unknown size")
		}
		offset += size
	}
	if offset < 0 {
		return 0, errors.New("seek before start")
	}
	r.off = offset
	return offset, nil
}

// silentReader cancels a download when the upstream sends nothing for a
// while: a stalled connection would otherwise hold a download slot, a
// connection and a spool file until the fill's overall timeout.
type silentReader struct {
	r     io.Reader
	timer *time.Timer
	after time.Duration
}

func silenceTimeout(r io.Reader, after time.Duration, cancel context.CancelCauseFunc) *silentReader {
	return &silentReader{r: r, timer: time.AfterFunc(after, func() { cancel(errSilent) }), after: after}
}

func (s *silentReader) Read(p []byte) (int, error) {
	s.timer.Reset(s.after)
	n, err := s.r.Read(p)
	return n, err
}

func (s *silentReader) stop() { s.timer.Stop() }
