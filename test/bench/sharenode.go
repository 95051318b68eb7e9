package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/depproxy/depproxy/proxy/share"
)

// simNode is one simulated node of the sharing rollout, in this process.
// It takes the steps `depproxy node` (proxy/localmirror) takes, with the
// real protocol: its blob requests to the cache are signed with the nodes'
// key (share.Key.Sign); a redirect with a ticket sends it to a holder's
// peer listener, a real HTTP server on loopback, where the holder admits
// it with share.Key.Admit; a holder serves a blob still arriving as it
// arrives, and cuts its followers when its own copy fails; a peer that
// refuses, does not answer in peerSilence, goes silent or sends bytes
// that fail the digest is reported to the cache (share.BadPeerHeader),
// which serves the blob itself.
//
// What is simulated: the node's store. The node checks every byte it
// receives against the blob's digest, as the agent does, but does not
// write it anywhere: it counts how far its copy has arrived, and serves
// peers from the one read-only copy of the blob this program holds, up
// to that point (1,000 stores of the image would not fit this machine's
// disk). Its links: ingress and egress are token buckets (linkRate each),
// which is what bounds a node; the machine's loopback is much faster.
type simNode struct {
	self  share.Node
	key   *share.Key // nil: the node does not share
	cache string     // the cache's URL as this node reaches it (a Service spreads nodes over replicas)
	blobs map[digest.Digest][]byte

	in, out     *rate.Limiter
	cacheClient *http.Client
	peerClient  *http.Client
	srv         *http.Server
	ctx         context.Context
	kill        context.CancelFunc

	mu       sync.Mutex
	arrivals map[digest.Digest]*simArrival // arriving, or held once done

	fromPeers, fromCache, served atomic.Int64
	badPeers                     atomic.Int64
	// why is why each peer failed this node, for the bench's log.
	why sync.Map // string → *atomic.Int64
}

// failed counts a peer's failure by its kind.
func (n *simNode) failed(err error) {
	kind := err.Error()
	for _, k := range []string{"404", "timeout awaiting response headers", "connection refused", "do not match", "context canceled", "unexpected EOF", "connection reset", "i/o timeout"} {
		if strings.Contains(kind, k) {
			kind = k
			break
		}
	}
	c, _ := n.why.LoadOrStore(kind, new(atomic.Int64))
	c.(*atomic.Int64).Add(1)
}

// simChunk is what one read or write of a node's link moves at most (the
// token bucket's burst).
const simChunk = 32 << 10

// peerSilence is how long a peer may say nothing before it is reported:
// the agent's (proxy/localmirror) 3 s, scaled with the links. At 1 Gbit/s
// 3 s is hundreds of megabytes; at the modelled 256 KiB/s, shared by the
// few followers of a holder a few hops down a tree that all start in the
// same second, it is a handful of chunks, and the first bytes of a blob
// take that long to reach the bottom. 15 s here is still about 100×
// fewer bytes than the agent's 3 s at 1 Gbit/s.
const peerSilence = 15 * time.Second

type simArrival struct {
	mu   sync.Mutex
	cond *sync.Cond
	n    int64
	done bool
	ok   bool
}

func (a *simArrival) advance(k int) {
	a.mu.Lock()
	a.n += int64(k)
	a.cond.Broadcast()
	a.mu.Unlock()
}

func (a *simArrival) finish(ok bool) {
	a.mu.Lock()
	a.done, a.ok = true, ok
	a.cond.Broadcast()
	a.mu.Unlock()
}

