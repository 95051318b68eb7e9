package verify

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature/payload"

	"github.com/depproxy/depproxy/proxy/manifest"
)

// Media types and annotations cosign writes.
const (
	bundleType       = "application/vnd.dev.sigstore.bundle" // and a version: .v0.3+json
	simpleSigning    = "application/vnd.dev.cosign.simplesigning.v1+json"
	sigAnnotation    = "dev.cosignproject.cosign/signature"
	rekorAnnotation  = "dev.sigstore.cosign/bundle" // a classic signature's log proof
	maxSignatureBlob = 1 << 20
)

// The reasons of a refusal, as the client reads them.
const (
	reasonNone        = "no signature"
	reasonOtherKey    = "signed by another key"
	reasonNoTlog      = "no transparency-log proof"
	reasonTlogTrust   = "a transparency-log proof that cannot be checked: the rule names no trustedRoot (add trustedRoot: {file: trusted_root.json} with the log's keys, or ignoreTlog: true)"
	reasonTlogBad     = "log proof does not verify: "
	reasonExpired     = "certificate expired and no timestamp"
	reasonClassicTlog = "a classic cosign signature's log proof, which is not checked: sign in cosign's bundle format (v3's default), or set ignoreTlog: true"
	reasonClassic     = "a classic cosign signature: keyless rules check sigstore bundles (cosign's v3 format) only"
	reasonDigest      = "the signature is for another digest"
	// reasonUnreadable begins the reason when signatures could not be
	// fetched (the upstream down and nothing cached).
	reasonUnreadable = "the signatures could not be read: "
)

// verifyCosign checks d's cosign signatures, bundles and classic, against
// r's keys: "" when one verifies, else the reason none did, the most
// telling one when there were several.
func verifyCosign(ctx context.Context, src Source, r *rule, repo string, d digest.Digest) string {
	found := &reasons{}
	if err := bundles(ctx, src, r, repo, d, found); err != nil {
		found.add(reasonUnreadable + err.Error())
	}
	if found.ok {
		return ""
	}
	if err := classic(ctx, src, r, repo, d, found); err != nil {
		found.add(reasonUnreadable + err.Error())
	}
	if found.ok {
		return ""
	}
	return found.reason()
}

// reasons gathers why each signature found failed.
type reasons struct {
	ok  bool
	why []string
}

func (f *reasons) add(why string) { f.why = append(f.why, why) }

// reason is the one closest to a pass: a signature by the right key
// lacking its log proof says more than one by another key.
func (f *reasons) reason() string {
	for _, want := range []string{reasonTlogTrust, reasonClassicTlog, reasonNoTlog, reasonDigest} {
		for _, w := range f.why {
			if w == want {
				return w
			}
		}
	}
	if len(f.why) == 0 {
		return reasonNone
	}
	for _, w := range f.why {
		if w != reasonOtherKey {
			return w // an unreadable signature: say so, not "another key"
		}
	}
	return reasonOtherKey
}

// bundles checks the sigstore bundles that refer to d (cosign's v3
// format: an OCI 1.1 referrer whose layer is the bundle).
func bundles(ctx context.Context, src Source, r *rule, repo string, d digest.Digest, found *reasons) error {
	raw, err := src.Referrers(ctx, repo, d)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var index ocispec.Index
	if err := json.Unmarshal(raw, &index); err != nil {
		return fmt.Errorf("the referrers index: %w", err)
	}
	want, err := hexDigest(d)
	if err != nil {
		return err
	}
	for _, desc := range index.Manifests {
		if !strings.HasPrefix(desc.ArtifactType, bundleType) {
			continue
		}
		raw, err := src.Manifest(ctx, repo, manifest.DigestRef(desc.Digest))
		if err != nil {
			return err
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(raw, &m); err != nil {
			return fmt.Errorf("the bundle's manifest %s: %w", desc.Digest, err)
		}
		for _, l := range m.Layers {
			if !strings.HasPrefix(l.MediaType, bundleType) {
				continue
			}
			raw, err := src.Blob(ctx, repo, l.Digest, maxSignatureBlob)
			if err != nil {
				return err
			}
			var b bundle.Bundle
			if err := b.UnmarshalJSON(raw); err != nil {
				found.add("an invalid sigstore bundle: " + err.Error())
				continue
			}
			check := checkBundle
			if r.keyless != nil {
				check = func(b *bundle.Bundle, r *rule, algorithm string, digest []byte) string {
					return checkKeyless(b, r.keyless, algorithm, digest)
				}
			}
			if why := check(&b, r, d.Algorithm().String(), want); why == "" {
				found.ok = true
				return nil
			} else {
				found.add(why)
			}
		}
	}
	return nil
}

// checkBundle verifies a bundle's signature over digest with each of r's
// keys, with sigstore-go; "" when one verifies.
func checkBundle(b *bundle.Bundle, r *rule, algorithm string, digest []byte) string {
	policy := sgverify.NewPolicy(sgverify.WithArtifactDigest(algorithm, digest), sgverify.WithKey())
	for _, k := range r.keys {
		// The key itself, whatever key hint the bundle carries: the
		// rule's keys are the trust, not the bundle's words.
		material := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) {
			return root.NewExpiringKey(k.verifier, time.Time{}, time.Time{}), nil
		})
		// The signature alone first; the log proof is asked for after,
		// so that a refusal says which of the two failed.
		v, err := sgverify.NewVerifier(material, sgverify.WithNoObserverTimestamps())
		if err != nil {
			return err.Error()
		}
		if _, err := v.Verify(b, policy); err != nil {
			continue
		}
		if r.ignoreTlog {
			return ""
		}
		if entries, _ := b.TlogEntries(); len(entries) == 0 {
			return reasonNoTlog
		}
		if r.trust == nil {
			return reasonTlogTrust
		}
		// The log proof, against the log keys of the rule's trusted
		// root only. A key has no lifetime: the time of signing matters
		// to nothing here, so none is asked for.
		if entries, _ := b.TlogEntries(); !knownLog(entries, r.trust.root) {
			return reasonTlogBad + reasonUnknownLog
		}
		withLog, err := sgverify.NewVerifier(root.TrustedMaterialCollection{r.trust.root, material},
			sgverify.WithTransparencyLog(1), sgverify.WithCurrentTime())
		if err != nil {
			return err.Error()
		}
		if _, err := withLog.Verify(b, policy); err != nil {
			return reasonTlogBad + oneLine(err)
		}
		return ""
	}
	return reasonOtherKey
}

