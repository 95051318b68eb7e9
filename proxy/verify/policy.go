// Package verify checks the signatures of a manifest before the cache
// serves it, against a policy of the cache's own: which images must be
// signed, by which keys, keyless identities or notation trust, and
// whether a refusal blocks the pull (enforce) or is only logged and
// counted (audit).
//
// It is offline: what a rule trusts is in its files (public keys, a
// sigstore trusted_root.json, a notation trust store and trust policy);
// no TUF repository, transparency log, OCSP responder or CRL is asked
// anything. A bundle's log proof and timestamps are checked from the
// bundle, against the trusted root's keys.
//
// Signatures are found as clients find them (the referrers API or its
// fallback tag for cosign's bundles and notation's signatures, cosign's
// sha256-<hex>.sig tag for its classic signatures) and read through the
// cache, so they are cached like any other content. Bundles are checked
// by sigstore-go, classic signatures by sigstore's signature verifiers,
// notation envelopes by notation-go: nothing here parses a bundle or an
// envelope or does cryptography by hand.
package verify

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"sigs.k8s.io/yaml"

	"github.com/depproxy/depproxy/proxy/access"
)

// Mode says what a refusal does.
type Mode string

const (
	// Enforce refuses the pull (403 DENIED).
	Enforce Mode = "enforce"
	// Audit serves it, and logs and counts the refusal.
	Audit Mode = "audit"
)

// Policy is a parsed --verify-policy file, its keys and trust read.
type Policy struct {
	Mode  Mode
	rules []*rule
	// hash names this policy and the keys it read: a verdict holds for
	// the policy it was reached under, and a changed key file is a
	// changed policy.
	hash string
}

type rule struct {
	n      int    // 1-based, as a person counts the file's rules
	images string // as written, for the refusal's message
	match  *access.Rules
	keys   []key
	// ignoreTlog accepts a key signature without a transparency-log
	// proof, as cosign verify --insecure-ignore-tlog does.
	ignoreTlog bool
	// trust holds the log keys a key signature's log proof is checked
	// against, when the rule names a trusted root.
	trust *trustedRoot
	// keyless, when set, is the rule's signer in place of keys.
	keyless *keyless
	// notation, when set, is the rule's trust in place of cosign's:
	// notation signatures against a trust store and trust policy.
	notation *notationTrust
}

type key struct {
	file     string
	verifier signature.Verifier
}

// file is the YAML as written: rules of keys, of a keyless identity, or
// of notation trust.
type file struct {
	Mode  Mode `json:"mode"`
	Rules []struct {
		Images      []string      `json:"images"`
		Keys        []fileRef     `json:"keys"`
		IgnoreTlog  bool          `json:"ignoreTlog"`
		TrustedRoot *fileRef      `json:"trustedRoot"`
		Keyless     *keylessSpec  `json:"keyless"`
		Notation    *notationSpec `json:"notation"`
	} `json:"rules"`
}

// Load reads a policy file; key, trusted root and notation files named
// by relative paths are taken from the policy file's directory.
func Load(path string) (*Policy, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("verify policy: %w", err)
	}
	p, err := Parse(raw, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("verify policy %s: %w", path, err)
	}
	return p, nil
}

