// Package notationtest is a notation signer of a test's own, offline: a
// CA and a code-signing certificate it issues (made with crypto/x509),
// notation-go's signer over them, and the trust store and trust policy
// a notation user would write to trust that CA. Envelopes are made and
// pushed by notation-go itself: nothing here signs or encodes by hand.
package notationtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/signer"
	"oras.land/oras-go/v2/registry/remote"
)

// CA is a test certificate authority and the leaf it signs with.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// Leaf is the code-signing certificate, and its key, that Sign uses.
	Leaf    *x509.Certificate
	leafKey *ecdsa.PrivateKey
}

// Options change the leaf a CA issues.
type Options struct {
	// Subject is the leaf's subject's common name ("signer" by default).
	Subject string
	// NotAfter ends the leaf's validity (a day from now by default).
	NotAfter time.Time
	// OCSP names a revocation responder in the leaf.
	OCSP string
}

// New makes a CA named name and a leaf it issues.
func New(t *testing.T, name string, o Options) *CA {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"depproxy test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caCert := issue(t, caTmpl, caTmpl, &key.PublicKey, key)
	if o.Subject == "" {
		o.Subject = "signer"
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(24 * time.Hour)
	}
	leafKey := newKey(t)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: o.Subject, Organization: []string{"depproxy test"}, Country: []string{"US"}, Province: []string{"WA"}, Locality: []string{"Seattle"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     o.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}
	if o.OCSP != "" {
		leafTmpl.OCSPServer = []string{o.OCSP}
	}
	leaf := issue(t, leafTmpl, caCert, &leafKey.PublicKey, key)
	return &CA{Cert: caCert, key: key, Leaf: leaf, leafKey: leafKey}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func issue(t *testing.T, tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Subject is the leaf's subject as a trust policy's trustedIdentities
// name it.
func (ca *CA) Subject() string { return "x509.subject: " + ca.Leaf.Subject.String() }

// WriteTrustStore writes the CA's certificate into dir as notation lays
// out its trust store: x509/ca/<name>/<name>.pem.
func (ca *CA) WriteTrustStore(t *testing.T, dir, name string) {
	t.Helper()
	store := filepath.Join(dir, "x509", "ca", name)
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
	if err := os.WriteFile(filepath.Join(store, name+".pem"), pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Statement is a trust policy statement.
type Statement struct {
	Name   string
	Scopes []string
	// Level is strict by default.
	Level string
	// Revocation overrides the level's revocation check ("skip", "log").
	Revocation string
	Stores     []string // "ca:<name>"
	Identities []string // "*" by default
}

// WriteTrustPolicy writes an OCI trust policy document of statements.
func WriteTrustPolicy(t *testing.T, path string, statements ...Statement) {
	t.Helper()
	type verification struct {
		Level    string            `json:"level"`
		Override map[string]string `json:"override,omitempty"`
	}
	type statement struct {
		Name                  string       `json:"name"`
		RegistryScopes        []string     `json:"registryScopes"`
		SignatureVerification verification `json:"signatureVerification"`
		TrustStores           []string     `json:"trustStores"`
		TrustedIdentities     []string     `json:"trustedIdentities"`
	}
	doc := struct {
		Version       string      `json:"version"`
		TrustPolicies []statement `json:"trustPolicies"`
	}{Version: "1.0"}
	for _, s := range statements {
		st := statement{Name: s.Name, RegistryScopes: s.Scopes, TrustStores: s.Stores, TrustedIdentities: s.Identities,
			SignatureVerification: verification{Level: s.Level}}
		if st.SignatureVerification.Level == "" {
			st.SignatureVerification.Level = "strict"
		}
		if s.Revocation != "" {
			st.SignatureVerification.Override = map[string]string{"revocation": s.Revocation}
		}
		if st.TrustedIdentities == nil && st.SignatureVerification.Level != "skip" {
			st.TrustedIdentities = []string{"*"}
		}
		doc.TrustPolicies = append(doc.TrustPolicies, st)
	}
	raw, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// signer is notation-go's signer over the leaf and the CA.
func (ca *CA) signer(t *testing.T) notation.Signer {
	t.Helper()
	s, err := signer.NewGenericSigner(ca.leafKey, []*x509.Certificate{ca.Leaf, ca.Cert})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Sign signs reg/repo@digest (reg a plain-HTTP registry) and pushes the
// signature as notation sign does: an OCI manifest of artifactType
// application/vnd.cncf.notary.signature, the envelope its layer, the
// image its subject; oras-go keeps the referrers fallback tag where the
// registry has no referrers API.
func (ca *CA) Sign(t *testing.T, reg, repo, digest string) {
	t.Helper()
	ca.SignAs(t, reg, repo, digest, jws.MediaTypeEnvelope)
}

// SignAs is Sign with the envelope of mediaType: JWS
// (application/jose+json) or COSE (application/cose).
func (ca *CA) SignAs(t *testing.T, reg, repo, digest, mediaType string) {
	t.Helper()
	r, err := remote.NewRepository(reg + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	opts := notation.SignOptions{ArtifactReference: reg + "/" + repo + "@" + digest}
	opts.SignatureMediaType = mediaType
	if _, err := notation.Sign(context.Background(), ca.signer(t), registry.NewRepository(r), opts); err != nil {
		t.Fatalf("notation signing %s@%s: %v", repo, digest, err)
	}
}
