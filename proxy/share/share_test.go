package share

import (
	"errors"
	"fmt"
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

// The tracker sends a node to a holder of its own zone, at most fanout
// at once per holder, the asker becoming a holder itself; a reported
// holder is dropped and the reporter served by the cache.
func TestTrackerSendsWithinTheZone(t *testing.T) {
	k := newKey(t)
	tr := NewTracker(k, nil)
	node := func(name, zone string) Node { return Node{Name: name, Zone: zone, Peer: "http://" + name + ":30601"} }
	send := func(n Node, bad string) string {
		t.Helper()
		r := signed(k, n, blob)
		if bad != "" {
			r.Header.Set(BadPeerHeader, bad)
		}
		loc, err := tr.Send(r, blob)
		if err != nil {
			t.Fatal(err)
		}
		return HolderOf(loc)
	}
	if got := send(node("a1", "a"), ""); got != "" {
		t.Fatalf("the first node of a zone is sent to %q, not served", got)
	}
	if got := send(node("b1", "b"), ""); got != "" {
		t.Fatalf("the first node of zone b is sent to %q (zone a's holder?)", got)
	}
	sent := map[string]int{}
	for i := 0; i < fanout; i++ {
		sent[send(node("a"+string(rune('2'+i)), "a"), "")]++
	}
	if sent["a1"] < 1 || sent[""] != 0 {
		t.Errorf("zone a's next %d nodes were sent %v", fanout, sent)
	}
	for h := range sent {
		if h == "b1" {
			t.Error("a node of zone a was sent to zone b")
		}
	}
	// Once a1's fan-out is spent, the next are sent to the nodes that
	// became holders; a1 is never given more than fanout at once.
	for i := 0; i < 3*fanout; i++ {
		send(node("x"+string(rune('a'+i)), "a"), "")
	}
	tr.mu.Lock()
	for _, h := range tr.blobs[blob].Value.(*blobHolders).holders {
		if len(h.sends) > fanout {
			t.Errorf("holder %s was given %d nodes at once", h.node.Name, len(h.sends))
		}
	}
	tr.mu.Unlock()

	if got := send(node("a9", "a"), "a1"); got != "" {
		t.Errorf("a node that reported a bad peer is sent to %q, not served", got)
	}
	for i := 0; i < 4*fanout; i++ {
		if got := send(node("y"+string(rune('a'+i)), "a"), ""); got == "a1" {
			t.Fatal("a dropped holder is still sent nodes")
		}
	}
	r := signed(k, node("a1", "a"), blob)
	r.Header.Set(NodeHeader, r.Header.Get(NodeHeader)+"0")
	if _, err := tr.Send(r, blob); !errors.Is(err, ErrBadSignature) {
		t.Errorf("a forged node request: %v", err)
	}
	if loc, err := tr.Send(httptest.NewRequest(http.MethodGet, "/v2/x/blobs/"+blob.String(), nil), blob); loc != "" || err != nil {
		t.Errorf("a request from no node: %q %v", loc, err)
	}
}

// A rollout's nodes ask at once: the tracker fills the oldest holders
// first, so the copies grow as a shallow tree, not a chain of every node
// of the zone.
func TestTrackerGrowsATreeNotAChain(t *testing.T) {
	k := newKey(t)
	tr := NewTracker(k, nil)
	node := func(i int) Node {
		name := fmt.Sprintf("n%02d", i)
		return Node{Name: name, Zone: "a", Peer: "http://" + name + ":30601"}
	}
	sentTo := map[string]string{}
	for i := range 1 + 2*fanout {
		loc, err := tr.Send(signed(k, node(i), blob), blob)
		if err != nil {
			t.Fatal(err)
		}
		sentTo[node(i).Name] = HolderOf(loc)
	}
	for i := 1; i <= fanout; i++ {
		if got := sentTo[node(i).Name]; got != "n00" {
			t.Errorf("%s was sent to %q: want n00, the oldest holder, while it has room (a chain grows instead of a tree)", node(i).Name, got)
		}
	}
	for i := fanout + 1; i <= 2*fanout; i++ {
		if got := sentTo[node(i).Name]; got != "n01" {
			t.Errorf("%s was sent to %q: want n01, the next oldest holder", node(i).Name, got)
		}
	}
}
