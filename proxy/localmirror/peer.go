package localmirror

import (
	"context"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/share"
)

const (
	// peerSilence is how long a peer may send nothing before it is
	// given up (and reported): a stalled holder costs this, then the
	// cache serves.
	peerSilence = 3 * time.Second
	// arrivalWait is how long a peer request waits for a blob this node
	// is still asking the cache for to start arriving: the cache counts
	// a node as a holder from its request on, and a cold blob's first
	// byte may take the upstream's time.
	arrivalWait = time.Minute
	// maxPeerServes is how many peers this node serves at once; past it
	// an asker is told it is busy (and is served by the cache).
	maxPeerServes = 8
	// peerWrite bounds each write to a peer: one that stops reading
	// frees its slot and its file.
	peerWrite = 30 * time.Second
)

// WithSharing makes the mirror one of the nodes that share: its blob
// requests to the cache are signed as self (so the cache counts it as a
// holder and may send it to another node's holder), and PeerHandler
// serves what it holds to the nodes the cache sends, with a ticket.
func WithSharing(key *share.Key, self share.Node) Option {
	return func(m *Mirror) { m.key, m.self = key, self }
}

// arrival is a blob on its way into the store, readable by peers as it
// arrives.
type arrival struct {
	path string
	size int64 // -1: not said
	mu   sync.Mutex
	cond *sync.Cond
	n    int64
	done bool
	ok   bool // the whole blob checked out
}

func (a *arrival) advance(n int) {
	a.mu.Lock()
	a.n += int64(n)
	a.cond.Broadcast()
	a.mu.Unlock()
}

func (a *arrival) finish(ok bool) {
	a.mu.Lock()
	a.done, a.ok = true, ok
	a.cond.Broadcast()
	a.mu.Unlock()
}

// arriving registers a blob of size bytes being received at path.
func (m *Mirror) arriving(d digest.Digest, path string, size int64) (*arrival, func(ok bool)) {
	a := &arrival{path: path, size: size}
	a.cond = sync.NewCond(&a.mu)
	m.mu.Lock()
	m.arrivals[d] = a
	m.mu.Unlock()
	return a, func(ok bool) {
		a.finish(ok)
		m.mu.Lock()
		if m.arrivals[d] == a {
			delete(m.arrivals, d)
		}
		m.mu.Unlock()
	}
}

// fromPeer fetches d from the holder the cache sent this node to, whole,
// and checks it: the checked file (kept in the store when it fits), or
// how to report the holder to the cache (share.BadPeerHeader: it did not
// answer, went silent, or sent wrong bytes; share.BusyPeerHeader: it had
// no room for this node). Either way a holder costs a retry from the
// cache, never a wrong blob.
func (m *Mirror) fromPeer(ctx context.Context, d digest.Digest, loc string) (*os.File, string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	holder := share.HolderOf(loc)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
	if err != nil {
		return nil, share.BadPeerHeader
	}
	m.sign(req)
	resp, err := m.peers.Do(req)
	if err != nil {
		m.log.Info("a peer did not answer", "digest", d, "peer", holder, "error", err.Error())
		return nil, share.BadPeerHeader
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusServiceUnavailable:
		return nil, share.BusyPeerHeader
	case resp.StatusCode != http.StatusOK || resp.ContentLength < 0:
		m.log.Info("a peer refused", "digest", d, "peer", holder, "status", resp.Status)
		return nil, share.BadPeerHeader
	}
	size := resp.ContentLength
	m.store.Room(size)
	spool, err := os.CreateTemp(m.spool, "peer-")
	if err != nil {
		return nil, share.BusyPeerHeader // this node's trouble, not the peer's
	}
	defer os.Remove(spool.Name()) // moved into the store, unless it did not fit
	a, finish := m.arriving(d, spool.Name(), size)
	// A peer that goes silent is given up.
	watchdog := time.AfterFunc(peerSilence, cancel)
	defer watchdog.Stop()
	verifier := d.Verifier()
	n, err := io.Copy(io.MultiWriter(spool, verifier, arrivalWriter{a}), &silent{r: io.LimitReader(resp.Body, size+1), watchdog: watchdog, after: peerSilence})
	if err != nil || n != size || !verifier.Verified() {
		m.log.Info("a peer's transfer failed or its bytes do not match their digest", "digest", d, "peer", holder, "bytes", n, "of", size, "error", errString(err))
		finish(false)
		spool.Close()
		return nil, share.BadPeerHeader
	}
	m.store.Keep(d, spool.Name(), n)
	finish(true)
	// The open file is the checked bytes, kept or not.
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		spool.Close()
		return nil, share.BusyPeerHeader
	}
	return spool, ""
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// arrivalWriter counts the bytes that landed, for peers following them.
type arrivalWriter struct{ a *arrival }

