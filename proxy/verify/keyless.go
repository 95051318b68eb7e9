package verify

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
)

// keyless is a rule's signer named by who they are, not by a key: the
// identity a Fulcio-like CA put in a short-lived certificate, checked
// against the rule's trusted root, with the log proof and a timestamp
// that show the certificate was valid when it signed.
type keyless struct {
	identity sgverify.CertificateIdentity
	want     string // the identity as written, for the refusal
	trust    *trustedRoot
	verifier *sgverify.Verifier
}

// trustedRoot is a trusted_root.json as read: the CAs, logs and
// timestamp authorities the cache trusts for a rule. It is all that is
// trusted: nothing is fetched (no TUF, no online log).
type trustedRoot struct {
	file string
	root *root.TrustedRoot
}

// keylessSpec is a keyless rule as written.
type keylessSpec struct {
	Issuer        string   `json:"issuer"`
	IssuerRegExp  string   `json:"issuerRegExp"`
	Subject       string   `json:"subject"`
	SubjectRegExp string   `json:"subjectRegExp"`
	TrustedRoot   *fileRef `json:"trustedRoot"`
}

type fileRef struct {
	File string `json:"file"`
}

// readTrustedRoot reads ref's file (relative to dir) with sigstore-go;
// its bytes are also returned, for the policy's hash.
func readTrustedRoot(ref *fileRef, dir string) (*trustedRoot, []byte, error) {
	if ref == nil || ref.File == "" {
		return nil, nil, errors.New("names no trustedRoot file")
	}
	path := ref.File
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("trustedRoot: %w", err)
	}
	tr, err := root.NewTrustedRootFromJSON(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("trustedRoot %s: %w", ref.File, err)
	}
	return &trustedRoot{file: ref.File, root: tr}, raw, nil
}

// newKeyless builds the rule's identity and verifier. Issuer and subject
// are each an exact value or a regular expression (unanchored, as
// sigstore-go and cosign's --certificate-identity-regexp match them).
func newKeyless(s *keylessSpec, dir string) (*keyless, []byte, error) {
	switch {
	case (s.Issuer == "") == (s.IssuerRegExp == ""):
		return nil, nil, errors.New("keyless: one of issuer or issuerRegExp")
	case (s.Subject == "") == (s.SubjectRegExp == ""):
		return nil, nil, errors.New("keyless: one of subject or subjectRegExp")
	}
	id, err := sgverify.NewShortCertificateIdentity(s.Issuer, s.IssuerRegExp, s.Subject, s.SubjectRegExp)
	if err != nil {
		return nil, nil, fmt.Errorf("keyless: %w", err)
	}
	tr, raw, err := readTrustedRoot(s.TrustedRoot, dir)
	if err != nil {
		return nil, nil, fmt.Errorf("keyless: %w", err)
	}
	// A short-lived certificate holds only with a log proof and a time
	// someone trusted saw it signed: the log's signed entry time or a
	// timestamp authority's. Where the trusted root names certificate
	// transparency logs, its CA embeds their proofs, and one is asked for
	// as cosign does.
	opts := []sgverify.VerifierOption{sgverify.WithTransparencyLog(1), sgverify.WithObserverTimestamps(1)}
	if len(tr.root.CTLogs()) > 0 {
		opts = append(opts, sgverify.WithSignedCertificateTimestamps(1))
	}
	v, err := sgverify.NewVerifier(tr.root, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("keyless: %w", err)
	}
	want := "issuer " + quoted(s.Issuer, s.IssuerRegExp) + " subject " + quoted(s.Subject, s.SubjectRegExp)
	return &keyless{identity: id, want: want, trust: tr, verifier: v}, raw, nil
}

func quoted(exact, re string) string {
	if exact != "" {
		return fmt.Sprintf("%q", exact)
	}
	return fmt.Sprintf("matching %q", re)
}

// checkKeyless verifies a bundle's certificate, log proof, timestamp and
// signature over digest with sigstore-go, and its identity against the
// rule's: "" when it all holds, else the first part that failed, said so
// that whoever signs or writes the policy knows what to change.
func checkKeyless(b *bundle.Bundle, k *keyless, algorithm string, digest []byte) string {
	artifact := sgverify.WithArtifactDigest(algorithm, digest)
	_, err := k.verifier.Verify(b, sgverify.NewPolicy(artifact, sgverify.WithCertificateIdentity(k.identity)))
	if err == nil {
		return ""
	}
	// Which part failed: sigstore-go's steps run one by one, in its order.
	if vc, _ := b.VerificationContent(); vc == nil || vc.Certificate() == nil {
		return "signed with a key, not a certificate: a keyless rule checks certificates"
	}
	entries, _ := b.TlogEntries()
	if len(entries) == 0 {
		return reasonNoTlog
	}
	if !knownLog(entries, k.trust.root) {
		return reasonTlogBad + reasonUnknownLog
	}
	logTimes, err := k.verifier.VerifyTransparencyLogInclusion(b)
	if err != nil {
		return reasonTlogBad + oneLine(err)
	}
	if _, err := k.verifier.VerifyObserverTimestamps(b, logTimes); err != nil {
		vc, _ := b.VerificationContent()
		if time.Now().After(vc.Certificate().NotAfter) {
			return reasonExpired
		}
		return "no timestamp proves when it was signed: " + oneLine(err)
	}
	// All else holding, does it with any identity?
	res, anyone := k.verifier.Verify(b, sgverify.NewPolicy(artifact, sgverify.WithoutIdentitiesUnsafe()))
	if anyone == nil && res.Signature != nil && res.Signature.Certificate != nil {
		c := res.Signature.Certificate
		return fmt.Sprintf("identity mismatch: issuer %q subject %q, the rule wants %s", c.Issuer, c.SubjectAlternativeName, k.want)
	}
	if _, nodigest := k.verifier.Verify(b, sgverify.NewPolicy(sgverify.WithoutArtifactUnsafe(), sgverify.WithoutIdentitiesUnsafe())); nodigest == nil {
		return reasonDigest
	}
	return "the certificate or signature does not verify against the rule's trusted root: " + oneLine(anyone)
}

// reasonUnknownLog: sigstore-go skips the entries of logs its trusted
// root does not name, and then finds too few.
const reasonUnknownLog = "logged by a transparency log the rule's trusted root does not name"

// knownLog says whether an entry is of a log of tr's.
func knownLog(entries []*tlog.Entry, tr root.TrustedMaterial) bool {
	logs := tr.RekorLogs()
	for _, e := range entries {
		if _, ok := logs[hex.EncodeToString([]byte(e.LogKeyID()))]; ok {
			return true
		}
	}
	return false
}

// oneLine is an error as a refusal carries it, in a header-safe line:
// some of sigstore's span lines.
func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }
