package peers

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header carries a forwarded request's signature: when it was sent and
// an HMAC of the request under the replicas' shared key.
const Header = "Depproxy-Replica"

// maxSkew is how far a signature's time may be from the receiver's
// clock; older signatures are refused, so a captured request cannot be
// replayed for long.
const maxSkew = 2 * time.Minute

// ErrBadSignature is a request that claims to come from another replica
// and does not prove it.
var ErrBadSignature = errors.New("the request claims to come from another replica of this cache, and its signature does not verify: do all replicas have the same token key?")

// Signer signs requests a replica forwards and verifies those it gets.
// Replicas share the tenant's token signing key; the HMAC key is derived
// from it, so that it signs nothing a token verifier would accept.
type Signer struct {
	key []byte
	now func() time.Time
}

// NewSigner derives the replicas' HMAC key from secret (the token
// signing key's bytes).
func NewSigner(secret []byte) *Signer {
	mac := hmac.New(sha256.New, []byte("depproxy replicas"))
	mac.Write(secret)
	return &Signer{key: mac.Sum(nil), now: time.Now}
}

// Sign marks r as forwarded by a replica.
func (s *Signer) Sign(r *http.Request) {
	ts := strconv.FormatInt(s.now().Unix(), 10)
	r.Header.Set(Header, ts+":"+s.mac(ts, r.Method, r.URL.RequestURI()))
}

func (s *Signer) mac(ts, method, uri string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(ts + "\n" + method + "\n" + uri))
	return hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether r was forwarded by a replica: false for a
// request that does not say so, ErrBadSignature for one that says so
// without proof.
func (s *Signer) Verify(r *http.Request) (bool, error) {
	v := r.Header.Get(Header)
	if v == "" {
		return false, nil
	}
	ts, mac, ok := strings.Cut(v, ":")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil {
		return false, ErrBadSignature
	}
	if skew := s.now().Sub(time.Unix(sec, 0)); skew > maxSkew || skew < -maxSkew {
		return false, ErrBadSignature
	}
	if !hmac.Equal([]byte(mac), []byte(s.mac(ts, r.Method, r.URL.RequestURI()))) {
		return false, ErrBadSignature
	}
	return true, nil
}

type forwardedKey struct{}

// Forwarded marks ctx as serving a request another replica forwarded:
// whatever it needs comes from the upstream, never from a third replica,
// so no request goes round in circles while replicas disagree about who
// owns what.
func Forwarded(ctx context.Context) context.Context {
	return context.WithValue(ctx, forwardedKey{}, true)
}

// IsForwarded reports whether ctx serves a forwarded request.
func IsForwarded(ctx context.Context) bool {
	v, _ := ctx.Value(forwardedKey{}).(bool)
	return v
}
