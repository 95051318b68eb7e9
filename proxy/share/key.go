// Package share lets nodes fetch blobs from each other, seeded and
// ticketed by the cache: the cache knows which node holds which blob (a
// node's agent signs its blob requests with the nodes' key), sends a node
// asking for a blob to a holder in its zone with a ticket, and a holder
// serves only a request that brings a ticket for that blob and that node.
// No gossip, no DHT: the cache is the tracker. The node key is the nodes'
// trust domain: whoever has it may claim to be any node.
package share

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// NodeHeader carries a node agent's signed claim on a request: who it
// is, its zone, where its peers reach it, when, a nonce, and an HMAC of
// those and the request under the nodes' key.
const NodeHeader = "Depproxy-Node"

// BadPeerHeader, on a node's request to the cache, names the holder it
// was sent to that did not serve the blob (dead, slow, or wrong bytes):
// the cache drops it and serves the blob itself.
const BadPeerHeader = "Depproxy-Bad-Peer"

// BusyPeerHeader, on a node's request to the cache, names the holder it
// was sent to that could not serve it just then (at its fan-out, or its
// own source failed): the cache serves the blob itself and keeps the
// holder.
const BusyPeerHeader = "Depproxy-Busy-Peer"

// HaveHeader, on a node's signed HEAD of a blob, reports that it now has
// the blob whole and checked; its value names the holder it fetched it
// from ("" for the cache), which has room for another node then.
const HaveHeader = "Depproxy-Have"

// TicketParam is the query parameter a ticket travels in, on the
// redirect to a holder.
const TicketParam = "ticket"

// maxSkew bounds how far a node's clock may be from the receiver's.
const maxSkew = 30 * time.Second

// ticketTTL is how long a ticket may wait before it is used.
const ticketTTL = 30 * time.Second

// ErrBadSignature is a request that claims to come from a node and does
// not prove it, or a ticket that does not verify.
var ErrBadSignature = errors.New("the request claims to come from a node agent, and its signature does not verify: do the agents and the cache have the same node key, and clocks within 30 s of each other?")

// ErrBadTicket is a peer request without a valid, unexpired, unused
// ticket for that blob and that node.
var ErrBadTicket = errors.New("no valid ticket for this blob and this node: peers serve only whom the cache sent")

// Node is who an agent says it is.
type Node struct {
	Name string `json:"n"`
	Zone string `json:"z,omitempty"`
	// Peer is where other nodes reach its peer listener
	// (http://10.0.0.7:30601).
	Peer string `json:"p,omitempty"`
	// Tally is what it holds and fetched, for the operator's status.
	Tally *Tally `json:"y,omitempty"`
}

// Key signs and verifies what nodes and the cache say to each other.
type Key struct {
	key []byte
	now func() time.Time

	mu       sync.Mutex
	seen     map[string]time.Time // nonces and tickets used, until they expire
	prunedAt time.Time
}

// NewKey derives the nodes' HMAC key from secret (the node key file's
// bytes), so that it signs nothing any other key of the cache would
// accept.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) < 16 {
		return nil, fmt.Errorf("the node key is %d bytes: want at least 16 random bytes", len(secret))
	}
	m := hmac.New(sha256.New, []byte("depproxy nodes"))
	m.Write(secret)
	return &Key{key: m.Sum(nil), now: time.Now, seen: map[string]time.Time{}}, nil
}

func (k *Key) mac(parts ...string) string {
	m := hmac.New(sha256.New, k.key)
	m.Write([]byte(strings.Join(parts, "\n")))
	return hex.EncodeToString(m.Sum(nil))
}

type claim struct {
	Node
	Time  int64  `json:"t"`
	Nonce string `json:"r"`
}

// Sign marks r as sent by node.
func (k *Key) Sign(r *http.Request, node Node) {
	var b [16]byte
	rand.Read(b[:])
	raw, _ := json.Marshal(claim{Node: node, Time: k.now().UnixMilli(), Nonce: hex.EncodeToString(b[:])})
	payload := base64.RawURLEncoding.EncodeToString(raw)
	r.Header.Set(NodeHeader, payload+"."+k.mac("request", payload, r.Method, r.URL.RequestURI()))
}

// Verify returns the node r was signed by: ok false for a request that
// does not say it comes from a node; ErrBadSignature for one that says so
// without proof, or that was seen before.
func (k *Key) Verify(r *http.Request) (node Node, ok bool, err error) {
	c, ok, err := k.check(r)
	if err != nil || !ok {
		return Node{}, ok, err
	}
	if !k.once("n:"+c.Nonce, time.UnixMilli(c.Time).Add(maxSkew)) {
		return Node{}, false, ErrBadSignature
	}
	return c.Node, true, nil
}

