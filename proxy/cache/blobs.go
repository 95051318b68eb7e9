package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/audit"
	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/upstream"
)

// Blob is a blob ready to serve. When Size is known it can seek, for
// Range requests; when File is set, it is a local file as well, which
// goes out with sendfile. Err tells, after serving, whether the bytes turned out
// wrong (a cut or corrupt upstream transfer): the response must then be
// aborted, never completed.
type Blob struct {
	io.ReadSeeker
	Size    int64
	ModTime time.Time
	// File: the ReadSeeker is a stored file (*os.File).
	File bool
	// Cold: the blob is not stored yet; it is read from its download
	// (or a ranged upstream request ahead of it).
	Cold bool
	// Verified: the bytes are known to be the digest's (stored, kept
	// hot, or a download that ended and checked out). A part of a blob
	// that is not (a range of a running download, or of a ranged
	// upstream request) must not be labelled with the digest: nothing
	// has checked it, and a whole response is cut short if the digest
	// fails, but a range is complete before that.
	Verified bool
	// Redirect, when set, is where the client should read the blob
	// instead; the blob has no content then.
	Redirect string

	// close and err, when set, release a download and report its
	// failure; a stored blob needs neither.
	close func()
	err   func() error
}

// Expect says the client reads no further than end (the end of its
// Range): a read far ahead of a download asks the upstream for no more.
func (b *Blob) Expect(end int64) {
	if r, ok := b.ReadSeeker.(*fillReader); ok {
		r.until = end
	}
}

// Close releases the blob.
func (b *Blob) Close() error {
	if b.close != nil {
		b.close()
	}
	return nil
}

// Err reports a failure of the bytes served so far.
func (b *Blob) Err() error {
	if b.err == nil {
		return nil
	}
	return b.err()
}

// Blob returns the blob with digest d, from storage, or from the upstream
// download already running for it, or from a new one.
func (c *Cache) Blob(ctx context.Context, repo string, d digest.Digest) (*Blob, error) {
	b, err := c.blob(ctx, repo, d)
	if err == nil {
		c.reads.touch(layout.Blob(d))
	}
	return b, err
}

func (c *Cache) blob(ctx context.Context, repo string, d digest.Digest) (*Blob, error) {
	if b := c.hotBlob(d); b != nil {
		c.count(ctx, kindBlob, hit)
		return b, nil
	}
	if f := c.fillFor(ctx, repo, d, false); f != nil {
		b, err := c.fillBlob(ctx, repo, f)
		switch {
		case f.fromStorage && err == nil:
			c.count(ctx, kindBlob, hit)
			return b, nil
		case !f.fromStorage:
			c.count(ctx, kindBlob, coalesced)
			return b, err
		}
		// A copy from storage to the hot tier that could not start:
		// read the storage itself.
	}
	if b := c.redirectBlob(ctx, d); b != nil {
		c.count(ctx, kindBlob, hit)
		return b, nil
	}
	if f := c.hotFill(ctx, d); f != nil {
		if b, err := c.fillBlob(ctx, repo, f); err == nil {
			c.count(ctx, kindBlob, hit)
			return b, nil
		}
	}
	r, info, err := c.store.Open(ctx, layout.Blob(d))
	if err == nil {
		c.count(ctx, kindBlob, hit)
		_, file := r.(*os.File)
		return &Blob{ReadSeeker: r, Size: info.Size, ModTime: info.ModTime, File: file, Verified: true, close: func() { r.Close() }}, nil
	}
	c.storageFailed(err, "open blob", "digest", d)
	c.count(ctx, kindBlob, miss)
	return c.fillBlob(ctx, repo, c.fillFor(ctx, repo, d, true))
}

// hotBlob is the blob from this replica's own disk, if it is there.
func (c *Cache) hotBlob(d digest.Digest) *Blob {
	if c.hot == nil {
		return nil
	}
	f, info, done, ok := c.hot.Get(d)
	if !ok {
		return nil
	}
	return &Blob{ReadSeeker: f, Size: info.Size(), ModTime: info.ModTime(), File: true, Verified: true, close: done}
}

