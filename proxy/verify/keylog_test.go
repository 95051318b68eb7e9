package verify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/depproxy/depproxy/test/sigstoretest"
)

// A key rule without ignoreTlog checks a key signature's log proof
// against the log keys of the trusted root it names; with none named,
// it says what to add.
func TestCheckKeyLog(t *testing.T) {
	ss, stranger := sigstoretest.New(t), sigstoretest.New(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "root.json"), ss.TrustedRoot(t), 0o644)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := cryptoutils.MarshalPublicKeyToPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "k.pub"), pem, 0o644)
	writeKey(t, filepath.Join(dir, "other.pub"))

	manifest := []byte("a manifest")
	sum := sha256.Sum256(manifest)
	logged := ss.SignWithKey(t, key, manifest)
	for _, c := range []struct {
		name, rule string
		bundle     []byte
		want       string // a part of the reason; "" verifies
	}{
		{"logged", "keys: [{file: k.pub}], trustedRoot: {file: root.json}", logged, ""},
		{"logged, the log not asked for", "keys: [{file: k.pub}], ignoreTlog: true", logged, ""},
		{"no trusted root", "keys: [{file: k.pub}]", logged, "add trustedRoot"},
		{"another key", "keys: [{file: other.pub}], trustedRoot: {file: root.json}", logged, reasonOtherKey},
		{"a log proof tampered with", "keys: [{file: k.pub}], trustedRoot: {file: root.json}", sigstoretest.TamperProof(t, logged), reasonTlogBad},
		{"another log", "keys: [{file: k.pub}], trustedRoot: {file: root.json}", stranger.SignWithKey(t, key, manifest), reasonUnknownLog},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := Parse([]byte("rules: [{images: [nginx], "+c.rule+"}]"), dir)
			if err != nil {
				t.Fatal(err)
			}
			var b bundle.Bundle
			if err := b.UnmarshalJSON(c.bundle); err != nil {
				t.Fatal(err)
			}
			got := checkBundle(&b, p.rules[0], "sha256", sum[:])
			switch {
			case c.want == "" && got != "":
				t.Errorf("refused: %s", got)
			case c.want != "" && !strings.Contains(got, c.want):
				t.Errorf("reason %q, want one saying %q", got, c.want)
			}
		})
	}
}
