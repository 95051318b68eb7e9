package peers

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Header carries a forwarded request's signature: when it was sent, a
// nonce, and an HMAC of the request and the replica it is meant for,
// under the replicas' shared key.
const Header = "Depproxy-Replica"

// AnswerHeader carries the owner's proof of its answer to a forwarded
// request: an HMAC, bound to the request's nonce, of the status, the
// Docker-Content-Digest, the Content-Type and a digest of the body.
const AnswerHeader = "Depproxy-Replica-Answer"

// maxSkew is how far a signature's time may be from the receiver's
// clock. Replicas forward at once; a request older than this is a replay
// or a clock that is off.
const maxSkew = 5 * time.Second

// ErrBadSignature is a request that claims to come from another replica
// and does not prove it.
var ErrBadSignature = errors.New("the request claims to come from another replica of this cache, and its signature does not verify: do all replicas have the same token key, and clocks within seconds of each other?")

// errBadAnswer is an answer from a replica that does not prove it came
// from a replica of this cache, for this request.
var errBadAnswer = errors.New("the replica's answer does not prove itself")

// Signer signs requests a replica forwards and the answers it gives to
// those it gets, and verifies both. Replicas share the tenant's token
// signing key; the HMAC key is derived from it, so that it signs nothing
// a token verifier would accept.
type Signer struct {
	key []byte
	now func() time.Time

	mu       sync.Mutex
	seen     map[string]time.Time // nonces accepted, until they could no longer verify
	prunedAt time.Time
}

// NewSigner derives the replicas' HMAC key from secret (the token
// signing key's bytes).
func NewSigner(secret []byte) *Signer {
	mac := hmac.New(sha256.New, []byte("depproxy replicas"))
	mac.Write(secret)
	return &Signer{key: mac.Sum(nil), now: time.Now, seen: map[string]time.Time{}}
}

func (s *Signer) mac(parts ...string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(strings.Join(parts, "\n")))
	return hex.EncodeToString(m.Sum(nil))
}

// Forward is what a verified forwarded request asks of its answer.
type Forward struct {
	// Nonce binds the answer to this request.
	Nonce string
	// BindBody: the answer's proof covers a digest of its body (a
	// manifest, read whole by the asker); else the body is a blob that
	// the asker checks against its digest itself.
	BindBody bool
}

// Sign marks r as forwarded by a replica to target (the receiving
// replica's URL, as the ring names it). It returns what the answer must
// be proven with.
func (s *Signer) Sign(r *http.Request, target string, bindBody bool) Forward {
	var b [16]byte
	rand.Read(b[:])
	f := Forward{Nonce: hex.EncodeToString(b[:]), BindBody: bindBody}
	ts := strconv.FormatInt(s.now().UnixMilli(), 10)
	mode := bodyMode(bindBody)
	r.Header.Set(Header, strings.Join([]string{ts, f.Nonce, mode, s.mac("request", ts, f.Nonce, mode, target, r.Method, r.URL.RequestURI())}, ":"))
	return f
}

func bodyMode(bind bool) string {
	if bind {
		return "body"
	}
	return "stream"
}

// Verify reports whether r was forwarded to self by a replica: ok false
// for a request that does not say so, ErrBadSignature for one that says
// so without proof, that is meant for another replica, or that was seen
// before.
func (s *Signer) Verify(r *http.Request, self string) (f Forward, ok bool, err error) {
	v := r.Header.Get(Header)
	if v == "" {
		return Forward{}, false, nil
	}
	parts := strings.Split(v, ":")
	if len(parts) != 4 {
		return Forward{}, false, ErrBadSignature
	}
	ts, nonce, mode, mac := parts[0], parts[1], parts[2], parts[3]
	ms, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(nonce) != 32 || (mode != bodyMode(true) && mode != bodyMode(false)) {
		return Forward{}, false, ErrBadSignature
	}
	now := s.now()
	if skew := now.Sub(time.UnixMilli(ms)); skew > maxSkew || skew < -maxSkew {
		return Forward{}, false, ErrBadSignature
	}
	if !hmac.Equal([]byte(mac), []byte(s.mac("request", ts, nonce, mode, self, r.Method, r.URL.RequestURI()))) {
		return Forward{}, false, ErrBadSignature
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.prunedAt) > time.Second {
		// Once a second: a busy replica sees thousands of nonces in a
		// window, and checks one per request.
		for n, until := range s.seen {
			if now.After(until) {
				delete(s.seen, n)
			}
		}
		s.prunedAt = now
	}
	if _, replayed := s.seen[nonce]; replayed {
		return Forward{}, false, ErrBadSignature
	}
	s.seen[nonce] = time.UnixMilli(ms).Add(maxSkew)
	return Forward{Nonce: nonce, BindBody: mode == bodyMode(true)}, true, nil
}

// answerMAC binds what an answer says to the request it answers.
func (s *Signer) answerMAC(nonce string, status int, h http.Header, bodyDigest string) string {
	return s.mac("answer", nonce, strconv.Itoa(status), h.Get("Docker-Content-Digest"), h.Get("Content-Type"), bodyDigest)
}

// SignAnswer sets the proof of an answer to a forwarded request: h are
// the headers about to be sent with status; bodyDigest is the body's
// sha256 in hex when it is bound too (manifests), else "".
func (s *Signer) SignAnswer(nonce string, status int, h http.Header, bodyDigest string) {
	h.Set(AnswerHeader, s.answerMAC(nonce, status, h, bodyDigest))
}

// verifyAnswer checks an owner's answer to the request signed as f;
// body is the whole body when f binds it.
func (s *Signer) verifyAnswer(f Forward, resp *http.Response, body []byte) error {
	bodyDigest := ""
	if f.BindBody {
		sum := sha256.Sum256(body)
		bodyDigest = hex.EncodeToString(sum[:])
	}
	got := resp.Header.Get(AnswerHeader)
	if got == "" || !hmac.Equal([]byte(got), []byte(s.answerMAC(f.Nonce, resp.StatusCode, resp.Header, bodyDigest))) {
		return errBadAnswer
	}
	return nil
}
