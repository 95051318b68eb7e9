package localmirror

import (
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/share"
)

// peerSilence is how long a peer may send nothing before it is given up
// (and reported): a stalled holder costs this, then the cache serves.
const peerSilence = 3 * time.Second

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

// arriving registers a blob being received at path.
func (m *Mirror) arriving(d digest.Digest, path string) (*arrival, func(ok bool)) {
	a := &arrival{path: path}
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

// fromPeer fetches d from the holder the cache sent it to, whole, into
// the store, checked: true when it is there now. A holder that does not
// answer, stalls, or sends wrong bytes costs the caller a retry from the
// cache, reporting it.
func (m *Mirror) fromPeer(ctx context.Context, d digest.Digest, loc string) bool {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
	if err != nil {
		return false
	}
	m.key.Sign(req, m.self)
	resp, err := m.peers.Do(req)
	if err != nil {
		m.log.Info("a peer did not answer", "digest", d, "peer", share.HolderOf(loc), "error", err.Error())
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		m.log.Info("a peer refused", "digest", d, "peer", share.HolderOf(loc), "status", resp.Status)
		return false
	}
	spool, err := os.CreateTemp(m.spool, "peer-")
	if err != nil {
		return false
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	a, finish := m.arriving(d, spool.Name())
	// A peer that goes silent is given up.
	watchdog := time.AfterFunc(peerSilence, cancel)
	defer watchdog.Stop()
	verifier := d.Verifier()
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, rerr := resp.Body.Read(buf)
		if k > 0 {
			watchdog.Reset(peerSilence)
			if _, err := spool.Write(buf[:k]); err != nil {
				finish(false)
				return false
			}
			verifier.Write(buf[:k])
			n += int64(k)
			a.advance(k)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			m.log.Info("a peer's transfer failed", "digest", d, "peer", share.HolderOf(loc), "bytes", n, "error", rerr.Error())
			finish(false)
			return false
		}
	}
	if !verifier.Verified() || (resp.ContentLength >= 0 && n != resp.ContentLength) {
		m.log.Info("a peer sent bytes that do not match their digest", "digest", d, "peer", share.HolderOf(loc), "bytes", n)
		finish(false)
		return false
	}
	m.metrics.bytes.WithLabelValues("peer").Add(float64(n))
	m.store.Keep(d, spool.Name(), n)
	finish(true)
	_, kept := m.store.Size(d)
	return kept
}

// PeerHandler serves the node's blobs to the other nodes the cache sends
// here: GET /blobs/<digest>?ticket=…, signed by the asking node, with the
// cache's ticket for that blob, that node and this one. A blob still
// arriving is served as it arrives.
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
		served := m.metrics.peerServed.WithLabelValues(zoneOf(asker, m.self))
		if m.servePeerFromStore(w, r, d, served) {
			return
		}
		a := m.awaitArrival(r.Context(), d)
		if a == nil && m.servePeerFromStore(w, r, d, served) {
			return
		}
		if a == nil {
			// Evicted, or never arrived: the asker goes back to the cache.
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
	f, info, ok := m.store.Get(d)
	if !ok {
		return false
	}
	defer f.Close()
	setBlobHeaders(w, d)
	http.ServeContent(w, r, "", info.ModTime(), f)
	served.Add(float64(info.Size()))
	return true
}

// awaitArrival is d's arrival. The cache counts a node as holding a blob
// from the moment it asks for it: a peer sent here at once may come
// before the blob's first bytes do, and waits a little for them.
func (m *Mirror) awaitArrival(ctx context.Context, d digest.Digest) *arrival {
	deadline := time.Now().Add(peerSilence)
	for {
		m.mu.Lock()
		a := m.arrivals[d]
		m.mu.Unlock()
		if a != nil {
			return a
		}
		if _, ok := m.store.Size(d); ok || time.Now().After(deadline) || ctx.Err() != nil {
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
		writeError(w, r, http.StatusNotFound, "BLOB_UNKNOWN", "this node does not hold "+d.String())
		return
	}
	defer f.Close()
	setBlobHeaders(w, d)
	w.WriteHeader(http.StatusOK)
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
