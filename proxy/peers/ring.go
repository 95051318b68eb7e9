// Package peers makes the replicas of one proxy act as one cache: each
// cold object has an owner among the ready replicas, chosen by rendezvous
// (highest-random-weight) hashing, and the others get it through the
// owner, so that however many replicas a pull is spread over, the upstream
// sends each blob once and answers each tag once.
package peers

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sync"
	"time"
)

// Ring is the replicas a proxy knows of, itself among them, and which of
// them owns what. Membership changes move only the keys of the replicas
// that came or went: every other key keeps its owner.
type Ring struct {
	self string

	mu      sync.Mutex
	members []string
	down    map[string]time.Time // replicas that refused a connection, until when they are skipped
}

// downFor is how long a replica that refused a connection is passed
// over; membership usually drops it sooner.
const downFor = 5 * time.Second

// NewRing returns a ring of the given members; self is this replica's
// own URL.
func NewRing(self string, members []string) *Ring {
	r := &Ring{self: self, down: map[string]time.Time{}}
	r.Set(members)
	return r
}

// Self is this replica's URL.
func (r *Ring) Self() string { return r.self }

// Set replaces the members, and reports whether they changed.
func (r *Ring) Set(members []string) bool {
	members = slices.Clone(members)
	slices.Sort(members)
	members = slices.Compact(members)
	r.mu.Lock()
	same := slices.Equal(members, r.members)
	r.members = members
	for m := range r.down {
		if _, ok := slices.BinarySearch(members, m); !ok {
			delete(r.down, m)
		}
	}
	r.mu.Unlock()
	return !same
}

// Members returns the current members, sorted.
func (r *Ring) Members() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.members)
}

// Owners returns the members in the order they own key: the owner first,
// then who takes over if it is gone. Replicas that recently refused a
// connection come last.
func (r *Ring) Owners(key string) []string {
	r.mu.Lock()
	members := slices.Clone(r.members)
	now := time.Now()
	isDown := func(m string) bool { return now.Before(r.down[m]) }
	var up, down []string
	for _, m := range members {
		if isDown(m) {
			down = append(down, m)
		} else {
			up = append(up, m)
		}
	}
	r.mu.Unlock()
	byWeight := func(list []string) {
		slices.SortFunc(list, func(a, b string) int {
			wa, wb := weight(a, key), weight(b, key)
			switch {
			case wa > wb:
				return -1
			case wa < wb:
				return 1
			}
			return 0
		})
	}
	byWeight(up)
	byWeight(down)
	return append(up, down...)
}

// Owner is the replica that owns key.
func (r *Ring) Owner(key string) string {
	if owners := r.Owners(key); len(owners) > 0 {
		return owners[0]
	}
	return r.self
}

// markDown passes over a replica that refused a connection for a while.
func (r *Ring) markDown(member string) {
	r.mu.Lock()
	r.down[member] = time.Now().Add(downFor)
	r.mu.Unlock()
}

// weight is a member's score for key. Every replica computes the same
// one, whatever its process: a cryptographic hash, not a seeded one.
func weight(member, key string) uint64 {
	h := sha256.New()
	h.Write([]byte(member))
	h.Write([]byte{0})
	h.Write([]byte(key))
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}
