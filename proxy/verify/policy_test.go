package verify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// writeKey writes a new ECDSA P-256 public key as cosign writes
// cosign.pub.
func writeKey(t *testing.T, path string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := cryptoutils.MarshalPublicKeyToPEM(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestParse(t *testing.T) {
	dir := t.TempDir()
	writeKey(t, filepath.Join(dir, "cosign.pub"))
	os.WriteFile(filepath.Join(dir, "not-a-key"), []byte("hello"), 0o644)
	for _, c := range []struct {
		name, yaml string
		mode       Mode
		err        string // a part of the error; "" parses
	}{
		{"enforce", "mode: enforce\nrules: [{images: [ghcr.io/org/**], keys: [{file: cosign.pub}]}]", Enforce, ""},
		{"audit", "mode: audit\nrules: [{images: [nginx], keys: [{file: cosign.pub}], ignoreTlog: true}]", Audit, ""},
		{"enforce by default", "rules: [{images: [nginx], keys: [{file: " + filepath.Join(dir, "cosign.pub") + "}]}]", Enforce, ""},
		{"another mode", "mode: warn\nrules: []", "", `not "warn"`},
		{"keyless without a subject or a trusted root", "rules: [{images: [nginx], keyless: {issuer: x}}]", "", "keyless"},
		// A rule that cannot check is not ignored: the images it names
		// would go unchecked.
		{"notation without a trust policy", "rules: [{images: [nginx], notation: {trustStore: /x}}]", "", "notation: names no trustPolicy"},
		{"a misspelt field", "rules: [{images: [nginx], keys: [{file: cosign.pub}], ignoreTlogs: true}]", "", "ignoreTlogs"},
		{"no images", "rules: [{keys: [{file: cosign.pub}]}]", "", "rule 1: names no images"},
		{"no keys", "rules: [{images: [nginx]}]", "", "rule 1: names no keys"},
		{"a tag", "rules: [{images: [ok/**, 'nginx:1.*'], keys: [{file: cosign.pub}]}]", "", "not tags"},
		{"a bad pattern", "rules: [{images: ['a**b/c'], keys: [{file: cosign.pub}]}]", "", "access rule"},
		{"no key file", "rules: [{images: [nginx], keys: [{file: missing.pub}]}]", "", "missing.pub"},
		{"not a key", "rules: [{images: [x], keys: [{file: cosign.pub}]}, {images: [nginx], keys: [{file: not-a-key}]}]", "", "rule 2: key not-a-key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := Parse([]byte(c.yaml), dir)
			switch {
			case c.err == "" && err != nil:
				t.Fatalf("%v", err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Fatalf("error %v, want one saying %q", err, c.err)
			case c.err == "" && p.Mode != c.mode:
				t.Errorf("mode %q, want %q", p.Mode, c.mode)
			}
		})
	}
}

// A rule holds the images its patterns name as the access rules do:
// names normalised as clients normalise them, the first rule matching
// deciding.
func TestMatch(t *testing.T) {
	dir := t.TempDir()
	writeKey(t, filepath.Join(dir, "k.pub"))
	p, err := Parse([]byte(`rules:
- images: [nginx, ghcr.io/org/**]
  keys: [{file: k.pub}]
- images: [docker.io/**]
  keys: [{file: k.pub}]
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		names []string
		repo  string
		rule  int // 0: none
	}{
		{[]string{"docker.io"}, "library/nginx", 1},
		{[]string{"registry-1.docker.io"}, "library/nginx", 1},
		{[]string{"docker.io"}, "library/redis", 2},
		{[]string{"ghcr.io"}, "org/a/b", 1},
		{[]string{"ghcr.io"}, "other/a", 0},
		{[]string{"mirror.example", "ghcr.io"}, "org/a", 1}, // an upstream mirroring ghcr.io
		{[]string{"quay.io"}, "org/a", 0},
	} {
		got := 0
		if r := p.match(c.names, c.repo); r != nil {
			got = r.n
		}
		if got != c.rule {
			t.Errorf("%v %s: rule %d, want %d", c.names, c.repo, got, c.rule)
		}
	}
}

// A key file replaced is a changed policy: verdicts reached under the
// old key do not hold.
func TestHashCoversKeys(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k.pub")
	writeKey(t, key)
	policy := []byte("rules: [{images: [nginx], keys: [{file: k.pub}]}]")
	before, err := Parse(policy, dir)
	if err != nil {
		t.Fatal(err)
	}
	writeKey(t, key)
	after, err := Parse(policy, dir)
	if err != nil {
		t.Fatal(err)
	}
	if before.Hash() == after.Hash() {
		t.Error("the policy's hash ignores its key")
	}
}

func TestIsSignature(t *testing.T) {
	for _, c := range []struct {
		name, body string
		want       bool
	}{
		{"classic", `{"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json"}]}`, true},
		{"bundle", `{"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json","layers":[{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}]}`, true},
		{"notation", `{"config":{"mediaType":"application/vnd.cncf.notary.signature"},"layers":[{"mediaType":"application/jose+json"}]}`, true},
		// Something a runtime would unpack, beside a signature layer.
		{"a layer besides", `{"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json"},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}]}`, false},
		{"an image", `{"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}]}`, false},
		{"an index", `{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json"}]}`, false},
		{"not JSON", `<html>`, false},
	} {
		if got := isSignature([]byte(c.body)); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// wantParse parses yaml as a policy file in dir, and checks its error
// says want ("": it parses).
func wantParse(t *testing.T, yaml, dir, want string) {
	t.Helper()
	_, err := Parse([]byte(yaml), dir)
	switch {
	case want == "" && err != nil:
		t.Fatalf("%v", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Fatalf("error %v, want one saying %q", err, want)
	}
}