// newSimNode starts a node's peer listener (when key is set).
func newSimNode(name, zone, cache string, key *share.Key, blobs map[digest.Digest][]byte, linkRate int) (*simNode, error) {
	ctx, cancel := context.WithCancel(context.Background())
	n := &simNode{self: share.Node{Name: name, Zone: zone}, key: key, cache: cache, blobs: blobs,
		in: rate.NewLimiter(rate.Limit(linkRate), simChunk), out: rate.NewLimiter(rate.Limit(linkRate), simChunk),
		ctx: ctx, kill: cancel, arrivals: map[digest.Digest]*simArrival{}}
	// The agent gives the cache and peers a second to connect. Here
	// 3,000 connections reach three listeners in the same instant, and
	// as many more the nodes' listeners, past the loopback's SYN backlog
	// (2,048); a dropped SYN is sent again after a second, so the
	// simulated nodes wait longer. A killed node's listener is closed:
	// connecting to it is refused at once, whatever the timeout.
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	cacheDialer := dialer
	n.cacheClient = &http.Client{Transport: &http.Transport{DialContext: cacheDialer.DialContext, ResponseHeaderTimeout: time.Minute, MaxIdleConnsPerHost: shareParallel},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	n.peerClient = &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, ResponseHeaderTimeout: peerSilence, MaxIdleConnsPerHost: shareParallel}}
	if key == nil {
		return n, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	n.self.Peer = "http://" + ln.Addr().String()
	n.srv = &http.Server{Handler: http.HandlerFunc(n.servePeer), ReadHeaderTimeout: 10 * time.Second}
	go n.srv.Serve(ln)
	return n, nil
}

// stop kills the node: its pulls end, its peer listener and every
// connection to it close.
func (n *simNode) stop() {
	n.kill()
	if n.srv != nil {
		n.srv.Close()
	}
	n.cacheClient.CloseIdleConnections()
	n.peerClient.CloseIdleConnections()
}

