package share

import (
	"container/list"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// fanout is how many nodes one holder serves one blob at once: each
	// of them holds the blob soon after and is sent others, so the copies
	// grow as a tree, and no holder's link carries the whole zone.
	fanout = 4
	// nodeSends is how many sends a node serves at once over all its
	// blobs before holders with less to do go first. A runtime pulls a
	// few blobs of an image at once, and the nodes that came first hold
	// every one of them: counted per blob only, they served up to
	// fanout × blobs at once, each at that fraction of their link, and
	// the rollout ran at the speed of those few links. Counted per node,
	// every node's link carries a part, each follower gets half a link
	// or more, and in a rollout's burst (each node asks for three blobs
	// at once) the sends past two are spread over the zone.
	nodeSends = 2
	// maxDepth bounds how far from a node that has the blob whole a
	// node may be sent. A copy streams on as it arrives, so depth costs
	// little time; but one failure cuts every node below it. In a
	// rollout's burst the only holders with room are the nodes that
	// just asked, so copies first grow as chains, and each time one
	// reaches the bound the next node goes to a holder already busy.
	maxDepth = 16
	// sending is how long a send counts against a holder's fan-out
	// unless the asker reports it has the blob sooner; receiving is how
	// long a node that asked for a blob counts as receiving it without
	// reporting that it has it: one that never does (its pull failed, it
	// went away) stops being sent others. A blob streams down a tree at
	// a fraction of each link, so both are long: a holder that went away
	// meanwhile costs its askers a report and a retry, not a failed pull.
	sending   = 10 * time.Minute
	receiving = 10 * time.Minute
	// held is how long a node that reported having a blob counts as
	// holding it without saying so again (it may have evicted it).
	held = time.Hour
	// maxBlobs and maxHolders bound what the tracker remembers: the
	// least recently asked blobs, and a blob's oldest holders, go first.
	maxBlobs   = 20000
	maxHolders = 4096
)

// Tracker is the cache's side: it remembers which nodes hold or are
// receiving each blob, and sends a node asking for one to a holder in its
// zone, with a ticket.
type Tracker struct {
	key     *Key
	now     func() time.Time
	metrics *Metrics

	mu    sync.Mutex
	blobs map[digest.Digest]*list.Element // of *blobHolders, most recent first
	lru   *list.List
	sends sends
}

type blobHolders struct {
	digest  digest.Digest
	holders []*holder
	sends   sends
}

// sends counts, per node name, the askers it serves at once over all
// blobs.
type sends map[string]int

func (s sends) add(node string, n int) {
	if s[node] += n; s[node] <= 0 {
		delete(s, node)
	}
}

type holder struct {
	node Node
	// whole: the node reported having the blob, at since; else it is
	// receiving it since then.
	whole bool
	since time.Time
	// depth is how far its copy is from one the cache served: 0 when
	// the cache served it, its holder's depth + 1 when a peer did.
	depth int
	// askers it was given, and when.
	askers map[string]time.Time
}

// Metrics count what the tracker decided.
type Metrics struct {
	redirects *prometheus.CounterVec
	served    *prometheus.CounterVec
	dropped   prometheus.Counter
	saved     *prometheus.CounterVec
}

// NewMetrics registers the tracker's metrics with r (nil: not exported).
func NewMetrics(r prometheus.Registerer) *Metrics {
	m := &Metrics{
		redirects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depproxy_share_redirects_total",
			Help: "Node blob requests sent to a holder node of their zone instead of served by the cache, by zone"}, []string{"zone"}),
		served: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depproxy_share_served_total",
			Help: "Node blob requests the cache served itself (no holder in the zone, all busy, or a holder reported bad), by zone"}, []string{"zone"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "depproxy_share_dropped_holders_total",
			Help: "Holders dropped because an asking node reported they did not serve the blob"}),
		saved: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depproxy_share_saved_bytes_total",
			Help: "Bytes of the blobs nodes reported having fetched whole from a peer the cache sent them to: the egress the redirects saved, by zone"}, []string{"zone"}),
	}
	if r != nil {
		r.MustRegister(m.redirects, m.served, m.dropped, m.saved)
	}
	return m
}

// NewTracker returns a tracker whose tickets key signs.
func NewTracker(key *Key, m *Metrics) *Tracker {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Tracker{key: key, now: time.Now, metrics: m, blobs: map[digest.Digest]*list.Element{}, lru: list.New(), sends: sends{}}
}

// Send decides where a node's blob request goes: "" to be served by the
// cache, else the holder's URL with a ticket. A request that does not come
// from a node is served; one that claims to and does not prove it is
// refused (ErrBadSignature). A node's HEAD with HaveHeader reports that it
// now has the blob whole (and from which holder): it is served as any
// HEAD. A GET counts the asking node as receiving the blob; one that
// reports a bad peer is served here, and the peer is dropped; one that
// reports a busy peer is served here.
func (t *Tracker) Send(r *http.Request, d digest.Digest) (string, error) {
	asker, ok, err := t.key.Verify(r)
	if err != nil || !ok {
		return "", err
	}
	asker.Zone, asker.Tally = zoneLabel(asker.Zone), nil
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	bh := t.entry(d)
	if r.Method == http.MethodHead {
		if from, ok := r.Header[HaveHeader]; ok {
			bh.have(asker, strings.Join(from, ""), now)
		}
		return "", nil
	}
	bad, busy := r.Header.Get(BadPeerHeader), r.Header.Get(BusyPeerHeader)
	if bad != "" && bh.drop(bad) {
		t.metrics.dropped.Inc()
	}
	var to *holder
	if bad == "" && busy == "" {
		to = bh.pick(asker, now)
	}
	depth := 0
	if to != nil {
		depth = to.depth + 1
		bh.give(to, asker.Name, now)
	}
	bh.receiving(asker, depth, now)
	if to == nil {
		t.metrics.served.WithLabelValues(asker.Zone).Inc()
		return "", nil
	}
	t.metrics.redirects.WithLabelValues(asker.Zone).Inc()
	loc := strings.TrimSuffix(to.node.Peer, "/") + "/blobs/" + d.String() + "?" + TicketParam + "=" + url.QueryEscape(t.key.Issue(d, asker.Name, to.node.Name))
	return loc, nil
}

// Received counts a node's report, r (a HEAD with HaveHeader, answered
// with the blob's size), that it has a blob whole: fetched from a peer,
// its size is egress the cache saved. It is counted by the replica that
// answered the report, so once over the replicas.
func (t *Tracker) Received(r *http.Request, size int64) {
	from := r.Header.Get(HaveHeader)
	if r.Method != http.MethodHead || from == "" || size <= 0 {
		return
	}
	if asker, ok, err := t.key.Check(r); err == nil && ok {
		t.metrics.saved.WithLabelValues(zoneLabel(asker.Zone)).Add(float64(size))
	}
}

var validZone = regexp.MustCompile(`^[A-Za-z0-9._-]{0,63}$`)

// zoneLabel is a node's zone as it is counted: a node says what it is,
// and the metrics must not take any string it sends.
func zoneLabel(z string) string {
	if validZone.MatchString(z) {
		return z
	}
	return "invalid"
}

// entry is d's holders, made if new; the least recently asked blob goes
// past maxBlobs.
func (t *Tracker) entry(d digest.Digest) *blobHolders {
	if el := t.blobs[d]; el != nil {
		t.lru.MoveToFront(el)
		return el.Value.(*blobHolders)
	}
	bh := &blobHolders{digest: d, sends: t.sends}
	t.blobs[d] = t.lru.PushFront(bh)
	if t.lru.Len() > maxBlobs {
		last := t.lru.Back()
		t.lru.Remove(last)
		old := last.Value.(*blobHolders)
		for _, h := range old.holders {
			old.forget(h)
		}
		delete(t.blobs, old.digest)
	}
	return bh
}