// Check is Verify without using the request up: a replica that passes
// it on to the one that decides turns a forged one away first, and
// learns the node's zone to find that one.
func (k *Key) Check(r *http.Request) (node Node, ok bool, err error) {
	c, ok, err := k.check(r)
	return c.Node, ok, err
}

// check verifies r's signature and time, and the claim's form.
func (k *Key) check(r *http.Request) (c claim, ok bool, err error) {
	v := r.Header.Get(NodeHeader)
	if v == "" {
		return claim{}, false, nil
	}
	payload, mac, found := strings.Cut(v, ".")
	if !found || !hmac.Equal([]byte(mac), []byte(k.mac("request", payload, r.Method, r.URL.RequestURI()))) {
		return claim{}, false, ErrBadSignature
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil || json.Unmarshal(raw, &c) != nil || c.Name == "" || len(c.Nonce) != 32 {
		return claim{}, false, ErrBadSignature
	}
	if c.Peer != "" && !PeerURL(c.Peer) {
		return claim{}, false, ErrBadSignature
	}
	if skew := k.now().Sub(time.UnixMilli(c.Time)); skew > maxSkew || skew < -maxSkew {
		return claim{}, false, ErrBadSignature
	}
	return c, true, nil
}

// PeerURL reports whether u is what a node's peer URL may be:
// http(s)://host:port and nothing more, so that a redirect to it goes to
// that listener's /blobs/ and nowhere else.
func PeerURL(u string) bool {
	p, err := url.Parse(u)
	return err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != "" && p.User == nil &&
		(p.Path == "" || p.Path == "/") && p.RawQuery == "" && p.Fragment == "" && !p.ForceQuery
}

// once records id as used until until; false when it was used before.
func (k *Key) once(id string, until time.Time) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	if now.Sub(k.prunedAt) > time.Second {
		for n, u := range k.seen {
			if now.After(u) {
				delete(k.seen, n)
			}
		}
		k.prunedAt = now
	}
	if _, used := k.seen[id]; used {
		return false
	}
	k.seen[id] = until
	return true
}

// Ticket lets one node fetch one blob from one holder, once, soon.
type Ticket struct {
	Digest digest.Digest `json:"d"`
	Asker  string        `json:"a"`
	Holder string        `json:"h"`
	Expiry int64         `json:"e"`
	ID     string        `json:"i"`
}

// Issue returns a signed ticket for asker to fetch d from holder.
func (k *Key) Issue(d digest.Digest, asker, holder string) string {
	var b [16]byte
	rand.Read(b[:])
	raw, _ := json.Marshal(Ticket{Digest: d, Asker: asker, Holder: holder, Expiry: k.now().Add(ticketTTL).UnixMilli(), ID: hex.EncodeToString(b[:])})
	payload := base64.RawURLEncoding.EncodeToString(raw)
	return payload + "." + k.mac("ticket", payload)
}

// Admit checks a peer request at holder: signed by a node, with a
// ticket for d, for that node, to holder, unexpired and not used before.
func (k *Key) Admit(r *http.Request, holder string, d digest.Digest) (asker Node, err error) {
	asker, ok, err := k.Verify(r)
	if err != nil || !ok {
		return Node{}, ErrBadTicket
	}
	payload, mac, found := strings.Cut(r.URL.Query().Get(TicketParam), ".")
	if !found || !hmac.Equal([]byte(mac), []byte(k.mac("ticket", payload))) {
		return Node{}, ErrBadTicket
	}
	var t Ticket
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil || json.Unmarshal(raw, &t) != nil {
		return Node{}, ErrBadTicket
	}
	expiry := time.UnixMilli(t.Expiry)
	if t.Digest != d || t.Asker != asker.Name || t.Holder != holder || k.now().After(expiry) || !k.once("t:"+t.ID, expiry) {
		return Node{}, ErrBadTicket
	}
	return asker, nil
}

// HolderOf is the holder a redirect's ticket names ("" when loc carries
// no ticket): the node to report when it does not serve.
func HolderOf(loc string) string {
	u, err := url.Parse(loc)
	if err != nil {
		return ""
	}
	payload, _, ok := strings.Cut(u.Query().Get(TicketParam), ".")
	if !ok {
		return ""
	}
	var t Ticket
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil || json.Unmarshal(raw, &t) != nil {
		return ""
	}
	return t.Holder
}