// pull fetches the image's blobs as a runtime does through its agent, a
// few at once.
func (n *simNode) pull(repo string, blobs []digest.Digest) error {
	slots := make(chan struct{}, shareParallel)
	errs := make(chan error, len(blobs))
	var wg sync.WaitGroup
	for _, d := range blobs {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			var err error
			// The runtime retries a blob whose transfer was cut.
			for range 3 {
				if err = n.blob(repo, d); err == nil || n.ctx.Err() != nil {
					break
				}
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// blob is localmirror's Mirror.blob: from the cache, or from the peer
// the cache sends the node to, reporting it to the cache if it fails.
func (n *simNode) blob(repo string, d digest.Digest) error {
	resp, err := n.ask(repo, d, "")
	if err != nil {
		return err
	}
	if holder := share.HolderOf(resp.Header.Get("Location")); holder != "" && resp.StatusCode == http.StatusTemporaryRedirect {
		resp.Body.Close()
		err := n.fromPeer(d, resp.Header.Get("Location"))
		if err == nil {
			n.reportHave(repo, d, holder)
			return nil
		}
		n.badPeers.Add(1)
		n.failed(err)
		if n.ctx.Err() != nil {
			return n.ctx.Err()
		}
		if resp, err = n.ask(repo, d, holder); err != nil {
			return err
		}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: the cache answered %s for %s", n.self.Name, resp.Status, d)
	}
	got, err := n.receive(d, resp, nil)
	n.fromCache.Add(got)
	if err == nil {
		n.reportHave(repo, d, "")
	}
	return err
}

// reportHave is localmirror's reportHave: the node tells the cache it has
// d whole now, fetched from holder ("" for the cache).
func (n *simNode) reportHave(repo string, d digest.Digest, holder string) {
	if n.key == nil {
		return
	}
	req, err := http.NewRequestWithContext(n.ctx, http.MethodHead, n.cache+"/v2/"+repo+"/blobs/"+d.String(), nil)
	if err != nil {
		return
	}
	req.Header.Set(share.HaveHeader, holder)
	n.key.Sign(req, n.self)
	if resp, err := n.cacheClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// ask asks the cache for d, signed as the node when it shares.
func (n *simNode) ask(repo string, d digest.Digest, badPeer string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(n.ctx, http.MethodGet, n.cache+"/v2/"+repo+"/blobs/"+d.String(), nil)
	if err != nil {
		return nil, err
	}
	if n.key != nil {
		if badPeer != "" {
			req.Header.Set(share.BadPeerHeader, badPeer)
		}
		n.key.Sign(req, n.self)
	}
	return n.cacheClient.Do(req)
}

// fromPeer is localmirror's fromPeer: the whole blob from the holder, or
// an error to report it for.
func (n *simNode) fromPeer(d digest.Digest, loc string) error {
	ctx, cancel := context.WithCancel(n.ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
	if err != nil {
		return err
	}
	n.key.Sign(req, n.self)
	resp, err := n.peerClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the peer answered %s", resp.Status)
	}
	watchdog := time.AfterFunc(peerSilence, cancel)
	defer watchdog.Stop()
	got, err := n.receive(d, resp, watchdog)
	n.fromPeers.Add(got)
	return err
}

// receive reads a blob through the node's ingress, checking its digest,
// as an arrival peers may follow; a peer's watchdog (nil for the cache)
// is reset on every read, as the agent's is.
func (n *simNode) receive(d digest.Digest, resp *http.Response, watchdog *time.Timer) (int64, error) {
	a := &simArrival{}
	a.cond = sync.NewCond(&a.mu)
	n.mu.Lock()
	n.arrivals[d] = a
	n.mu.Unlock()
	ok := false
	defer func() {
		a.finish(ok)
		if !ok {
			n.mu.Lock()
			if n.arrivals[d] == a {
				delete(n.arrivals, d)
			}
			n.mu.Unlock()
		}
	}()
	verifier := d.Verifier()
	buf := make([]byte, simChunk)
	var got int64
	for {
		k, rerr := resp.Body.Read(buf)
		if k > 0 {
			if watchdog != nil {
				watchdog.Reset(peerSilence)
			}
			if err := n.in.WaitN(n.ctx, k); err != nil {
				return got, err
			}
			verifier.Write(buf[:k])
			got += int64(k)
			a.advance(k)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return got, rerr
		}
	}
	if !verifier.Verified() || got != int64(len(n.blobs[d])) {
		return got, fmt.Errorf("%s: %d bytes that do not match %s", n.self.Name, got, d)
	}
	ok = true
	return got, nil
}

// servePeer is localmirror's PeerHandler: a ticket for this blob, this
// node and the asker, then the blob, whole or as it arrives.
func (n *simNode) servePeer(w http.ResponseWriter, r *http.Request) {
	ref, found := strings.CutPrefix(r.URL.Path, "/blobs/")
	d, err := digest.Parse(ref)
	if r.Method != http.MethodGet || !found || err != nil {
		http.Error(w, "peers serve GET /blobs/<digest> only", http.StatusNotFound)
		return
	}
	if _, err := n.key.Admit(r, n.self.Name, d); err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	a := n.awaitArrival(r.Context(), d)
	if a == nil {
		http.Error(w, "this node does not hold "+d.String(), http.StatusNotFound)
		return
	}
	data := n.blobs[d]
	a.mu.Lock()
	whole := a.done && a.ok
	a.mu.Unlock()
	if whole {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	}
	w.Header().Set("Docker-Content-Digest", d.String())
	w.WriteHeader(http.StatusOK)
	stop := context.AfterFunc(r.Context(), func() { a.mu.Lock(); a.cond.Broadcast(); a.mu.Unlock() })
	defer stop()
	var off int64
	for {
		a.mu.Lock()
		for off >= a.n && !a.done && r.Context().Err() == nil {
			a.cond.Wait()
		}
		have, done, ok := a.n, a.done, a.ok
		a.mu.Unlock()
		if r.Context().Err() != nil || (done && !ok) {
			// The holder's own copy failed: its followers are cut, as
			// the agent cuts them, and go back to the cache.
			panic(http.ErrAbortHandler)
		}
		if off >= have && done {
			return
		}
		for off < have {
			k := min(int64(simChunk), have-off)
			if err := n.out.WaitN(r.Context(), int(k)); err != nil {
				panic(http.ErrAbortHandler)
			}
			if _, err := w.Write(data[off : off+k]); err != nil {
				return
			}
			off += k
			n.served.Add(k)
		}
	}
}

// awaitArrival is localmirror's: the cache counts a node as holding a
// blob from the moment it asks, so a peer may come before the first
// bytes do, and waits up to peerSilence for them, polling.
func (n *simNode) awaitArrival(ctx context.Context, d digest.Digest) *simArrival {
	deadline := time.Now().Add(peerSilence)
	for {
		n.mu.Lock()
		a := n.arrivals[d]
		n.mu.Unlock()
		if a != nil {
			return a
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}
