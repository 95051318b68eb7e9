package token

import (
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/bcrypt"
)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, pemBytes, err := NewSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if back, err := ParseKey(pemBytes); err != nil || !back.Equal(k) {
		t.Fatalf("the PEM does not round-trip: %v", err)
	}
	return k
}

var pull = []Access{{Type: "repository", Name: "library/alpine", Actions: []string{"pull"}}}

func TestIssueAndVerify(t *testing.T) {
	s := NewSigner(newKey(t), "tenants/team-a", nil)
	raw, _, err := s.Issue("alice", "access", pull)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Verify(raw, "access")
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "alice" || !c.Allows("library/alpine") || c.Allows("library/nginx") {
		t.Fatalf("claims %+v", c)
	}
}

// Every way a token can be wrong is refused.
func TestVerifyRefuses(t *testing.T) {
	key := newKey(t)
	s := NewSigner(key, "tenants/team-a", nil)
	good, _, _ := s.Issue("alice", "access", pull)
	parts := strings.Split(good, ".")
	enc := base64.RawURLEncoding

	expired, _, _ := NewSigner(key, "tenants/team-a", func() time.Time { return time.Now().Add(-time.Hour) }).Issue("alice", "access", pull)
	otherKey, _, _ := NewSigner(newKey(t), "tenants/team-a", nil).Issue("alice", "access", pull)
	otherTenant, _, _ := NewSigner(key, "tenants/team-b", nil).Issue("alice", "access", pull)
	refresh, _, _ := s.Issue("alice", "refresh", nil)

	none := enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	// HS256 keyed with the public key: the classic algorithm confusion.
	pub, _ := json.Marshal(key.PublicKey.X.Bytes())
	hs, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"iss": Issuer, "aud": "tenants/team-a", "sub": "alice",
		"kind": "access", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(pub)

	claims, _ := enc.DecodeString(parts[1])
	tampered := strings.Replace(string(claims), `"alice"`, `"admin"`, 1)
	tamperedTok := parts[0] + "." + enc.EncodeToString([]byte(tampered)) + "." + parts[2]

	for name, raw := range map[string]string{
		"expired": expired, "signed by another key": otherKey, "another tenant's": otherTenant,
		"a refresh token as a bearer token": refresh, "alg none": none, "HS256 with the public key": hs,
		"tampered claims": tamperedTok, "garbage": "a.b.c", "empty": "",
	} {
		if _, err := s.Verify(raw, "access"); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestPullScopes(t *testing.T) {
	got := PullScopes([]string{"repository:library/alpine:pull,push", "repository:a:push", "registry:catalog:*", "repository:localhost:5000/x:pull"})
	if len(got) != 2 || got[0].Name != "library/alpine" || got[1].Name != "localhost:5000/x" {
		t.Fatalf("%+v", got)
	}
}

func TestLoadUsers(t *testing.T) {
	dir := t.TempDir()
	hash, _ := bcrypt.GenerateFromPassword([]byte("bob-pw"), bcrypt.MinCost)
	htpasswd := filepath.Join(dir, "htpasswd")
	os.WriteFile(htpasswd, []byte("# users\nbob:"+string(hash)+"\n"), 0o600)
	secret := filepath.Join(dir, "secret")
	os.MkdirAll(filepath.Join(secret, "..data"), 0o755)
	os.WriteFile(filepath.Join(secret, "alice"), []byte("alice-pw\n"), 0o600)
	os.WriteFile(filepath.Join(secret, "bob"), hash, 0o600)
	for _, path := range []string{htpasswd, secret} {
		u, err := LoadUsers(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !u.Check("bob", "bob-pw") || u.Check("bob", "alice-pw") || u.Check("nobody", "bob-pw") {
			t.Errorf("%s: checks wrong", path)
		}
	}
	u, _ := LoadUsers(secret, nil)
	if !u.Check("alice", "alice-pw") {
		t.Error("a plain password from a Secret does not work")
	}
	if string(u.hashes["alice"]) == "alice-pw" {
		t.Error("a plain password is kept in memory")
	}
	os.WriteFile(htpasswd, []byte("bob:plain\n"), 0o600)
	if _, err := LoadUsers(htpasswd, nil); err == nil || !strings.Contains(err.Error(), "htpasswd -B") {
		t.Errorf("an htpasswd line without bcrypt: %v", err)
	}
}

// FuzzVerify: whatever the token, verifying never panics and never
// accepts anything this signer did not sign.
func FuzzVerify(f *testing.F) {
	key, _, _ := NewSigningKey()
	s := NewSigner(key, "t", nil)
	good, _, _ := s.Issue("alice", "access", pull)
	f.Add(good)
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := s.Verify(raw, "access")
		if err == nil && raw != good {
			// Only the signer's own token may pass (ES256 signatures are
			// randomised, so no other string verifies).
			if c.Subject != "alice" {
				t.Fatalf("accepted a forged token: %q", raw)
			}
		}
	})
}