// redirectBlob returns a redirect to a cached blob, when enabled and the
// storage can give one.
func (c *Cache) redirectBlob(ctx context.Context, d digest.Digest) *Blob {
	rd, ok := c.store.(storage.Redirector)
	if !c.redirect || !ok {
		return nil
	}
	info, err := c.store.Stat(ctx, layout.Blob(d))
	if err != nil {
		return nil
	}
	u, err := rd.RedirectURL(ctx, layout.Blob(d))
	if err != nil {
		c.storageFailed(err, "presign blob", "digest", d)
		return nil
	}
	return &Blob{Size: info.Size, Redirect: u}
}

// StatBlob returns a blob's size without fetching it.
func (c *Cache) StatBlob(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	if c.hot != nil {
		if size, ok := c.hot.Size(d); ok {
			setOutcome(ctx, audit.Hit, "")
			return size, nil
		}
	}
	info, err := c.store.Stat(ctx, layout.Blob(d))
	if err == nil {
		setOutcome(ctx, audit.Hit, "")
		return info.Size, nil
	}
	c.storageFailed(err, "stat blob", "digest", d)
	if f := c.fillFor(ctx, repo, d, false); f != nil {
		defer f.release()
		select {
		case <-f.ready:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		if f.size >= 0 {
			setOutcome(ctx, audit.Coalesced, "")
			return f.size, nil
		}
	}
	setOutcome(ctx, audit.Miss, "")
	return c.up.HeadBlob(ctx, repo, d)
}

func (c *Cache) fillBlob(ctx context.Context, repo string, f *fill) (*Blob, error) {
	select {
	case <-f.ready:
	case <-ctx.Done():
		f.release()
		return nil, ctx.Err()
	}
	f.mu.Lock()
	err, stream := f.err, f.stream
	// Bytes from storage were checked before they were stored; a
	// download's, once it ended and checked out.
	verified := f.fromStorage || (f.done && f.err == nil)
	f.mu.Unlock()
	if stream != nil {
		if f.claimStream() {
			return c.streamBlob(f), nil
		}
		f.release()
		return c.directBlob(ctx, repo, f.digest)
	}
	if err != nil && f.file == nil {
		f.release()
		return nil, err
	}
	if b := spooledBlob(f); b != nil {
		return b, nil
	}
	r := &fillReader{f: f, ctx: ctx, cold: f.ranged}
	stop := context.AfterFunc(ctx, f.wake)
	return &Blob{
		ReadSeeker: r,
		Size:       f.size,
		Cold:       !f.fromStorage,
		Verified:   verified,
		close:      func() { stop(); r.closeFar(); f.release() },
		err: func() error {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.err
		},
	}, nil
}

// spooledBlob is a finished, verified download's spool file, opened
// afresh: from the moment the digest checks until the fill is forgotten
// (while it uploads to the storage and becomes the hot copy) every read
// of it goes out with sendfile, as a hot copy would, not through the
// fill's reader. nil when the fill is not there yet, or its file is gone
// (moved into a filesystem storage, which then serves it). It takes over
// the caller's reference to the fill: the open file needs none.
func spooledBlob(f *fill) *Blob {
	// Ended and checked: a copy from storage counts as verified from
	// its first byte, but is not whole before it ends.
	f.mu.Lock()
	whole := f.done && f.err == nil && f.file != nil
	f.mu.Unlock()
	if !whole {
		return nil
	}
	file, err := os.Open(f.file.Name())
	if err != nil {
		return nil
	}
	info, err := file.Stat()
	// The name must still be the spool's file: the one the fill wrote
	// and checked, whole.
	spool, serr := f.file.Stat()
	if err != nil || serr != nil || !os.SameFile(info, spool) || info.Size() != f.written {
		file.Close()
		return nil
	}
	f.release()
	return &Blob{ReadSeeker: file, Size: f.written, ModTime: info.ModTime(),
		File: true, Verified: true, close: func() { file.Close() }}
}

// fillFor returns the running fill for d, with a reference taken for the
// caller; with start, it starts an upstream download if none runs, and
// nil only without.
func (c *Cache) fillFor(ctx context.Context, repo string, d digest.Digest, start bool) *fill {
	var run func(context.Context, *fill)
	if start {
		run = func(ctx context.Context, f *fill) { c.download(ctx, repo, f) }
	}
	return c.startFill(ctx, d, run, func(f *fill) {
		f.ranged = func(ctx context.Context, off, end int64) (io.ReadCloser, error) {
			b, err := c.up.GetBlobRange(ctx, repo, d, off, end)
			if err != nil {
				c.log.V(1).Info("no range from the upstream; waiting for the download", "digest", d, "offset", off, "error", err.Error())
				return nil, err
			}
			c.metrics.coldRanges.WithLabelValues(c.registry).Inc()
			return b.Body, nil
		}
	})
}

// startFill returns the running fill for d, or, with run, starts one
// (set up by init) and runs it. A new fill keeps ctx's values (whether
// another replica forwarded the request, say), not its end: it runs
// until Close, or until nobody reads it.
func (c *Cache) startFill(ctx context.Context, d digest.Digest, run func(context.Context, *fill), init func(*fill)) *fill {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.fills[d]; f != nil && f.acquire() {
		return f
	}
	if run == nil {
		return nil
	}
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stopWithCache := context.AfterFunc(c.background, func() { cancel(context.Cause(c.background)) })
	f := newFill(d, cancel, c.limits.Abandoned)
	init(f)
	f.refs++ // the caller's
	c.fills[d] = f
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		defer stopWithCache()
		if !f.fromStorage {
			running := c.metrics.downloads.WithLabelValues(c.registry)
			running.Inc()
			defer running.Dec() // last: the blob is stored, or given up, and forgotten
		}
		defer f.release()
		defer f.cancel(nil)
		ctx, cancel := context.WithTimeout(ctx, c.fillTimeout)
		defer cancel()
		defer func() {
			c.mu.Lock()
			delete(c.fills, f.digest)
			c.mu.Unlock()
		}()
		run(ctx, f)
	}()
	return f
}

