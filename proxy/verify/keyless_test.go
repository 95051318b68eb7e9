package verify

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/bundle"

	"github.com/depproxy/depproxy/test/sigstoretest"
)

const (
	issuer  = "https://token.actions.example"
	subject = "https://github.com/org/repo/.github/workflows/release.yaml@refs/heads/main"
)

func TestParseKeyless(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "root.json"), sigstoretest.New(t).TrustedRoot(t), 0o644)
	os.WriteFile(filepath.Join(dir, "not-a-root.json"), []byte(`{"mediaType":"nope"}`), 0o644)
	writeKey(t, filepath.Join(dir, "cosign.pub"))
	for _, c := range []struct {
		name, yaml string
		err        string // a part of the error; "" parses
	}{
		{"exact", "rules: [{images: [nginx], keyless: {issuer: x, subject: y, trustedRoot: {file: root.json}}}]", ""},
		{"regexps", "rules: [{images: [nginx], keyless: {issuerRegExp: '^x$', subjectRegExp: '^y.*$', trustedRoot: {file: root.json}}}]", ""},
		{"a key rule's log proof", "rules: [{images: [nginx], keys: [{file: cosign.pub}], trustedRoot: {file: root.json}}]", ""},
		{"no issuer", "rules: [{images: [nginx], keyless: {subject: y, trustedRoot: {file: root.json}}}]", "one of issuer or issuerRegExp"},
		{"issuer twice", "rules: [{images: [nginx], keyless: {issuer: x, issuerRegExp: x, subject: y, trustedRoot: {file: root.json}}}]", "one of issuer or issuerRegExp"},
		{"no subject", "rules: [{images: [nginx], keyless: {issuer: x, trustedRoot: {file: root.json}}}]", "one of subject or subjectRegExp"},
		{"a bad regexp", "rules: [{images: [nginx], keyless: {issuer: x, subjectRegExp: '(', trustedRoot: {file: root.json}}}]", "keyless"},
		{"no trusted root", "rules: [{images: [nginx], keyless: {issuer: x, subject: y}}]", "names no trustedRoot"},
		{"no trusted root file", "rules: [{images: [nginx], keyless: {issuer: x, subject: y, trustedRoot: {file: gone.json}}}]", "gone.json"},
		{"not a trusted root", "rules: [{images: [nginx], keyless: {issuer: x, subject: y, trustedRoot: {file: not-a-root.json}}}]", "not-a-root.json"},
		{"keys and keyless", "rules: [{images: [nginx], keys: [{file: cosign.pub}], keyless: {issuer: x, subject: y, trustedRoot: {file: root.json}}}]", "one or the other"},
		{"keyless without its log", "rules: [{images: [nginx], ignoreTlog: true, keyless: {issuer: x, subject: y, trustedRoot: {file: root.json}}}]", "for key rules"},
		{"ignoreTlog and a trusted root", "rules: [{images: [nginx], keys: [{file: cosign.pub}], ignoreTlog: true, trustedRoot: {file: root.json}}]", "one or the other"},
		{"a misspelt field", "rules: [{images: [nginx], keyless: {issuer: x, subjectRegex: y, trustedRoot: {file: root.json}}}]", "subjectRegex"},
	} {
		t.Run(c.name, func(t *testing.T) { wantParse(t, c.yaml, dir, c.err) })
	}
}

// A bundle of the test Sigstore is checked offline against its trusted
// root: its certificate, log proof, timestamps, signature over the
// digest, and the identity the rule names. Each part failing is said.
func TestCheckKeyless(t *testing.T) {
	ss, stranger := sigstoretest.New(t), sigstoretest.New(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "root.json"), ss.TrustedRoot(t), 0o644)
	sum := sha256.Sum256([]byte("a manifest"))
	digest := "sha256:" + hex.EncodeToString(sum[:])
	other := sha256.Sum256([]byte("another manifest"))

	rule := func(t *testing.T, identity string) *keyless {
		t.Helper()
		p, err := Parse([]byte("rules: [{images: [nginx], keyless: {"+identity+", trustedRoot: {file: root.json}}}]"), dir)
		if err != nil {
			t.Fatal(err)
		}
		return p.rules[0].keyless
	}
	exact := "issuer: " + issuer + ", subject: " + subject
	signed := ss.Sign(t, issuer, subject, digest, sigstoretest.Options{})
	for _, c := range []struct {
		name     string
		bundle   []byte
		identity string
		digest   []byte
		want     string // a part of the reason; "" verifies
	}{
		{"the identity", signed, exact, sum[:], ""},
		{"by regexps", signed, `issuerRegExp: '^https://token\.actions\.example$', subjectRegExp: '^https://github\.com/org/.*$'`, sum[:], ""},
		{"timestamped by the log alone", ss.Sign(t, issuer, subject, digest, sigstoretest.Options{NoSignedTimestamp: true}), exact, sum[:], ""},
		{"another issuer", signed, "issuer: https://accounts.example, subject: " + subject, sum[:], `identity mismatch: issuer "` + issuer + `" subject "` + subject + `"`},
		{"another subject", signed, "issuer: " + issuer + ", subjectRegExp: '^https://github.com/other/'", sum[:], "identity mismatch"},
		{"another digest", signed, exact, other[:], reasonDigest},
		{"no time anyone trusted", ss.Sign(t, issuer, subject, digest, sigstoretest.Options{NoSignedTimestamp: true, NoSignedEntryTime: true}), exact, sum[:], "no timestamp proves when it was signed"},
		{"no log entry", ss.Sign(t, issuer, subject, digest, sigstoretest.Options{NoTlog: true}), exact, sum[:], reasonNoTlog},
		{"a log proof tampered with", sigstoretest.TamperProof(t, signed), exact, sum[:], reasonTlogBad},
		{"another Sigstore", stranger.Sign(t, issuer, subject, digest, sigstoretest.Options{}), exact, sum[:], reasonUnknownLog},
	} {
		t.Run(c.name, func(t *testing.T) {
			var b bundle.Bundle
			if err := b.UnmarshalJSON(c.bundle); err != nil {
				t.Fatal(err)
			}
			got := checkKeyless(&b, rule(t, c.identity), "sha256", c.digest)
			switch {
			case c.want == "" && got != "":
				t.Errorf("refused: %s", got)
			case c.want != "" && !strings.Contains(got, c.want):
				t.Errorf("reason %q, want one saying %q", got, c.want)
			}
		})
	}
}
