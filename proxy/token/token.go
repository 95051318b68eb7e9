// Package token is the tenant-facing token service: it checks users'
// passwords, issues short-lived signed JWTs scoped to one tenant, and
// verifies them on every request. It follows the Docker registry token
// spec (GET /token with Basic auth, and the OAuth2 POST form with refresh
// tokens).
package token

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Anonymous is who pulls from an open cache without a login.
const Anonymous = "anonymous"

// Issuer is the JWT issuer name.
const Issuer = "depproxy"

// method is the only signing algorithm accepted: a token with any other
// "alg" (none, HS256 made with the public key, ...) is refused.
var method = jwt.SigningMethodES256

// Access is one grant, as in the Docker token spec.
type Access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// Claims of depproxy's tokens.
type Claims struct {
	jwt.RegisteredClaims
	Access []Access `json:"access,omitempty"`
	// Kind is "access" or "refresh": a refresh token is not a bearer token.
	Kind string `json:"kind"`
	// Credential, on a refresh token, fingerprints the password it was
	// issued for (Users.Credential): a new password revokes it.
	Credential string `json:"crd,omitempty"`
}

// ErrInvalid is returned for any token that is not good for this tenant.
var ErrInvalid = errors.New("invalid token")

// Signer issues and verifies one tenant's tokens.
type Signer struct {
	key        *ecdsa.PrivateKey
	audience   string
	ttl        time.Duration
	refreshTTL time.Duration
	now        func() time.Time
}

// NewSigner returns a signer for tenant (the tokens' audience).
func NewSigner(key *ecdsa.PrivateKey, tenant string, now func() time.Time) *Signer {
	if now == nil {
		now = time.Now
	}
	return &Signer{key: key, audience: tenant, ttl: 5 * time.Minute, refreshTTL: 24 * time.Hour, now: now}
}

// IssueRefresh signs a refresh token for subject, bound to the
// fingerprint of its current password.
func (s *Signer) IssueRefresh(subject, credential string) (string, time.Time, error) {
	return s.issue(subject, "refresh", nil, credential)
}

// Issue signs a token of kind ("access" or "refresh") for subject.
func (s *Signer) Issue(subject, kind string, access []Access) (string, time.Time, error) {
	return s.issue(subject, kind, access, "")
}

func (s *Signer) issue(subject, kind string, access []Access, credential string) (string, time.Time, error) {
	now := s.now()
	ttl := s.ttl
	if kind == "refresh" {
		ttl = s.refreshTTL
	}
	exp := now.Add(ttl)
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: Issuer, Subject: subject, Audience: jwt.ClaimStrings{s.audience},
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now.Add(-time.Second)), ExpiresAt: jwt.NewNumericDate(exp),
		},
		Access:     access,
		Kind:       kind,
		Credential: credential,
	}
	raw, err := jwt.NewWithClaims(method, c).SignedString(s.key)
	return raw, now, err
}

// TTL is how long access tokens live.
func (s *Signer) TTL() time.Duration { return s.ttl }

// Verify checks a token's signature, algorithm, issuer, audience, expiry
// (with a small leeway for clock skew) and kind.
func (s *Signer) Verify(raw, kind string) (*Claims, error) {
	c := &Claims{}
	_, err := jwt.ParseWithClaims(raw, c, func(*jwt.Token) (any, error) { return &s.key.PublicKey, nil },
		jwt.WithValidMethods([]string{method.Alg()}),
		jwt.WithIssuer(Issuer),
		jwt.WithAudience(s.audience),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(30*time.Second),
		jwt.WithTimeFunc(s.now),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if c.Kind != kind {
		return nil, fmt.Errorf("%w: a %s token where a %s token is needed", ErrInvalid, c.Kind, kind)
	}
	return c, nil
}

// Allows reports whether the claims grant pull on repo.
func (c *Claims) Allows(repo string) bool {
	for _, a := range c.Access {
		if a.Type == "repository" && a.Name == repo {
			for _, act := range a.Actions {
				if act == "pull" {
					return true
				}
			}
		}
	}
	return false
}

// PullScopes turns requested scopes ("repository:library/alpine:pull,push")
// into grants: only pull is ever granted, the proxy being read-only.
func PullScopes(scopes []string) []Access {
	var out []Access
	for _, sc := range scopes {
		for _, one := range strings.Fields(sc) {
			parts := strings.Split(one, ":")
			if len(parts) < 3 || parts[0] != "repository" {
				continue
			}
			name := strings.Join(parts[1:len(parts)-1], ":")
			for _, act := range strings.Split(parts[len(parts)-1], ",") {
				if act == "pull" || act == "*" {
					out = append(out, Access{Type: "repository", Name: name, Actions: []string{"pull"}})
					break
				}
			}
		}
	}
	return out
}

// LoadKey reads a PEM EC private key (SEC 1 or PKCS #8).
func LoadKey(path string) (*ecdsa.PrivateKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token key: %w", err)
	}
	return ParseKey(raw)
}

// ParseKey parses a PEM EC private key.
func ParseKey(raw []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("token key: not PEM")
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("token key: %w", err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("token key: want an ECDSA P-256 key")
	}
	return ec, nil
}
