package share

import (
	"container/list"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// fanout is how many nodes one holder is sent at once: each of them
	// holds the blob soon after and is sent others, so the copies grow
	// as a tree, and no holder's link carries the whole zone.
	fanout = 4
	// sending is how long a send counts against a holder's fan-out: a
	// blob's transfer between nodes of one zone.
	sending = 20 * time.Second
	// maxBlobs and maxHolders bound what the tracker remembers: the
	// least recently asked blobs, and a blob's oldest holders, go first.
	maxBlobs   = 100000
	maxHolders = 1024
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
}

type blobHolders struct {
	digest  digest.Digest
	holders []*holder
}

type holder struct {
	node  Node
	sends []time.Time // when it was last given askers
}

// Metrics count what the tracker decided.
type Metrics struct {
	redirects *prometheus.CounterVec
	served    *prometheus.CounterVec
	dropped   prometheus.Counter
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
	}
	if r != nil {
		r.MustRegister(m.redirects, m.served, m.dropped)
	}
	return m
}

// NewTracker returns a tracker whose tickets key signs.
func NewTracker(key *Key, m *Metrics) *Tracker {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Tracker{key: key, now: time.Now, metrics: m, blobs: map[digest.Digest]*list.Element{}, lru: list.New()}
}

// Send decides where a blob request goes: "" to be served by the cache,
// else the holder's URL with a ticket. A request that does not come from
// a node is served; one that claims to and does not prove it is refused
// (ErrBadSignature). Either way the asking node counts as holding the
// blob from now on (it is receiving it), unless it reported a bad peer
// (then it is served here, and the peer is dropped).
func (t *Tracker) Send(r *http.Request, d digest.Digest) (string, error) {
	asker, ok, err := t.key.Verify(r)
	if err != nil || !ok {
		return "", err
	}
	bad := r.Header.Get(BadPeerHeader)
	t.mu.Lock()
	defer t.mu.Unlock()
	bh := t.entry(d)
	if bad != "" {
		if bh.drop(bad) {
			t.metrics.dropped.Inc()
		}
	}
	var to *holder
	if bad == "" {
		to = bh.pick(asker, t.now())
	}
	bh.add(asker)
	if to == nil {
		t.metrics.served.WithLabelValues(asker.Zone).Inc()
		return "", nil
	}
	to.sends = append(to.sends, t.now())
	t.metrics.redirects.WithLabelValues(asker.Zone).Inc()
	loc := strings.TrimSuffix(to.node.Peer, "/") + "/blobs/" + d.String() + "?" + TicketParam + "=" + url.QueryEscape(t.key.Issue(d, asker.Name, to.node.Name))
	return loc, nil
}

// entry is d's holders, made if new; the least recently asked blob goes
// past maxBlobs.
func (t *Tracker) entry(d digest.Digest) *blobHolders {
	if el := t.blobs[d]; el != nil {
		t.lru.MoveToFront(el)
		return el.Value.(*blobHolders)
	}
	bh := &blobHolders{digest: d}
	t.blobs[d] = t.lru.PushFront(bh)
	if t.lru.Len() > maxBlobs {
		last := t.lru.Back()
		t.lru.Remove(last)
		delete(t.blobs, last.Value.(*blobHolders).digest)
	}
	return bh
}

// pick is the oldest holder in asker's zone, not asker, with room for
// one more send. The oldest, not the least busy: a node that just asked
// has no sends yet, and sending each asker to the one before would make
// a chain as long as the zone, every node's first bytes waiting for all
// those before it, and a node that dies cutting all those after it.
func (bh *blobHolders) pick(asker Node, now time.Time) *holder {
	for _, h := range bh.holders {
		if h.node.Name == asker.Name || h.node.Zone != asker.Zone || h.node.Peer == "" {
			continue
		}
		recent := h.sends[:0]
		for _, at := range h.sends {
			if now.Sub(at) < sending {
				recent = append(recent, at)
			}
		}
		h.sends = recent
		if len(recent) < fanout {
			return h
		}
	}
	return nil
}

// add records node as holding the blob (its zone and peer URL as it says
// now).
func (bh *blobHolders) add(node Node) {
	for _, h := range bh.holders {
		if h.node.Name == node.Name {
			h.node = node
			return
		}
	}
	if len(bh.holders) >= maxHolders {
		bh.holders = bh.holders[1:]
	}
	bh.holders = append(bh.holders, &holder{node: node})
}

// drop forgets the holder named name.
func (bh *blobHolders) drop(name string) bool {
	for i, h := range bh.holders {
		if h.node.Name == name {
			bh.holders = append(bh.holders[:i], bh.holders[i+1:]...)
			return true
		}
	}
	return false
}