// download fetches one blob from the upstream. It runs detached from any
// client's request: a client hanging up does not cancel the download
// others are reading; only everyone leaving does (see fill.release).
func (c *Cache) download(ctx context.Context, repo string, f *fill) {
	log := c.log.WithValues("repository", repo, "digest", f.digest)
	start := time.Now()

	select {
	case c.downloads <- struct{}{}:
		defer func() { <-c.downloads }()
	case <-ctx.Done():
		f.finish(fmt.Errorf("%w: waiting for a download slot: %w", upstream.ErrUnreachable, context.Cause(ctx)))
		return
	}
	// A download cut before, by a restart too, goes on where it stopped.
	verifier := f.digest.Verifier()
	part, err := c.openPartial(f.digest, -1, verifier)
	if err != nil {
		log.Info("cannot open the blob's resumable download; downloading it whole", "error", err.Error())
	}
	var blob *upstream.Blob
	if part != nil && part.resumeAt > 0 {
		log.Info("resuming the blob's download where an earlier one stopped", "bytes", part.resumeAt, "of", part.size)
		c.metrics.resumes.WithLabelValues(c.registry).Inc()
		rest := io.NopCloser(strings.NewReader("")) // all there: checked, then stored
		if part.resumeAt < part.size {
			rest, err = c.fetchFrom(ctx, repo, f.digest, part.resumeAt, part.size)
		}
		if err == nil {
			blob = &upstream.Blob{Body: rest, Size: part.size}
		}
	} else {
		// From the first byte: whatever a damaged file fed the
		// verifier is not the blob's start.
		verifier = f.digest.Verifier()
		blob, err = c.up.GetBlob(ctx, repo, f.digest)
	}
	declared, known := c.declared.size(f.digest)
	switch {
	case err != nil:
	case known && blob.Size >= 0 && blob.Size != declared:
		blob.Body.Close()
		wrong := ErrDigestMismatch
		if blob.Size > declared {
			wrong = ErrTooLarge
		}
		err = fmt.Errorf("%w: the upstream announces %d bytes for a blob the cached manifest gives %d", wrong, blob.Size, declared)
	case blob.Size > c.limits.MaxBlobSize:
		blob.Body.Close()
		err = fmt.Errorf("%w: the upstream announces %d bytes, over the %d-byte limit", ErrTooLarge, blob.Size, c.limits.MaxBlobSize)
	}
	if err != nil {
		if part != nil {
			part.drop = errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrTooLarge)
			part.close()
		}
		f.finish(err)
		log.Info("upstream blob fetch failed", "error", err.Error())
		return
	}
	// Cut at the manifest's size, else the upstream's, else the limit.
	limit := blob.Size
	switch {
	case known:
		limit = declared
		blob.Size = declared
	case limit < 0:
		limit = c.limits.MaxBlobSize
	}
	var resumeAt int64
	if part != nil {
		resumeAt = part.resumeAt
	}
	resumed := &resuming{ctx: ctx, body: blob.Body, off: resumeAt, size: blob.Size, onCut: func(off int64, err error) {
		c.metrics.resumes.WithLabelValues(c.registry).Inc()
		log.Info("the upstream cut the blob's transfer; resuming where it stopped", "bytes", off, "of", blob.Size, "error", err.Error())
	}}
	if !blob.FromReplica {
		resumed.reopen = func(ctx context.Context, off, end int64) (io.ReadCloser, error) {
			return c.fetchFrom(ctx, repo, f.digest, off, end)
		}
		if part == nil && blob.Size >= resumableSize {
			if part, err = c.openPartial(f.digest, blob.Size, nil); err != nil {
				log.Info("cannot open a resumable download for the blob; a cut restarts it", "error", err.Error())
			}
		}
	}
	defer resumed.Close()
	body := silenceTimeout(resumed, c.limits.Silence, f.cancel)
	defer body.stop()
	var file *os.File
	if part != nil {
		if c.hot != nil {
			c.hot.Room(blob.Size)
		}
		file = part.file
	} else {
		file, err = c.spoolFile(blob.Size)
	}
	switch {
	case errors.Is(err, storage.ErrNoSpace) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT):
		log.Info("the spool has no room for the blob: streaming it through uncached", "bytes", blob.Size, "dir", c.spoolDir)
		c.passThrough(ctx, f, io.LimitReader(body, limit+1), blob.Size)
		return
	case err != nil:
		f.finish(fmt.Errorf("spooling blob: %w", err))
		log.Error(err, "cannot create spool file", "dir", c.spoolDir)
		return
	}
	f.mu.Lock() // a reader's release reads it
	f.partial = part
	f.mu.Unlock()
	f.start(file, blob.Size)
	f.advance(int(resumeAt))
	err = f.copyFrom(body, limit, verifier)
	if !blob.FromReplica {
		c.countPulled(kindBlob, f.written-resumeAt)
	}
	if part != nil {
		// Over for good: the blob, or bytes that are not it. Cut, it
		// waits for the next request, or the next start.
		part.drop = err == nil || errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrTooLarge)
	}
	f.finish(err)
	if err != nil {
		log.Info("upstream blob transfer failed, nothing cached", "error", err.Error(), "cause", fmt.Sprint(context.Cause(ctx)), "bytes", f.written)
		return
	}
	if blob.FromReplica {
		c.keepHot(f) // the replica it came from stores it
		return
	}
	if err := c.commit(ctx, f); err != nil {
		c.storageFailed(err, "store blob", "digest", f.digest)
		return
	}
	c.keepHot(f)
	c.stored(Stored{Bytes: f.written})
	log.Info("cached blob", "bytes", f.written, "duration", time.Since(start).Round(time.Millisecond).String())
}