// Parse reads a policy; dir is where relative file paths are. Unknown
// keys are errors: a misspelt field must not leave an image unchecked.
func Parse(raw []byte, dir string) (*Policy, error) {
	var f file
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(raw)
	p := &Policy{Mode: f.Mode}
	switch p.Mode {
	case "":
		p.Mode = Enforce // what a policy is written for; audit is said
	case Enforce, Audit:
	default:
		return nil, fmt.Errorf("mode is %s or %s, not %q", Enforce, Audit, f.Mode)
	}
	var errs []error
	for i, fr := range f.Rules {
		r := &rule{n: i + 1, images: strings.Join(fr.Images, ", "), ignoreTlog: fr.IgnoreTlog}
		where := fmt.Sprintf("rule %d", r.n)
		var err error
		switch {
		case len(fr.Images) == 0:
			err = errors.New("names no images")
		case len(fr.Keys) == 0 && fr.Keyless == nil && fr.Notation == nil:
			err = errors.New("names no keys, and is not keyless or notation")
		case len(fr.Keys) > 0 && fr.Keyless != nil:
			err = errors.New("names keys and is keyless: one or the other")
		case fr.Notation != nil && (len(fr.Keys) > 0 || fr.Keyless != nil):
			err = errors.New("notation and cosign's keys or keyless: one kind of signature a rule")
		case fr.Notation != nil && (fr.IgnoreTlog || fr.TrustedRoot != nil):
			// notation has no transparency log; its trust is the trust
			// policy's.
			err = errors.New("notation: ignoreTlog and trustedRoot are for key rules")
		case fr.Keyless != nil && (fr.IgnoreTlog || fr.TrustedRoot != nil):
			// A short-lived certificate means nothing without the log
			// proof; its trusted root is the keyless one's own.
			err = errors.New("keyless: ignoreTlog and trustedRoot are for key rules (keyless takes its own trustedRoot)")
		case fr.IgnoreTlog && fr.TrustedRoot != nil:
			err = errors.New("ignoreTlog and trustedRoot: one or the other")
		case taggedPattern(fr.Images) != "":
			// A signature is of a digest, which any tag may name.
			err = fmt.Errorf("images %q: a pattern names repositories, not tags", taggedPattern(fr.Images))
		default:
			// An allow-only rule set matches exactly the images its
			// patterns name: the access rules' own matching, names
			// normalised as clients normalise them.
			r.match, err = access.Parse(fr.Images, nil)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		if fr.Keyless != nil {
			k, raw, err := newKeyless(fr.Keyless, dir)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
				continue
			}
			h.Write(raw)
			r.keyless = k
		}
		if fr.Notation != nil {
			n, raw, err := newNotation(fr.Notation, dir)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
				continue
			}
			h.Write(raw)
			r.notation = n
		}
		if fr.TrustedRoot != nil {
			tr, raw, err := readTrustedRoot(fr.TrustedRoot, dir)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
				continue
			}
			h.Write(raw)
			r.trust = tr
		}
		for _, k := range fr.Keys {
			path := k.File
			if path != "" && !filepath.IsAbs(path) {
				path = filepath.Join(dir, path)
			}
			pem, err := os.ReadFile(path)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: key: %w", where, err))
				continue
			}
			v, err := loadKey(pem)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: key %s: %w", where, k.File, err))
				continue
			}
			h.Write(pem)
			r.keys = append(r.keys, key{file: k.File, verifier: v})
		}
		p.rules = append(p.rules, r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	p.hash = hex.EncodeToString(h.Sum(nil))
	return p, nil
}

// taggedPattern is the first pattern that names a tag, or "".
func taggedPattern(images []string) string {
	for _, p := range images {
		if _, tag := access.Normalize(p); tag != "" {
			return p
		}
	}
	return ""
}

// loadKey reads a PEM public key, as cosign writes cosign.pub.
func loadKey(pem []byte) (signature.Verifier, error) {
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pem)
	if err != nil {
		return nil, err
	}
	return signature.LoadVerifier(pub, crypto.SHA256)
}

// Hash names the policy and the keys, trusted roots and notation trust
// it read.
func (p *Policy) Hash() string { return p.hash }

// match is the first rule whose images hold repo of a registry known
// by names, or nil.
func (p *Policy) match(names []string, repo string) *rule {
	if p == nil {
		return nil
	}
	for _, r := range p.rules {
		if r.match.Denied(names, repo, "") == "" {
			return r
		}
	}
	return nil
}

// verify checks the signatures of the manifest d (body, of mediaType),
// served as repo's of a registry known by names, as r's kind of rule
// says: "" when one verifies, else the reason.
func (r *rule) verify(ctx context.Context, src Source, names []string, repo string, target ocispec.Descriptor) string {
	if r.notation != nil {
		return verifyNotation(ctx, src, r.notation, names, repo, target)
	}
	return verifyCosign(ctx, src, r, repo, target.Digest)
}

func (r *rule) String() string { return fmt.Sprintf("rule %d (%s)", r.n, r.images) }
