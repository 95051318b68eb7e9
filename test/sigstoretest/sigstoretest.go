// Package sigstoretest is a Sigstore of a test's own, offline:
// sigstore-go's virtual CA, transparency log and timestamp authority
// issue a certificate for an identity, sign an image's digest as cosign
// v3 does, log the signature and timestamp it. What it signs is written
// as a sigstore bundle, and what it trusts as a trusted_root.json, both
// by sigstore-go's own types: nothing here signs or parses by hand.
package sigstoretest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-openapi/runtime"
	intoto "github.com/in-toto/attestation/go/v1"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/rekor/pkg/generated/models"
	rekortypes "github.com/sigstore/rekor/pkg/types"
	"github.com/sigstore/rekor/pkg/types/hashedrekord"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// BundleType is the media type of a bundle as cosign v3 attaches it:
// the referrer's artifactType and its one layer's.
const BundleType = "application/vnd.dev.sigstore.bundle.v0.3+json"

// Sigstore is a CA, a log and a timestamp authority.
type Sigstore struct{ vs *ca.VirtualSigstore }

func New(t testing.TB) *Sigstore {
	t.Helper()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	return &Sigstore{vs: vs}
}

// TrustedRoot is its trusted_root.json: the CA, the log and the
// timestamp authority. Its CA embeds no certificate-transparency proofs,
// so the root names no CT log (a verifier asks for those proofs when
// it does).
func (s *Sigstore) TrustedRoot(t testing.TB) []byte {
	t.Helper()
	logs := map[string]*root.TransparencyLog{}
	for id, l := range s.vs.RekorLogs() {
		// The virtual log names itself by its ID in hex, where a
		// trusted root holds the ID's bytes.
		raw, err := hex.DecodeString(id)
		if err != nil {
			t.Fatal(err)
		}
		c := *l
		c.ID = raw
		logs[id] = &c
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, s.vs.FulcioCertificateAuthorities(), nil, s.vs.TimestampingAuthorities(), logs)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// Options change what a bundle holds, for the refusals.
type Options struct {
	// NoSignedTimestamp leaves out the timestamp authority's timestamp:
	// the log's signed entry time alone says when it was signed.
	NoSignedTimestamp bool
	// NoSignedEntryTime leaves out the log's signed entry time: the
	// entry's inclusion proof stays, and its time is the bundle's word.
	NoSignedEntryTime bool
	// NoTlog leaves out the log entry.
	NoTlog bool
}

// Sign signs the image digest (sha256:<hex>) for subject, an identity
// of issuer, as cosign v3 signs an image: a DSSE envelope of an in-toto
// statement whose one subject is the digest (no name, as cosign writes
// it), in a v0.3 bundle with the log entry (its inclusion proof and
// signed entry time) and a timestamp.
func (s *Sigstore) Sign(t testing.TB, issuer, subject, digest string, o Options) []byte {
	t.Helper()
	algorithm, encoded, _ := strings.Cut(digest, ":")
	statement, err := protojson.Marshal(&intoto.Statement{
		Type:          "https://in-toto.io/Statement/v1",
		Subject:       []*intoto.ResourceDescriptor{{Digest: map[string]string{algorithm: encoded}}},
		PredicateType: "https://sigstore.dev/cosign/sign/v1",
		Predicate:     &structpb.Struct{},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Logged a minute on: the certificate is issued now, and the
	// log's time (in whole seconds) must fall within it.
	e, err := s.vs.AttestAtTime(subject, issuer, statement, time.Now().Add(time.Minute), true)
	if err != nil {
		t.Fatal(err)
	}
	vc, _ := e.VerificationContent()
	sc, _ := e.SignatureContent()
	env := sc.EnvelopeContent().RawEnvelope()
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		t.Fatal(err)
	}
	pbEnv := &protodsse.Envelope{Payload: payload, PayloadType: env.PayloadType}
	for _, sig := range env.Signatures {
		raw, err := base64.StdEncoding.DecodeString(sig.Sig)
		if err != nil {
			t.Fatal(err)
		}
		pbEnv.Signatures = append(pbEnv.Signatures, &protodsse.Signature{Sig: raw, Keyid: sig.KeyID})
	}

	material := &protobundle.VerificationMaterial{
		Content: &protobundle.VerificationMaterial_Certificate{
			Certificate: &protocommon.X509Certificate{RawBytes: vc.Certificate().Raw},
		},
		TimestampVerificationData: &protobundle.TimestampVerificationData{},
	}
	if !o.NoSignedTimestamp {
		stamps, _ := e.Timestamps()
		for _, ts := range stamps {
			material.TimestampVerificationData.Rfc3161Timestamps = append(material.TimestampVerificationData.Rfc3161Timestamps,
				&protocommon.RFC3161SignedTimestamp{SignedTimestamp: ts})
		}
	}
	if !o.NoTlog {
		entries, _ := e.TlogEntries()
		for _, entry := range entries {
			material.TlogEntries = append(material.TlogEntries, s.logEntry(t, entry, !o.NoSignedEntryTime))
		}
	}
	b, err := bundle.NewBundle(&protobundle.Bundle{
		MediaType:            BundleType,
		VerificationMaterial: material,
		Content:              &protobundle.Bundle_DsseEnvelope{DsseEnvelope: pbEnv},
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// SignWithKey signs artifact (a manifest's bytes) with key, as a v0.3
// bundle of a message signature over its digest, logged by this
// Sigstore's log with its inclusion proof and signed entry time: what a
// key signature made with a transparency log holds. The log entry is
// made by rekor's own types, as the log makes it.
func (s *Sigstore) SignWithKey(t testing.TB, key *ecdsa.PrivateKey, artifact []byte) []byte {
	t.Helper()
	signer, err := signature.LoadECDSASigner(key, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := signer.SignMessage(bytes.NewReader(artifact))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(artifact)
	ctx := context.Background()
	proposed, err := rekortypes.NewProposedEntry(ctx, hashedrekord.KIND, "0.0.1", rekortypes.ArtifactProperties{
		ArtifactHash:   hex.EncodeToString(sum[:]),
		SignatureBytes: sig,
		PublicKeyBytes: [][]byte{pub},
		PKIFormat:      "x509",
	})
	if err != nil {
		t.Fatal(err)
	}
	impl, err := rekortypes.CreateVersionedEntry(proposed)
	if err != nil {
		t.Fatal(err)
	}
	body, err := rekortypes.CanonicalizeEntry(ctx, impl)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := s.vs.GetInclusionProof(body)
	if err != nil {
		t.Fatal(err)
	}
	logID, err := s.vs.RekorLogID()
	if err != nil {
		t.Fatal(err)
	}
	rawID, err := hex.DecodeString(logID)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := tlog.NewEntry(body, time.Now().Unix(), 0, rawID, nil, proof)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.NewBundle(&protobundle.Bundle{
		MediaType: BundleType,
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content:                   &protobundle.VerificationMaterial_PublicKey{PublicKey: &protocommon.PublicKeyIdentifier{Hint: "cosign.pub"}},
			TlogEntries:               []*protorekor.TransparencyLogEntry{s.logEntry(t, entry, true)},
			TimestampVerificationData: &protobundle.TimestampVerificationData{},
		},
		Content: &protobundle.Bundle_MessageSignature{MessageSignature: &protocommon.MessageSignature{
			MessageDigest: &protocommon.HashOutput{Algorithm: protocommon.HashAlgorithm_SHA2_256, Digest: sum[:]},
			Signature:     sig,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// logEntry is the entry as a bundle carries it: its kind, and, when
// signed, the log's signed entry time (which the virtual log's entry
// keeps to itself, and is signed again here by the same log).
func (s *Sigstore) logEntry(t testing.TB, entry *tlog.Entry, signed bool) *protorekor.TransparencyLogEntry {
	t.Helper()
	tle := entry.TransparencyLogEntry()
	pe, err := models.UnmarshalProposedEntry(bytes.NewReader(tle.CanonicalizedBody), runtime.JSONConsumer())
	if err != nil {
		t.Fatal(err)
	}
	impl, err := rekortypes.UnmarshalEntry(pe)
	if err != nil {
		t.Fatal(err)
	}
	tle.KindVersion = &protorekor.KindVersion{Kind: pe.Kind(), Version: impl.APIVersion()}
	if !signed {
		return tle
	}
	set, err := s.vs.RekorSignPayload(tlog.RekorPayload{
		Body:           base64.StdEncoding.EncodeToString(tle.CanonicalizedBody),
		IntegratedTime: tle.IntegratedTime,
		LogIndex:       tle.LogIndex,
		LogID:          hex.EncodeToString(tle.LogId.KeyId),
	})
	if err != nil {
		t.Fatal(err)
	}
	tle.InclusionPromise = &protorekor.InclusionPromise{SignedEntryTimestamp: set}
	return tle
}

// TamperProof changes the root hash of a bundle's inclusion proof: the
// log's signed checkpoint no longer covers the entry.
func TamperProof(t testing.TB, raw []byte) []byte {
	t.Helper()
	var b map[string]any
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	proof := b["verificationMaterial"].(map[string]any)["tlogEntries"].([]any)[0].(map[string]any)["inclusionProof"].(map[string]any)
	h, err := base64.StdEncoding.DecodeString(proof["rootHash"].(string))
	if err != nil {
		t.Fatal(err)
	}
	h[0] ^= 1
	proof["rootHash"] = base64.StdEncoding.EncodeToString(h)
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
