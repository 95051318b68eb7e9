package share

import (
	"sync"
	"time"
)

// Tally is what an agent holds and has fetched since it started. It
// rides in every signed request, so that any replica the node reaches
// can tell the operator what its nodes' stores hold and where their bytes
// came from: counted by the cache instead, each replica would see only
// the part of a node's blobs it served.
type Tally struct {
	// Store is the bytes in the node's store now.
	Store int64 `json:"s"`
	// Peer and Cache are the blob bytes the node kept from peers and
	// from the cache since its agent started.
	Peer  int64 `json:"p"`
	Cache int64 `json:"c"`
	// At is when the node took it (Unix milliseconds): a node's
	// requests may arrive out of order, and the newest tally counts.
	At int64 `json:"t"`
}

const (
	// tallyKept is how long a node's last tally counts: a node gone a
	// day no longer holds what it said.
	tallyKept = 24 * time.Hour
	// maxTallies bounds the nodes remembered; the longest silent goes
	// first.
	maxTallies = 16384
)

// Tallies are the nodes' last tallies, as one replica received them.
type Tallies struct {
	now func() time.Time

	mu    sync.Mutex
	nodes map[string]nodeTally
}

type nodeTally struct {
	Tally
	at time.Time
}

// NewTallies returns an empty record.
func NewTallies() *Tallies {
	return &Tallies{now: time.Now, nodes: map[string]nodeTally{}}
}

// Record keeps node's tally, if it sent one.
func (ts *Tallies) Record(node Node) {
	if t := node.Tally; t == nil || t.Store < 0 || t.Peer < 0 || t.Cache < 0 {
		return
	}
	now := ts.now()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	last, known := ts.nodes[node.Name]
	if known && last.At > node.Tally.At {
		return
	}
	if !known && len(ts.nodes) >= maxTallies {
		ts.pruneLocked(now)
		if len(ts.nodes) >= maxTallies {
			ts.dropOldestLocked()
		}
	}
	ts.nodes[node.Name] = nodeTally{Tally: *node.Tally, at: now}
}

// Sum is the tallies of the nodes heard from in the last day, added up,
// and how many nodes they are.
func (ts *Tallies) Sum() (nodes int, sum Tally) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.pruneLocked(ts.now())
	for _, t := range ts.nodes {
		sum.Store += t.Store
		sum.Peer += t.Peer
		sum.Cache += t.Cache
	}
	return len(ts.nodes), sum
}

func (ts *Tallies) pruneLocked(now time.Time) {
	for name, t := range ts.nodes {
		if now.Sub(t.at) >= tallyKept {
			delete(ts.nodes, name)
		}
	}
}

func (ts *Tallies) dropOldestLocked() {
	var oldest string
	var at time.Time
	for name, t := range ts.nodes {
		if oldest == "" || t.at.Before(at) {
			oldest, at = name, t.at
		}
	}
	delete(ts.nodes, oldest)
}