// fetchFrom opens d's bytes from off to end (exclusive) at the upstream:
// a range, or, from an upstream that serves no ranges, the whole blob with
// its first off bytes read past.
func (c *Cache) fetchFrom(ctx context.Context, repo string, d digest.Digest, off, end int64) (io.ReadCloser, error) {
	b, err := c.up.GetBlobRange(ctx, repo, d, off, end)
	if errors.Is(err, upstream.ErrRangeIgnored) {
		c.log.Info("the upstream serves no ranges: downloading the blob again from its start", "digest", d, "skipping", off)
		if b, err = c.up.GetBlob(ctx, repo, d); err == nil {
			if _, err = io.CopyN(io.Discard, b.Body, off); err != nil {
				b.Body.Close()
			}
		}
	}
	if err != nil {
		return nil, err
	}
	return b.Body, nil
}

// spoolFile is a new file in the spool with size bytes set aside (a
// wrapped storage.ErrNoSpace when they cannot be); with a hot tier, it
// first evicts to make room for them.
func (c *Cache) spoolFile(size int64) (*os.File, error) {
	if c.hot != nil {
		c.hot.Room(size)
	}
	file, err := os.CreateTemp(c.spoolDir, "blob-")
	if err != nil {
		return nil, err
	}
	if err := storage.Reserve(file, size); err != nil {
		file.Close()
		os.Remove(file.Name())
		return nil, err
	}
	return file, nil
}

