package peers

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func replicaURLs(n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, fmt.Sprintf("http://10.0.0.%d:5000", i+1))
	}
	return out
}

// Every replica computes the same owner, whoever it is; a replica that
// leaves moves only the keys it owned, and a replica that joins takes
// only keys for itself, about its share of them.
func TestRingOwnersAgreeAndMoveLittle(t *testing.T) {
	members := replicaURLs(3)
	rings := []*Ring{NewRing(members[0], members), NewRing(members[1], members), NewRing(members[2], []string{members[2], members[1], members[0]})}
	const keys = 3000
	owned := map[string]int{}
	before := map[string]string{}
	for i := 0; i < keys; i++ {
		key := BlobKey("docker.io", fmt.Sprintf("sha256:%064d", i))
		owner := rings[0].Owner(key)
		for _, r := range rings[1:] {
			if got := r.Owner(key); got != owner {
				t.Fatalf("replicas disagree on %s: %s and %s", key, owner, got)
			}
		}
		owners := rings[0].Owners(key)
		if len(owners) != 3 || owners[0] != owner {
			t.Fatalf("owners of %s: %v", key, owners)
		}
		owned[owner]++
		before[key] = owner
	}
	for _, m := range members {
		if owned[m] < keys/3*8/10 {
			t.Errorf("%s owns %d of %d keys: the hash is lopsided (%v)", m, owned[m], keys, owned)
		}
	}

	grown := NewRing(members[0], replicaURLs(4))
	shrunk := NewRing(members[0], members[:2])
	moved := 0
	for key, owner := range before {
		if got := grown.Owner(key); got != owner {
			if got != "http://10.0.0.4:5000" {
				t.Fatalf("a joining replica moved %s from %s to %s", key, owner, got)
			}
			moved++
		}
		if got := shrunk.Owner(key); got != owner && owner != members[2] {
			t.Fatalf("a leaving replica moved %s, which it did not own, from %s to %s", key, owner, got)
		}
	}
	if moved < keys/4*7/10 || moved > keys/4*13/10 {
		t.Errorf("a fourth replica took %d of %d keys, want about a quarter", moved, keys)
	}
}

// A replica that refused a connection comes last for a while, so that
// the next owner is asked first.
func TestRingPassesOverADownReplica(t *testing.T) {
	members := replicaURLs(3)
	r := NewRing(members[0], members)
	key := BlobKey("docker.io", "sha256:abc")
	owners := r.Owners(key)
	r.markDown(owners[0])
	got := r.Owners(key)
	if got[0] != owners[1] || got[2] != owners[0] {
		t.Fatalf("after %s refused: %v, want it last and %s first", owners[0], got, owners[1])
	}
	if !r.Set(members[1:]) || len(r.down) > 1 {
		t.Errorf("set did not report the change or kept a down mark of a replica that left: %v", r.down)
	}
}

// A forwarded request verifies under the same key and no other, for its
// own method and URI only, and not long after.
func TestSignature(t *testing.T) {
	a, b := NewSigner([]byte("key one")), NewSigner([]byte("key two"))
	req := httptest.NewRequest(http.MethodGet, "/v2/library/alpine/blobs/sha256:abc?ns=docker.io", nil)
	if ok, err := a.Verify(req); ok || err != nil {
		t.Fatalf("an ordinary request: %v %v", ok, err)
	}
	a.Sign(req)
	if ok, err := a.Verify(req); !ok || err != nil {
		t.Fatalf("a signed request: %v %v", ok, err)
	}
	if ok, err := b.Verify(req); ok || err == nil {
		t.Fatal("verified under another key")
	}
	other := httptest.NewRequest(http.MethodGet, "/v2/library/alpine/blobs/sha256:abd?ns=docker.io", nil)
	other.Header.Set(Header, req.Header.Get(Header))
	if ok, _ := a.Verify(other); ok {
		t.Fatal("a signature verified for another path")
	}
	head := httptest.NewRequest(http.MethodHead, req.URL.RequestURI(), nil)
	head.Header.Set(Header, req.Header.Get(Header))
	if ok, _ := a.Verify(head); ok {
		t.Fatal("a GET's signature verified for a HEAD")
	}
	late := *a
	late.now = func() time.Time { return time.Now().Add(10 * time.Minute) }
	if ok, _ := late.Verify(req); ok {
		t.Fatal("a ten-minute-old signature verified")
	}
	for _, bad := range []string{"x", "123", "abc:def", ":"} {
		req.Header.Set(Header, bad)
		if ok, err := a.Verify(req); ok || err == nil {
			t.Errorf("header %q: %v %v", bad, ok, err)
		}
	}
}
