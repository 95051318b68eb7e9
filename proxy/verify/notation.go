package verify

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/notaryproject/notation-core-go/revocation"
	"github.com/notaryproject/notation-core-go/revocation/crl"
	"github.com/notaryproject/notation-core-go/revocation/purpose"
	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-core-go/signature/cose"
	"github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/notaryproject/notation-go"
	notationdir "github.com/notaryproject/notation-go/dir"
	"github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/depproxy/depproxy/proxy/manifest"
)

// notationSpec is a notation rule as written: the two things the
// notation CLI keeps in its configuration directory, named here.
type notationSpec struct {
	// TrustStore is a directory laid out as notation's truststore:
	// x509/ca/<name>/*.pem (and x509/signingAuthority/…, x509/tsa/…).
	TrustStore string `json:"trustStore"`
	// TrustPolicy is an OCI trust policy document (trustpolicy.json).
	TrustPolicy string `json:"trustPolicy"`
}

// notationTrust is a rule's notation trust as read when the policy is
// loaded: the trust policy, the certificates of the trust stores it
// names, and notation-go's verifier over them.
type notationTrust struct {
	policyFile string // as written, for refusals
	doc        *trustpolicy.Document
	verifier   notation.Verifier
}

// newNotation reads s's trust policy and the trust stores it names
// (relative to dir); the bytes read are also returned, for the policy's
// hash. A trust store the trust policy names and the directory lacks is
// an error now, not a refusal of every image later.
func newNotation(s *notationSpec, dir string) (*notationTrust, []byte, error) {
	switch {
	case s.TrustStore == "":
		return nil, nil, errors.New("notation: names no trustStore directory")
	case s.TrustPolicy == "":
		return nil, nil, errors.New("notation: names no trustPolicy file")
	}
	storeDir, policyPath := s.TrustStore, s.TrustPolicy
	if !filepath.IsAbs(storeDir) {
		storeDir = filepath.Join(dir, storeDir)
	}
	if !filepath.IsAbs(policyPath) {
		policyPath = filepath.Join(dir, policyPath)
	}
	raw, err := os.ReadFile(policyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("notation: trustPolicy: %w", err)
	}
	var doc trustpolicy.Document
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields() // a misspelt field must not loosen the policy
	if err := dec.Decode(&doc); err != nil {
		return nil, nil, fmt.Errorf("notation: trustPolicy %s: %w", s.TrustPolicy, err)
	}
	if err := doc.Validate(); err != nil {
		return nil, nil, fmt.Errorf("notation: trustPolicy %s: %w", s.TrustPolicy, err)
	}
	if info, err := os.Stat(storeDir); err != nil || !info.IsDir() {
		return nil, nil, fmt.Errorf("notation: trustStore %s is not a directory", s.TrustStore)
	}

	// The certificates are read once, with notation-go's own reader and
	// checks, and kept: a verdict is reached with what the policy's hash
	// names, not with whatever the directory holds by then.
	files := truststore.NewX509TrustStore(storeFS{FS: os.DirFS(storeDir), root: storeDir})
	store := certStore{}
	read := append([]byte(nil), raw...)
	for _, st := range doc.TrustPolicies {
		for _, named := range st.TrustStores {
			if _, ok := store[named]; ok {
				continue
			}
			typ, name, _ := strings.Cut(named, ":") // the format Validate checked
			certs, err := files.GetCertificates(context.Background(), truststore.Type(typ), name)
			if err != nil {
				return nil, nil, fmt.Errorf("notation: trustStore %s: x509/%s/%s, named by trust policy statement %q: %w",
					s.TrustStore, typ, name, st.Name, err)
			}
			store[named] = certs
		}
	}
	for _, n := range slices.Sorted(maps.Keys(store)) {
		read = append(read, n...)
		for _, c := range store[n] {
			read = append(read, c.Raw...)
		}
	}

	v, err := verifier.NewWithOptions(&doc, store, nil, verifier.VerifierOptions{
		RevocationCodeSigningValidator:  offlineRevocation(purpose.CodeSigning),
		RevocationTimestampingValidator: offlineRevocation(purpose.Timestamping),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("notation: %w", err)
	}
	return &notationTrust{policyFile: s.TrustPolicy, doc: &doc, verifier: v}, read, nil
}

// storeFS is the rule's trustStore directory where notation-go looks for
// its own: notation keeps x509/… in a "truststore" directory of its
// configuration directory, and a rule names that directory itself.
type storeFS struct {
	fs.FS
	root string
}

func (s storeFS) SysPath(items ...string) (string, error) {
	rel, ok := strings.CutPrefix(filepath.Join(items...), notationdir.TrustStoreDir+string(filepath.Separator))
	if !ok {
		return "", fmt.Errorf("%s is not in a trust store", filepath.Join(items...))
	}
	return filepath.Join(s.root, rel), nil
}

// certStore is a trust store as read, by "type:name" as a trust policy
// names it.
type certStore map[string][]*x509.Certificate

func (s certStore) GetCertificates(_ context.Context, typ truststore.Type, name string) ([]*x509.Certificate, error) {
	certs, ok := s[string(typ)+":"+name]
	if !ok {
		return nil, truststore.TrustStoreError{Msg: fmt.Sprintf("the trust store %q of type %q was not read", name, typ)}
	}
	return certs, nil
}

// offlineRevocation is a revocation validator that asks no OCSP
// responder and fetches no CRL: the cache verifies offline. A
// certificate naming neither is not revocable, and passes; one naming
// either has an unknown status, which the trust policy's revocation
// setting (skip, log, enforce) decides on.
func offlineRevocation(p purpose.Purpose) revocation.Validator {
	client := &http.Client{Transport: offline{}}
	fetcher, err := crl.NewHTTPFetcher(client)
	if err != nil {
		panic(err) // only for a nil client
	}
	v, err := revocation.NewWithOptions(revocation.Options{OCSPHTTPClient: client, CRLFetcher: fetcher, CertChainPurpose: p})
	if err != nil {
		panic(err) // only for an unknown purpose
	}
	return v
}

// offline refuses every request.
type offline struct{}

func (offline) RoundTrip(r *http.Request) (*http.Response, error) {
	return nil, fmt.Errorf("offline: %s is not asked", r.URL.Host)
}

// isNotationEnvelope says whether a layer is a notation signature
// envelope.
func isNotationEnvelope(mediaType string) bool {
	return mediaType == jws.MediaTypeEnvelope || mediaType == cose.MediaTypeEnvelope
}

// maxNotationSignatures bounds the signatures tried for one manifest, as
// notation verify's --max-signatures does (its default).
const maxNotationSignatures = 100

// The reasons of a notation refusal.
const (
	reasonNoNotation = "no notation signature"
	reasonOffline    = "the signing certificate names a revocation service, which is not asked offline: the trust policy statement %q must skip revocation (signatureVerification: {level: strict, override: {revocation: skip}}) or only log it"
)

// verifyNotation checks the notation signatures that refer to target
// (the manifest served as repo's, of a registry known by names) with
// notation-go against n's trust policy and trust stores: "" when one
// verifies, else the reason none did, that of the signature that got
// furthest.
func verifyNotation(ctx context.Context, src Source, n *notationTrust, names []string, repo string, target ocispec.Descriptor) string {
	ref, statement, why := n.statement(names, repo, target.Digest)
	if why != "" {
		return why
	}
	if level, _ := statement.SignatureVerification.GetVerificationLevel(); level != nil && level.Name == trustpolicy.LevelSkip.Name {
		return "" // as notation verify: the trust policy says not to
	}
	raw, err := src.Referrers(ctx, repo, target.Digest)
	if errors.Is(err, ErrNotFound) {
		return reasonNoNotation
	}
	if err != nil {
		return reasonUnreadable + err.Error()
	}
	var index ocispec.Index
	if err := json.Unmarshal(raw, &index); err != nil {
		return reasonUnreadable + "the referrers index: " + err.Error()
	}
	best, bestStage := "", -1
	tried := 0
	for _, desc := range index.Manifests {
		if desc.ArtifactType != registry.ArtifactTypeNotation {
			continue
		}
		if tried++; tried > maxNotationSignatures {
			break
		}
		envelope, mediaType, err := notationEnvelope(ctx, src, repo, desc.Digest)
		if err != nil {
			return reasonUnreadable + err.Error()
		}
		if envelope == nil {
			continue // not one envelope: not a signature notation reads
		}
		outcome, err := n.verifier.Verify(ctx, target, envelope, notation.VerifierVerifyOptions{
			ArtifactReference:  ref,
			SignatureMediaType: mediaType,
		})
		if err == nil {
			return ""
		}
		if why, stage := notationReason(statement, outcome, err); stage > bestStage {
			best, bestStage = why, stage
		}
	}
	if bestStage < 0 {
		return reasonNoNotation
	}
	return best
}

// statement is the trust policy statement that covers repo, of a
// registry known by names, and the reference notation-go matches it by;
// or the reason none does. A statement naming one of the registry's
// names is taken before a wildcard one, as notation takes it.
func (n *notationTrust) statement(names []string, repo string, d digest.Digest) (ref string, st *trustpolicy.TrustPolicy, why string) {
	var wildcard *trustpolicy.TrustPolicy
	var wildRef string
	for _, name := range names {
		r := name + "/" + repo + "@" + d.String()
		tp, err := n.doc.GetApplicableTrustPolicy(r)
		if err != nil {
			continue
		}
		if len(tp.RegistryScopes) == 1 && tp.RegistryScopes[0] == "*" {
			if wildcard == nil {
				wildcard, wildRef = tp, r
			}
			continue
		}
		return r, tp, ""
	}
	if wildcard != nil {
		return wildRef, wildcard, ""
	}
	scope := repo
	if len(names) > 0 {
		scope = names[0] + "/" + repo
	}
	return "", nil, fmt.Sprintf("trust policy %s does not cover %s: no statement's registryScopes names it, and none is \"*\"", n.policyFile, scope)
}

// notationEnvelope reads the envelope of the signature manifest d: nil
// when the manifest does not hold exactly one (notation's own rule).
func notationEnvelope(ctx context.Context, src Source, repo string, d digest.Digest) ([]byte, string, error) {
	raw, err := src.Manifest(ctx, repo, manifest.DigestRef(d))
	if err != nil {
		return nil, "", err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, "", fmt.Errorf("the notation signature's manifest %s: %w", d, err)
	}
	if len(m.Layers) != 1 || !isNotationEnvelope(m.Layers[0].MediaType) {
		return nil, "", nil
	}
	blob, err := src.Blob(ctx, repo, m.Layers[0].Digest, maxSignatureBlob)
	if err != nil {
		return nil, "", err
	}
	return blob, m.Layers[0].MediaType, nil
}

// notationReason says why a signature failed, so that whoever signs or
// writes the trust policy knows what to change, and how far it got: the
// checks notation-go makes, in its order.
func notationReason(st *trustpolicy.TrustPolicy, outcome *notation.VerificationOutcome, err error) (string, int) {
	var failed *notation.ValidationResult
	if outcome != nil {
		for _, r := range outcome.VerificationResults {
			if r.Error != nil && r.Action == trustpolicy.ActionEnforce {
				failed = r
				break
			}
		}
	}
	if failed == nil {
		// Every check held, and the signature is of something else
		// (notation-go says so in a plain error of its own).
		if err.Error() == "content descriptor mismatch" {
			return "the notation signature is for another manifest (digest, media type or size)", 6
		}
		return "the notation signature does not verify: " + oneLine(err), 0
	}
	switch failed.Type {
	case trustpolicy.TypeIntegrity:
		return "the notation signature does not verify: " + oneLine(failed.Error), 0
	case trustpolicy.TypeAuthenticity:
		var untrusted *signature.SignatureAuthenticityError
		if errors.As(failed.Error, &untrusted) {
			return fmt.Sprintf("signed by a certificate the trust store does not hold (trust policy statement %q trusts %s)",
				st.Name, strings.Join(st.TrustStores, ", ")), 1
		}
		if chain := outcome.EnvelopeContent; chain != nil && len(chain.SignerInfo.CertificateChain) > 0 &&
			strings.Contains(failed.Error.Error(), "trusted identities") {
			return fmt.Sprintf("signed by %q, whom trust policy statement %q does not name in its trustedIdentities",
				chain.SignerInfo.CertificateChain[0].Subject.String(), st.Name), 2
		}
		return "the notation signature's signer is not trusted: " + oneLine(failed.Error), 1
	case trustpolicy.TypeExpiry:
		return "the notation signature expired: " + oneLine(failed.Error), 3
	case trustpolicy.TypeAuthenticTimestamp:
		if strings.Contains(failed.Error.Error(), "after certificate") {
			return reasonExpired + ": " + oneLine(failed.Error), 4
		}
		return "no timestamp proves when it was signed: " + oneLine(failed.Error), 4
	case trustpolicy.TypeRevocation:
		if strings.Contains(failed.Error.Error(), "is revoked") {
			return "the signing certificate is revoked: " + oneLine(failed.Error), 5
		}
		return fmt.Sprintf(reasonOffline, st.Name), 5
	}
	return oneLine(failed.Error), 0
}
