package share

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

var (
	blob  = digest.FromString("a layer")
	other = digest.FromString("another layer")
)

func newKey(t *testing.T) *Key {
	t.Helper()
	k, err := NewKey([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// signed is a node's blob request to the cache.
func signed(k *Key, n Node, d digest.Digest) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v2/library/app/blobs/"+d.String(), nil)
	k.Sign(r, n)
	return r
}

func TestNodeSignatures(t *testing.T) {
	k := newKey(t)
	a := Node{Name: "a", Zone: "z1", Peer: "http://10.0.0.1:30601"}
	r := signed(k, a, blob)
	if got, ok, err := k.Verify(r); err != nil || !ok || got != a {
		t.Fatalf("a signed request: %v %v %v", got, ok, err)
	}
	if _, _, err := k.Verify(r); !errors.Is(err, ErrBadSignature) {
		t.Errorf("a replayed request: %v", err)
	}
	if _, ok, err := k.Verify(httptest.NewRequest(http.MethodGet, "/v2/x/blobs/"+blob.String(), nil)); ok || err != nil {
		t.Errorf("an unsigned request: %v %v", ok, err)
	}
	moved := signed(k, a, blob)
	moved.URL.Path = "/v2/library/app/blobs/" + other.String()
	if _, _, err := k.Verify(moved); !errors.Is(err, ErrBadSignature) {
		t.Errorf("a signature moved to another blob: %v", err)
	}
	stranger, _ := NewKey([]byte("another key, another trust domain"))
	if _, _, err := k.Verify(signed(stranger, a, blob)); !errors.Is(err, ErrBadSignature) {
		t.Errorf("another key's signature: %v", err)
	}
	old := &Key{key: k.key, now: func() time.Time { return time.Now().Add(-time.Minute) }, seen: map[string]time.Time{}}
	if _, _, err := k.Verify(signed(old, a, blob)); !errors.Is(err, ErrBadSignature) {
		t.Errorf("a signature a minute old: %v", err)
	}
	if _, err := NewKey([]byte("short")); err == nil {
		t.Error("a 5-byte node key was taken")
	}
}

// A holder serves only a request signed by the node its ticket names,
// for the blob it names, unexpired, once.
func TestTickets(t *testing.T) {
	k := newKey(t)
	asker, holder := Node{Name: "asker", Zone: "z1"}, "holder"
	peerRequest := func(signer *Key, n Node, d digest.Digest, ticket string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/blobs/"+d.String()+"?"+TicketParam+"="+url.QueryEscape(ticket), nil)
		if signer != nil {
			signer.Sign(r, n)
		}
		return r
	}
	good := k.Issue(blob, asker.Name, holder)
	expired := (&Key{key: k.key, now: func() time.Time { return time.Now().Add(-time.Minute) }, seen: map[string]time.Time{}}).Issue(blob, asker.Name, holder)
	for _, c := range []struct {
		name string
		r    *http.Request
	}{
		{"no ticket", peerRequest(k, asker, blob, "")},
		{"unsigned", peerRequest(nil, asker, blob, k.Issue(blob, asker.Name, holder))},
		{"expired", peerRequest(k, asker, blob, expired)},
		{"for another blob", peerRequest(k, asker, other, k.Issue(blob, asker.Name, holder))},
		{"for another node", peerRequest(k, Node{Name: "thief"}, blob, k.Issue(blob, asker.Name, holder))},
		{"for another holder", peerRequest(k, asker, blob, k.Issue(blob, asker.Name, "elsewhere"))},
		{"forged", peerRequest(k, asker, blob, strings.Replace(good, ".", ".0", 1))},
	} {
		d, _ := digest.Parse(strings.TrimPrefix(c.r.URL.Path, "/blobs/"))
		if _, err := k.Admit(c.r, holder, d); !errors.Is(err, ErrBadTicket) {
			t.Errorf("%s: %v, want ErrBadTicket", c.name, err)
		}
	}
	if got, err := k.Admit(peerRequest(k, asker, blob, good), holder, blob); err != nil || got.Name != asker.Name {
		t.Fatalf("a good ticket: %v %v", got, err)
	}
	if _, err := k.Admit(peerRequest(k, asker, blob, good), holder, blob); !errors.Is(err, ErrBadTicket) {
		t.Errorf("a ticket used twice: %v", err)
	}
	if HolderOf("http://10.0.0.2:30601/blobs/"+blob.String()+"?ticket="+url.QueryEscape(good)) != holder {
		t.Error("HolderOf does not read the ticket's holder")
	}
}

// The tracker sends a node to a holder of its own zone with room, a node
// that has the blob whole before one still receiving it, never further
// than maxDepth from a whole copy; the asker becomes a holder itself; a
// reported holder is dropped and the reporter served by the cache; one
// that never reports having the blob stops being a holder.
func TestTrackerSendsWithinTheZone(t *testing.T) {
	k := newKey(t)
	tr := NewTracker(k, nil)
	clock := time.Now()
	tr.now = func() time.Time { return clock }
	node := func(name, zone string) Node { return Node{Name: name, Zone: zone, Peer: "http://" + name + ":30601"} }
	request := func(method string, n Node, header, value string) *http.Request {
		r := httptest.NewRequest(method, "/v2/library/app/blobs/"+blob.String(), nil)
		if header != "" {
			r.Header.Set(header, value)
		}
		k.Sign(r, n)
		return r
	}
	send := func(n Node, header, value string) string {
		t.Helper()
		loc, err := tr.Send(request(http.MethodGet, n, header, value), blob)
		if err != nil {
			t.Fatal(err)
		}
		return HolderOf(loc)
	}
	have := func(n Node, from string) {
		t.Helper()
		if loc, err := tr.Send(request(http.MethodHead, n, HaveHeader, from), blob); loc != "" || err != nil {
			t.Fatalf("a report: %q %v", loc, err)
		}
	}
	if got := send(node("a0", "a"), "", ""); got != "" {
		t.Fatalf("the first node of a zone is sent to %q, not served", got)
	}
	if got := send(node("b0", "b"), "", ""); got != "" {
		t.Fatalf("the first node of zone b is sent to %q (zone a's holder?)", got)
	}
	// In turn, as a rollout's nodes come, for one blob: each holder is
	// given nodeSends, nearest the cache's copy first, so 14 nodes fill a
	// tree three deep, never a chain.
	depthOf, parentOf := map[string]int{"a0": 0}, map[string]string{}
	for i := 1; i <= 14; i++ {
		n := node(fmt.Sprintf("a%d", i), "a")
		to := send(n, "", "")
		if to == "" || to == "b0" {
			t.Fatalf("%s was sent to %q", n.Name, to)
		}
		depthOf[n.Name], parentOf[n.Name] = depthOf[to]+1, to
		if depthOf[n.Name] > 3 {
			t.Fatalf("%s is %d away from the cache's copy (sent to %s)", n.Name, depthOf[n.Name], to)
		}
	}
	tr.mu.Lock()
	for _, h := range tr.blobs[blob].Value.(*blobHolders).holders {
		if len(h.askers) > nodeSends {
			t.Errorf("holder %s was given %d nodes at once", h.node.Name, len(h.askers))
		}
	}
	tr.mu.Unlock()
	// a9 has the blob whole now: the next node goes to it, ahead of
	// every node still receiving, and its holder has room again.
	have(node("a9", "a"), parentOf["a9"])
	if got := send(node("a20", "a"), "", ""); got != "a9" {
		t.Errorf("a node was sent to %q, not to the one that has the blob whole", got)
	}
	// A bad holder is dropped; a busy one is not.
	if got := send(node("a21", "a"), BadPeerHeader, "a9"); got != "" {
		t.Errorf("a node that reported a bad peer is sent to %q, not served", got)
	}
	if got := send(node("a22", "a"), BusyPeerHeader, "a0"); got != "" {
		t.Errorf("a node that reported a busy peer is sent to %q, not served", got)
	}
	for i := 0; i < 4*fanout; i++ {
		if got := send(node(fmt.Sprintf("y%d", i), "a"), "", ""); got == "a9" {
			t.Fatal("a dropped holder is still sent nodes")
		}
	}
	// Long after, the nodes that never said they have it are no
	// holders; the one that did still is.
	clock = clock.Add(2 * receiving)
	have(node("a7", "a"), "")
	for i := 0; i < min(fanout, nodeSends); i++ {
		if got := send(node(fmt.Sprintf("late%d", i), "a"), "", ""); got != "a7" {
			t.Errorf("a late node was sent to %q, want a7, the only node that said it has the blob", got)
		}
	}
	r := request(http.MethodGet, node("a1", "a"), "", "")
	r.Header.Set(NodeHeader, r.Header.Get(NodeHeader)+"0")
	if _, err := tr.Send(r, blob); !errors.Is(err, ErrBadSignature) {
		t.Errorf("a forged node request: %v", err)
	}
	if loc, err := tr.Send(httptest.NewRequest(http.MethodGet, "/v2/x/blobs/"+blob.String(), nil), blob); loc != "" || err != nil {
		t.Errorf("a request from no node: %q %v", loc, err)
	}
	checkSends(t, tr)
}

// What a node may give as its peer URL: a listener and nothing more.
func TestPeerURL(t *testing.T) {
	for u, want := range map[string]bool{
		"http://10.0.0.7:30601": true, "https://node-7:30601/": true,
		"http://10.0.0.7:30601/admin": false, "http://user@10.0.0.7:30601": false, "http://10.0.0.7:30601?x=1": false,
		"http://10.0.0.7:30601#f": false, "ftp://10.0.0.7": false, "10.0.0.7:30601": false,
	} {
		if PeerURL(u) != want {
			t.Errorf("PeerURL(%q) = %t", u, !want)
		}
	}
}

// A zone's rollout of an image of five blobs, three asked at once by each
// node as a runtime asks, then the other two once it has the first: the
// cache serves each blob once, and the sends are spread over the nodes,
// not piled on the first ones, which hold every blob before the others.
func TestTrackerSpreadsSendsOverNodes(t *testing.T) {
	k := newKey(t)
	tr := NewTracker(k, nil)
	var blobs []digest.Digest
	for i := range 5 {
		blobs = append(blobs, digest.FromString(fmt.Sprintf("layer %d", i)))
	}
	const nodes = 60
	node := func(i int) Node {
		return Node{Name: fmt.Sprintf("n%d", i), Zone: "a", Peer: fmt.Sprintf("http://n%d:30601", i)}
	}
	served, most := 0, 0
	from := map[string]string{}
	ask := func(n Node, d digest.Digest) {
		t.Helper()
		loc, err := tr.Send(signed(k, n, d), d)
		if err != nil {
			t.Fatal(err)
		}
		if loc == "" {
			served++
		}
		from[n.Name+d.String()] = HolderOf(loc)
		for _, s := range sendsOf(tr) {
			most = max(most, s)
		}
	}
	have := func(n Node, d digest.Digest) {
		t.Helper()
		r := httptest.NewRequest(http.MethodHead, "/v2/library/app/blobs/"+d.String(), nil)
		r.Header.Set(HaveHeader, from[n.Name+d.String()])
		k.Sign(r, n)
		if _, err := tr.Send(r, d); err != nil {
			t.Fatal(err)
		}
	}
	for i := range nodes {
		for _, d := range blobs[:3] {
			ask(node(i), d)
		}
	}
	for i := range nodes {
		for _, d := range blobs[:3] {
			have(node(i), d)
		}
		for _, d := range blobs[3:] {
			ask(node(i), d)
		}
	}
	if served != len(blobs) {
		t.Errorf("the cache served %d requests of a zone for %d blobs, want one each", served, len(blobs))
	}
	// The first nodes to come hold every blob first; counted per blob,
	// they were given up to fanout × 5 at once (12 here). Each node asks
	// three at once and serves nodeSends before others go first, so the
	// zone's extra ones are spread, one or two a node.
	if most > nodeSends+2 {
		t.Errorf("a node was given %d sends at once, want at most %d", most, nodeSends+2)
	}
	checkSends(t, tr)
}

// sendsOf counts each node's askers over all blobs.
func sendsOf(tr *Tracker) map[string]int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := map[string]int{}
	for _, el := range tr.blobs {
		for _, h := range el.Value.(*blobHolders).holders {
			if len(h.askers) > 0 {
				n[h.node.Name] += len(h.askers)
			}
		}
	}
	return n
}

// checkSends checks the tracker's count of each node's sends against its
// holders' askers, after drops, expiries and reports.
func checkSends(t *testing.T, tr *Tracker) {
	t.Helper()
	want := sendsOf(tr)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if !maps.Equal(tr.sends, sends(want)) {
		t.Errorf("the tracker counts sends %v, its holders have %v", tr.sends, want)
	}
}

// The cache adds up the nodes' last tallies: a node's older tally,
// arriving late, does not undo a newer one; a node silent for a day no
// longer counts; a negative tally is not taken; the record stays bounded.
func TestTallies(t *testing.T) {
	now := time.Unix(1000, 0)
	ts := NewTallies()
	ts.now = func() time.Time { return now }
	ts.Record(Node{Name: "a", Tally: &Tally{Store: 100, Peer: 10, Cache: 5, At: 2}})
	ts.Record(Node{Name: "a", Tally: &Tally{Store: 50, Peer: 1, Cache: 1, At: 1}}) // late
	ts.Record(Node{Name: "b", Tally: &Tally{Store: 7, Peer: 3, Cache: 2, At: 1}})
	ts.Record(Node{Name: "c"})                                                 // no tally
	ts.Record(Node{Name: "d", Tally: &Tally{Store: -1 << 62, Peer: 1, At: 1}}) // nonsense
	if n, sum := ts.Sum(); n != 2 || sum != (Tally{Store: 107, Peer: 13, Cache: 7}) {
		t.Errorf("got %d nodes, %+v; want 2 nodes, store 107, peer 13, cache 7", n, sum)
	}
	now = now.Add(tallyKept / 2)
	ts.Record(Node{Name: "b", Tally: &Tally{Store: 8, Peer: 3, Cache: 2, At: 3}})
	now = now.Add(tallyKept / 2)
	if n, sum := ts.Sum(); n != 1 || sum.Store != 8 {
		t.Errorf("a day after a's last tally: %d nodes, %+v; want b's alone", n, sum)
	}
	for i := range maxTallies + 10 {
		ts.Record(Node{Name: fmt.Sprint("n", i), Tally: &Tally{Store: 1, At: 1}})
	}
	if n, _ := ts.Sum(); n != maxTallies {
		t.Errorf("%d nodes remembered, want at most %d", n, maxTallies)
	}
}