// classic checks cosign's classic signatures of d: the manifest tagged
// sha256-<hex>.sig, a layer per signature holding the signed payload, the
// signature in an annotation.
func classic(ctx context.Context, src Source, r *rule, repo string, d digest.Digest, found *reasons) error {
	tag := d.Algorithm().String() + "-" + d.Encoded() + ".sig"
	raw, err := src.Manifest(ctx, repo, manifest.TagRef(tag))
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("the signature manifest %s: %w", tag, err)
	}
	if r.keyless != nil {
		if len(m.Layers) > 0 {
			found.add(reasonClassic)
		}
		return nil
	}
	for _, l := range m.Layers {
		encoded, ok := l.Annotations[sigAnnotation]
		if !ok || l.MediaType != simpleSigning {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(encoded)
		if err != nil {
			found.add("a signature that is not base64")
			continue
		}
		body, err := src.Blob(ctx, repo, l.Digest, maxSignatureBlob)
		if err != nil {
			return err
		}
		signed := false
		for _, k := range r.keys {
			if k.verifier.VerifySignature(bytes.NewReader(sig), bytes.NewReader(body)) == nil {
				signed = true
				break
			}
		}
		if !signed {
			found.add(reasonOtherKey)
			continue
		}
		// The key signed this payload; the payload must name d.
		var p payload.SimpleContainerImage
		if err := json.Unmarshal(body, &p); err != nil {
			found.add("a signed payload that is not cosign's: " + err.Error())
			continue
		}
		if p.Critical.Image.DockerManifestDigest != d.String() {
			found.add(reasonDigest)
			continue
		}
		switch {
		case r.ignoreTlog:
			found.ok = true
			return nil
		case l.Annotations[rekorAnnotation] == "":
			found.add(reasonNoTlog)
		case r.trust != nil:
			// cosign's classic log bundle is cosign's own format, and
			// sigstore-go reads only its own: such a proof is not
			// checked here.
			found.add(reasonClassicTlog)
		default:
			found.add(reasonTlogTrust)
		}
	}
	return nil
}

func hexDigest(d digest.Digest) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return hex.DecodeString(d.Encoded())
}

// isSignature: a manifest all of whose layers are signatures or
// bundles holds nothing a runtime runs, and is itself what verifies
// others; clients (cosign verify) read it through the cache.
func isSignature(body []byte) bool {
	var m ocispec.Manifest
	if json.Unmarshal(body, &m) != nil || len(m.Layers) == 0 {
		return false
	}
	for _, l := range m.Layers {
		if l.MediaType != simpleSigning && !strings.HasPrefix(l.MediaType, bundleType) && !isNotationEnvelope(l.MediaType) {
			return false
		}
	}
	return true
}

// indexChildren are the manifests an index lists.
func indexChildren(body []byte) []digest.Digest {
	var index ocispec.Index
	if json.Unmarshal(body, &index) != nil {
		return nil
	}
	out := make([]digest.Digest, 0, len(index.Manifests))
	for _, m := range index.Manifests {
		out = append(out, m.Digest)
	}
	return out
}