// pick is the holder asker is sent to: of its zone, not asker, still
// holding or receiving, with room for one more of this blob. A node
// serving fewer than nodeSends at once goes first (when none does, the
// least busy); then a node that has the blob whole, then the nearest to
// a whole copy, then the least busy.
func (bh *blobHolders) pick(asker Node, now time.Time) *holder {
	var best *holder
	bestFree := false
	better := func(h *holder, free bool) bool {
		switch {
		case best == nil:
			return true
		case free != bestFree:
			return free
		case !free && bh.sends[h.node.Name] != bh.sends[best.node.Name]:
			return bh.sends[h.node.Name] < bh.sends[best.node.Name]
		case h.whole != best.whole:
			return h.whole
		case h.depth != best.depth:
			return h.depth < best.depth
		}
		return bh.sends[h.node.Name] < bh.sends[best.node.Name]
	}
	for _, h := range bh.holders {
		if h.node.Name == asker.Name || h.node.Zone != asker.Zone || h.node.Peer == "" || h.expired(now) {
			continue
		}
		if !h.whole && h.depth >= maxDepth {
			continue
		}
		for a, at := range h.askers {
			if now.Sub(at) >= sending {
				bh.take(h, a)
			}
		}
		free := bh.sends[h.node.Name] < nodeSends
		if len(h.askers) < fanout && better(h, free) {
			best, bestFree = h, free
		}
	}
	return best
}

// give counts asker as served by h; take, as no longer; forget, h's
// askers of this blob all gone with it.
func (bh *blobHolders) give(h *holder, asker string, now time.Time) {
	if _, ok := h.askers[asker]; !ok {
		bh.sends.add(h.node.Name, 1)
	}
	h.askers[asker] = now
}

func (bh *blobHolders) take(h *holder, asker string) {
	if _, ok := h.askers[asker]; ok {
		delete(h.askers, asker)
		bh.sends.add(h.node.Name, -1)
	}
}

func (bh *blobHolders) forget(h *holder) {
	bh.sends.add(h.node.Name, -len(h.askers))
	clear(h.askers)
}

func (h *holder) expired(now time.Time) bool {
	if h.whole {
		return now.Sub(h.since) >= held
	}
	return now.Sub(h.since) >= receiving
}

// find is the holder named name, or nil.
func (bh *blobHolders) find(name string) *holder {
	for _, h := range bh.holders {
		if h.node.Name == name {
			return h
		}
	}
	return nil
}

// receiving records node as receiving the blob at depth (its zone and
// peer URL as it says now); a node that has it whole stays so.
func (bh *blobHolders) receiving(node Node, depth int, now time.Time) {
	if h := bh.find(node.Name); h != nil {
		h.node = node
		if !h.whole || h.expired(now) {
			h.whole, h.since, h.depth = false, now, depth
		}
		return
	}
	if len(bh.holders) >= maxHolders {
		bh.forget(bh.holders[0])
		bh.holders = bh.holders[1:]
	}
	bh.holders = append(bh.holders, &holder{node: node, since: now, depth: depth, askers: map[string]time.Time{}})
}

// have records that node has the blob whole, fetched from the holder
// named from ("" for the cache), which has room for another asker now.
func (bh *blobHolders) have(node Node, from string, now time.Time) {
	h := bh.find(node.Name)
	if h == nil {
		bh.receiving(node, 0, now)
		h = bh.find(node.Name)
	}
	h.node, h.whole, h.since, h.depth = node, true, now, 0
	if src := bh.find(from); src != nil {
		bh.take(src, node.Name)
	}
}

// drop forgets the holder named name.
func (bh *blobHolders) drop(name string) bool {
	for i, h := range bh.holders {
		if h.node.Name == name {
			bh.forget(h)
			bh.holders = append(bh.holders[:i], bh.holders[i+1:]...)
			return true
		}
	}
	return false
}