// keepHot makes a verified download this replica's hot copy.
func (c *Cache) keepHot(f *fill) {
	if c.hot != nil {
		c.hot.Keep(f.digest, f.file.Name(), f.written)
	}
}

// hotFill copies a stored blob to this replica's hot tier while it is
// served, so that the next read of it costs no storage request. Every
// request for it meanwhile reads the one copy, as they would a download.
// nil without a hot tier, or when the blob is not stored or does not fit.
// The blob is opened once, for its size and its bytes: on S3 an Open is
// the HEAD a Stat would be, and the GET waits for the first read.
func (c *Cache) hotFill(ctx context.Context, d digest.Digest) *fill {
	if c.hot == nil {
		return nil
	}
	key := layout.Blob(d)
	// The copy serves everyone reading it: its reader ends with the
	// fill (its timeout, its silence, the cache closing), not with the
	// client that asked first.
	readCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	r, info, err := c.store.Open(readCtx, key)
	if err != nil {
		stop()
		return nil
	}
	if !c.hot.Room(info.Size) {
		r.Close()
		stop()
		return nil
	}
	started := false
	f := c.startFill(ctx, d, func(ctx context.Context, f *fill) {
		defer stop()
		defer context.AfterFunc(ctx, stop)()
		c.copyHot(f, r, info.Size)
	}, func(f *fill) {
		started = true
		f.fromStorage = true
		f.ranged = func(ctx context.Context, off, end int64) (io.ReadCloser, error) {
			r, _, err := c.store.Open(ctx, key)
			if err != nil {
				return nil, err
			}
			if _, err := r.Seek(off, io.SeekStart); err != nil {
				r.Close()
				return nil, err
			}
			return struct {
				io.Reader
				io.Closer
			}{io.LimitReader(r, end-off), r}, nil
		}
	})
	if !started { // a fill ran already: it is read instead
		r.Close()
		stop()
	}
	return f
}

// copyHot reads a stored blob, opened as r, into a spool file, checks
// its digest and keeps it hot.
func (c *Cache) copyHot(f *fill, r io.ReadCloser, size int64) {
	defer r.Close()
	body := silenceTimeout(r, c.limits.Silence, f.cancel)
	defer body.stop()
	file, err := c.spoolFile(size)
	if err != nil {
		f.finish(err)
		return
	}
	f.start(file, size)
	err = f.copyFrom(body, size, f.digest.Verifier())
	f.finish(err)
	if err != nil {
		c.log.Info("copying a stored blob to the hot tier failed", "digest", f.digest, "error", err.Error())
		return
	}
	c.keepHot(f)
}

// commit moves a verified spool file into storage.
func (c *Cache) commit(ctx context.Context, f *fill) error {
	key := layout.Blob(f.digest)
	if fp, ok := c.store.(storage.FilePutter); ok {
		return fp.PutFile(ctx, key, f.file.Name())
	}
	return c.store.Put(ctx, key, io.NewSectionReader(f.file, 0, f.written), f.written)
}

// warmBlob makes sure a blob is cached, without a client.
func (c *Cache) warmBlob(ctx context.Context, repo string, d digest.Digest) error {
	if _, err := c.store.Stat(ctx, layout.Blob(d)); err == nil {
		return nil
	}
	f := c.fillFor(ctx, repo, d, true)
	defer f.release()
	return f.wait(ctx)
}
