package cache

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// The manifests kept stay within the budget, the least recently used
// going first; one larger than the budget is not kept.
func TestMemoryBudget(t *testing.T) {
	mk := func(s string, n int) *Manifest {
		body := []byte(s + strings.Repeat(".", n-len(s)))
		return &Manifest{Digest: digest.FromBytes(body), Body: body}
	}
	m := newMemory(300)
	a, b, c := mk("a", 100), mk("b", 100), mk("c", 100)
	m.put(a)
	m.put(b)
	m.put(c)
	m.get(a.Digest) // a is now the most recent
	d := mk("d", 100)
	m.put(d)
	if m.get(b.Digest) != nil {
		t.Error("the least recently used was kept past the budget")
	}
	for _, x := range []*Manifest{a, c, d} {
		if m.get(x.Digest) == nil {
			t.Errorf("%s was dropped", x.Body[:1])
		}
	}
	m.put(mk("huge", 301))
	if m.used > m.budget || m.order.Len() != 3 {
		t.Errorf("used %d of %d, %d kept", m.used, m.budget, m.order.Len())
	}
}
