package cache

import (
	"container/list"
	"sync"

	"github.com/opencontainers/go-digest"
)

// memory keeps recently served manifests, by digest, within a budget of
// bytes: a tag that every node asks for within the recheck interval is
// answered without a storage round trip, on S3 as on a local disk.
// Manifests are immutable by digest, so a kept one is never stale.
type memory struct {
	mu     sync.Mutex
	budget int64
	used   int64
	order  *list.List // most recently used first
	byDig  map[digest.Digest]*list.Element
}

func newMemory(budget int64) *memory {
	return &memory{budget: budget, order: list.New(), byDig: map[digest.Digest]*list.Element{}}
}

func (m *memory) get(d digest.Digest) *Manifest {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.byDig[d]
	if !ok {
		return nil
	}
	m.order.MoveToFront(e)
	return e.Value.(*Manifest)
}

// put keeps man, forgetting the least recently used past the budget; a
// manifest larger than the whole budget is not kept.
func (m *memory) put(man *Manifest) {
	size := int64(len(man.Body))
	m.mu.Lock()
	defer m.mu.Unlock()
	if size > m.budget {
		return
	}
	if e, ok := m.byDig[man.Digest]; ok {
		m.order.MoveToFront(e)
		return
	}
	m.byDig[man.Digest] = m.order.PushFront(man)
	m.used += size
	for m.used > m.budget {
		last := m.order.Back()
		old := last.Value.(*Manifest)
		m.order.Remove(last)
		delete(m.byDig, old.Digest)
		m.used -= int64(len(old.Body))
	}
}