func (w arrivalWriter) Write(p []byte) (int, error) {
	w.a.advance(len(p))
	return len(p), nil
}

// PeerHandler serves the node's blobs to the other nodes the cache sends
// here: GET /blobs/<digest>?ticket=…, signed by the asking node, with the
// cache's ticket for that blob, that node and this one. A blob still
// arriving is served as it arrives. At most maxPeerServes at once: past
// that, 503, and the asker goes back to the cache.
func (m *Mirror) PeerHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ref, ok := strings.CutPrefix(r.URL.Path, "/blobs/")
		d, err := digest.Parse(ref)
		if r.Method != http.MethodGet || !ok || err != nil {
			writeError(w, r, http.StatusNotFound, "NOT_FOUND", "peers serve GET /blobs/<digest> only")
			return
		}
		asker, err := m.key.Admit(r, m.self.Name, d)
		if err != nil {
			writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", err.Error())
			return
		}
		select {
		case m.serving <- struct{}{}:
			defer func() { <-m.serving }()
		default:
			writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "this node serves as many peers as it may")
			return
		}
		served := m.metrics.peerServed.WithLabelValues(zoneOf(asker, m.self))
		if m.servePeerFromStore(w, r, d, served) {
			return
		}
		a := m.awaitArrival(r.Context(), d)
		if a == nil && m.servePeerFromStore(w, r, d, served) {
			return
		}
		if a == nil {
			// Evicted, or its own download failed: the asker goes back
			// to the cache, which stops sending nodes here for it.
			writeError(w, r, http.StatusNotFound, "BLOB_UNKNOWN", "this node does not hold "+d.String())
			return
		}
		m.log.V(1).Info("serving a peer a blob still arriving", "digest", d, "peer", asker.Name)
		m.followArrival(w, r, d, a, served)
	})
}

// zoneOf labels a peer's bytes: to a node of this one's zone, or not
// (which the cache never sends while the zone has a holder).
func zoneOf(asker, self share.Node) string {
	if asker.Zone == self.Zone {
		return "zone"
	}
	return "other-zone"
}

func (m *Mirror) servePeerFromStore(w http.ResponseWriter, r *http.Request, d digest.Digest, served prometheus.Counter) bool {
	f, info, done, ok := m.store.Get(d)
	if !ok {
		return false
	}
	defer done()
	// A peer that stops reading lets go of the file and its slot: the
	// whole blob may take as long as it would at 1 MB/s, and a little.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(peerWrite + time.Duration(info.Size()/(1<<20))*time.Second))
	setBlobHeaders(w, d)
	http.ServeContent(w, r, "", info.ModTime(), f)
	served.Add(float64(info.Size()))
	return true
}

// awaitArrival is d's arrival. The cache counts a node as holding a blob
// from the moment it asks for it: a peer sent here at once may come
// before the blob's first bytes do, and waits for them while this node
// is still asking the cache for it (at most arrivalWait).
func (m *Mirror) awaitArrival(ctx context.Context, d digest.Digest) *arrival {
	deadline := time.Now().Add(arrivalWait)
	for {
		m.mu.Lock()
		a, asking := m.arrivals[d], m.asking[d] > 0
		m.mu.Unlock()
		if a != nil {
			return a
		}
		if !asking || time.Now().After(deadline) || ctx.Err() != nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// followArrival streams a blob to a peer as it lands; a blob that turns
// out wrong is cut short (the peer checks the digest too).
func (m *Mirror) followArrival(w http.ResponseWriter, r *http.Request, d digest.Digest, a *arrival, served prometheus.Counter) {
	f, err := os.Open(a.path)
	if err != nil {
		writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "this node does not hold "+d.String())
		return
	}
	defer f.Close()
	setBlobHeaders(w, d)
	if a.size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(a.size, 10))
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	stop := context.AfterFunc(r.Context(), func() { a.mu.Lock(); a.cond.Broadcast(); a.mu.Unlock() })
	defer stop()
	var off int64
	buf := make([]byte, 256<<10)
	for {
		a.mu.Lock()
		for off >= a.n && !a.done && r.Context().Err() == nil {
			a.cond.Wait()
		}
		n, done, ok := a.n, a.done, a.ok
		a.mu.Unlock()
		if r.Context().Err() != nil || (done && !ok) {
			panic(http.ErrAbortHandler)
		}
		if off >= n && done {
			return
		}
		for off < n {
			k, err := f.ReadAt(buf[:min(int64(len(buf)), n-off)], off)
			if k > 0 {
				rc.SetWriteDeadline(time.Now().Add(peerWrite))
				if _, werr := w.Write(buf[:k]); werr != nil {
					return
				}
				off += int64(k)
				served.Add(float64(k))
			}
			if err != nil && err != io.EOF {
				panic(http.ErrAbortHandler)
			}
		}
	}
}
