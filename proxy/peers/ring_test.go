package peers

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
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
		key := BlobKey("docker.io", digest.Digest(fmt.Sprintf("sha256:%064d", i)))
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
	key := BlobKey("docker.io", digest.FromString("abc"))
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

// A forwarded request verifies under the same key and no other, at the
// replica it names only, for its own method and URI only, once, and not
// seconds later.
func TestSignature(t *testing.T) {
	const self, other = "http://10.0.0.1:5000", "http://10.0.0.2:5000"
	signed := func(s *Signer, target, method, uri string) (*http.Request, Forward) {
		req := httptest.NewRequest(method, uri, nil)
		return req, s.Sign(req, target, true)
	}
	copyOf := func(req *http.Request) *http.Request {
		c := httptest.NewRequest(req.Method, req.URL.RequestURI(), nil)
		c.Header.Set(Header, req.Header.Get(Header))
		return c
	}
	const uri = "/v2/library/alpine/manifests/3.20?ns=docker.io"
	a, b := NewSigner([]byte("key one")), NewSigner([]byte("key two"))
	if _, ok, err := a.Verify(httptest.NewRequest(http.MethodGet, uri, nil), self); ok || err != nil {
		t.Fatalf("an ordinary request: %v %v", ok, err)
	}
	req, f := signed(a, self, http.MethodGet, uri)
	replay := copyOf(req)
	if got, ok, err := a.Verify(req, self); !ok || err != nil || got != f {
		t.Fatalf("a signed request: %+v %v %v, want %+v", got, ok, err, f)
	}
	if _, ok, err := a.Verify(replay, self); ok || err == nil {
		t.Fatal("a replayed signature verified again")
	}
	for name, tc := range map[string]struct {
		s      *Signer
		target string
		method string
		uri    string
	}{
		"another key":     {b, self, http.MethodGet, uri},
		"another replica": {a, other, http.MethodGet, uri},
		"another path":    {a, self, http.MethodGet, "/v2/library/alpine/manifests/3.21?ns=docker.io"},
		"a HEAD":          {a, self, http.MethodHead, uri},
	} {
		req, _ := signed(a, self, http.MethodGet, uri)
		moved := httptest.NewRequest(tc.method, tc.uri, nil)
		moved.Header.Set(Header, req.Header.Get(Header))
		if _, ok, err := tc.s.Verify(moved, tc.target); ok || err == nil {
			t.Errorf("%s: verified", name)
		}
	}
	late := NewSigner([]byte("key one"))
	late.now = func() time.Time { return time.Now().Add(10 * time.Second) }
	if req, _ := signed(a, self, http.MethodGet, uri); func() bool { _, ok, _ := late.Verify(req, self); return ok }() {
		t.Fatal("a ten-second-old signature verified")
	}
	for _, bad := range []string{"x", "123", "abc:def", ":", "1:2:3:4", strings.Repeat(":", 3)} {
		req := httptest.NewRequest(http.MethodGet, uri, nil)
		req.Header.Set(Header, bad)
		if _, ok, err := a.Verify(req, self); ok || err == nil {
			t.Errorf("header %q: %v %v", bad, ok, err)
		}
	}
}

// An answer proves itself to the request it answers, under the same
// key: its status, digest, type and (bound) body.
func TestAnswerProof(t *testing.T) {
	a, b := NewSigner([]byte("key one")), NewSigner([]byte("key two"))
	req := httptest.NewRequest(http.MethodGet, "/v2/x/manifests/1", nil)
	f := a.Sign(req, "http://owner", true)
	answer := func(s *Signer, f Forward, body string, status int) *http.Response {
		rec := httptest.NewRecorder()
		w, done := s.ProveAnswer(rec, f)
		w.Header().Set("Docker-Content-Digest", "sha256:aaa")
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.WriteHeader(status)
		io.WriteString(w, body)
		done()
		return rec.Result()
	}
	if err := a.verifyAnswer(f, answer(a, f, "manifest", 200), []byte("manifest")); err != nil {
		t.Fatalf("a proven answer: %v", err)
	}
	for name, resp := range map[string]*http.Response{
		"another key":     answer(b, f, "manifest", 200),
		"another request": answer(a, Forward{Nonce: strings.Repeat("0", 32), BindBody: true}, "manifest", 200),
		"another status":  func() *http.Response { r := answer(a, f, "manifest", 200); r.StatusCode = 404; return r }(),
		"another digest": func() *http.Response {
			r := answer(a, f, "manifest", 200)
			r.Header.Set("Docker-Content-Digest", "sha256:bbb")
			return r
		}(),
		"no proof": func() *http.Response { r := answer(a, f, "manifest", 200); r.Header.Del(AnswerHeader); return r }(),
	} {
		if err := a.verifyAnswer(f, resp, []byte("manifest")); err == nil {
			t.Errorf("%s: verified", name)
		}
	}
	if err := a.verifyAnswer(f, answer(a, f, "manifest", 200), []byte("poisoned")); err == nil {
		t.Error("another body verified")
	}
}

// Only pods named as a Deployment's ReplicaSets name them are replicas,
// long names cut as the API server cuts them included.
func TestPodOf(t *testing.T) {
	const d = "team-a-depproxy"
	long := strings.Repeat("a", 60) + "-depproxy"
	for _, c := range []struct {
		pod, deployment string
		want            bool
	}{
		{"team-a-depproxy-7d9f8c6b5-x2k9p", d, true},
		{"team-a-depproxy-5f4d-abcde", d, true},
		{"team-a-depproxy-x2k9p", d, false}, // no template hash
		{"team-a-depproxy-peers-7d9f8c-x2k9p", d, false},
		{"rogue-7d9f8c6b5-x2k9p", d, false},
		{"team-a-depproxy", d, false},
		{"team-a-depproxy-7d9f8c6b5-x2k9p-1", d, false},
		{"team-a-depproxy-7d9f8c6b5-x2k9p", "", false},
		{long[:58] + "x2k9p", long, true},
		{"b" + long[1:58] + "x2k9p", long, false},
	} {
		if got := podOf(c.pod, c.deployment); got != c.want {
			t.Errorf("podOf(%q, %q): %v, want %v", c.pod, c.deployment, got, c.want)
		}
	}
}
