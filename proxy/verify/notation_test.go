package verify

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/notaryproject/notation-core-go/signature/cose"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/test/notationtest"
)

func TestParseNotation(t *testing.T) {
	dir := t.TempDir()
	notationtest.New(t, "test CA", notationtest.Options{}).WriteTrustStore(t, filepath.Join(dir, "store"), "ours")
	notationtest.WriteTrustPolicy(t, filepath.Join(dir, "policy.json"),
		notationtest.Statement{Name: "ours", Scopes: []string{"ghcr.io/org/app"}, Stores: []string{"ca:ours"}})
	notationtest.WriteTrustPolicy(t, filepath.Join(dir, "elsewhere.json"),
		notationtest.Statement{Name: "theirs", Scopes: []string{"*"}, Stores: []string{"ca:theirs"}})
	os.WriteFile(filepath.Join(dir, "misspelt.json"), []byte(`{"version":"1.0","trustPolicy":[]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "unversioned.json"), []byte(`{"trustPolicies":[]}`), 0o644)
	writeKey(t, filepath.Join(dir, "cosign.pub"))
	for _, c := range []struct {
		name, yaml string
		err        string // a part of the error; "" parses
	}{
		{"relative", "rules: [{images: [ghcr.io/org/**], notation: {trustStore: store, trustPolicy: policy.json}}]", ""},
		{"absolute", fmt.Sprintf("rules: [{images: [ghcr.io/org/**], notation: {trustStore: %s, trustPolicy: %s}}]", filepath.Join(dir, "store"), filepath.Join(dir, "policy.json")), ""},
		{"no trust policy", "rules: [{images: [nginx], notation: {trustStore: store}}]", "rule 1: notation: names no trustPolicy"},
		{"no trust store", "rules: [{images: [nginx], notation: {trustPolicy: policy.json}}]", "rule 1: notation: names no trustStore"},
		{"a trust store that is not there", "rules: [{images: [nginx], notation: {trustStore: gone, trustPolicy: policy.json}}]", "trustStore gone is not a directory"},
		{"a trust policy that is not there", "rules: [{images: [nginx], notation: {trustStore: store, trustPolicy: gone.json}}]", "gone.json"},
		{"a store the policy names and the directory lacks", "rules: [{images: [nginx], notation: {trustStore: store, trustPolicy: elsewhere.json}}]", `x509/ca/theirs, named by trust policy statement "theirs"`},
		{"a misspelt trust policy field", "rules: [{images: [nginx], notation: {trustStore: store, trustPolicy: misspelt.json}}]", "trustPolicy"},
		{"a trust policy notation refuses", "rules: [{images: [nginx], notation: {trustStore: store, trustPolicy: unversioned.json}}]", "version"},
		{"notation and keys", "rules: [{images: [nginx], keys: [{file: cosign.pub}], notation: {trustStore: store, trustPolicy: policy.json}}]", "one kind of signature"},
		{"notation without a log", "rules: [{images: [nginx], ignoreTlog: true, notation: {trustStore: store, trustPolicy: policy.json}}]", "for key rules"},
		{"a misspelt field", "rules: [{images: [nginx], notation: {trustStores: store, trustPolicy: policy.json}}]", "trustStores"},
	} {
		t.Run(c.name, func(t *testing.T) { wantParse(t, c.yaml, dir, c.err) })
	}
}

// A certificate replaced in the trust store is a changed policy.
func TestHashCoversTrustStore(t *testing.T) {
	dir := t.TempDir()
	notationtest.WriteTrustPolicy(t, filepath.Join(dir, "policy.json"),
		notationtest.Statement{Name: "ours", Scopes: []string{"*"}, Stores: []string{"ca:ours"}})
	policy := []byte("rules: [{images: [nginx], notation: {trustStore: store, trustPolicy: policy.json}}]")
	var hashes []string
	for range 2 {
		notationtest.New(t, "test CA", notationtest.Options{}).WriteTrustStore(t, filepath.Join(dir, "store"), "ours")
		p, err := Parse(policy, dir)
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, p.Hash())
	}
	if hashes[0] == hashes[1] {
		t.Error("the policy's hash ignores its trust store")
	}
}

// Images signed by notation-go in a real registry (go-containerregistry's,
// with the referrers API) are checked against a trust store and trust
// policy; each way to fail is said so a person knows what to change.
func TestCheckNotation(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	ours := notationtest.New(t, "our CA", notationtest.Options{})
	theirs := notationtest.New(t, "their CA", notationtest.Options{})
	revocable := notationtest.New(t, "our CA", notationtest.Options{OCSP: "http://ocsp.invalid"})

	push := func(repo string) ocispec.Descriptor {
		img, err := random.Image(64, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(host+"/"+repo+":latest", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		raw, _ := img.RawManifest()
		mt, _ := img.MediaType()
		return ocispec.Descriptor{MediaType: string(mt), Digest: digest.FromBytes(raw), Size: int64(len(raw))}
	}
	signedBy := func(ca *notationtest.CA, repo string) ocispec.Descriptor {
		d := push(repo)
		ca.Sign(t, host, repo, d.Digest.String())
		return d
	}

	dir := t.TempDir()
	ours.WriteTrustStore(t, filepath.Join(dir, "store"), "ours")
	revocable.WriteTrustStore(t, filepath.Join(dir, "store"), "revocable")
	notationtest.WriteTrustPolicy(t, filepath.Join(dir, "policy.json"),
		notationtest.Statement{Name: "apps", Scopes: []string{host + "/app", host + "/other"}, Stores: []string{"ca:ours"}},
		notationtest.Statement{Name: "pinned", Scopes: []string{host + "/pinned"}, Stores: []string{"ca:ours"}, Identities: []string{"x509.subject: CN=someone else,O=depproxy test,C=US,ST=WA"}},
		notationtest.Statement{Name: "revocable", Scopes: []string{host + "/revocable"}, Stores: []string{"ca:revocable"}},
		notationtest.Statement{Name: "no-revocation", Scopes: []string{host + "/unrevoked"}, Stores: []string{"ca:revocable"}, Revocation: "skip"},
		notationtest.Statement{Name: "unchecked", Scopes: []string{host + "/skipped"}, Level: "skip"},
	)
	p, err := Parse([]byte("rules: [{images: ['**'], notation: {trustStore: store, trustPolicy: policy.json}}]"), dir)
	if err != nil {
		t.Fatal(err)
	}
	n := p.rules[0].notation

	signed := signedBy(ours, "app")
	another := push("app")
	size := signed
	size.Size++
	for _, c := range []struct {
		name, repo string
		target     ocispec.Descriptor
		want       string // a part of the reason; "" verifies
	}{
		{"signed by the trusted CA", "app", signed, ""},
		{"in a COSE envelope", "app", func() ocispec.Descriptor {
			d := push("app")
			ours.SignAs(t, host, "app", d.Digest.String(), cose.MediaTypeEnvelope)
			return d
		}(), ""},
		{"by another CA", "app", signedBy(theirs, "app"), "signed by a certificate the trust store does not hold (trust policy statement \"apps\" trusts ca:ours)"},
		{"unsigned", "app", push("app"), reasonNoNotation},
		{"another manifest's signature", "app", size, "for another manifest"},
		{"nothing refers to it", "other", ocispec.Descriptor{MediaType: another.MediaType, Digest: digest.FromString("nothing"), Size: 7}, reasonNoNotation},
		{"another identity", "pinned", signedBy(ours, "pinned"), `signed by "CN=signer,O=depproxy test,L=Seattle,ST=WA,C=US", whom trust policy statement "pinned" does not name`},
		{"no statement", "elsewhere", signedBy(ours, "elsewhere"), "trust policy policy.json does not cover " + host + "/elsewhere"},
		{"revocable, offline", "revocable", signedBy(revocable, "revocable"), `names a revocation service, which is not asked offline: the trust policy statement "revocable" must skip revocation`},
		{"revocable, revocation skipped", "unrevoked", signedBy(revocable, "unrevoked"), ""},
		// As notation verify: the trust policy says not to check.
		{"a statement that skips", "skipped", push("skipped"), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := verifyNotation(context.Background(), httpSource{srv.URL}, n, []string{host}, c.repo, c.target)
			switch {
			case c.want == "" && got != "":
				t.Errorf("refused: %s", got)
			case c.want != "" && !strings.Contains(got, c.want):
				t.Errorf("reason %q, want one saying %q", got, c.want)
			}
		})
	}
}

// httpSource reads a registry as the cache's Source reads its upstream.
type httpSource struct{ url string }

func (s httpSource) get(path string, max int64) ([]byte, error) {
	req, _ := http.NewRequest(http.MethodGet, s.url+"/v2/"+path, nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest+", "+ocispec.MediaTypeImageIndex)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return io.ReadAll(io.LimitReader(resp.Body, max))
	case http.StatusNotFound:
		return nil, ErrNotFound
	}
	return nil, fmt.Errorf("%s: %s", path, resp.Status)
}

func (s httpSource) Manifest(_ context.Context, repo string, ref manifest.Ref) ([]byte, error) {
	return s.get(repo+"/manifests/"+ref.String(), 4<<20)
}

func (s httpSource) Blob(_ context.Context, repo string, d digest.Digest, max int64) ([]byte, error) {
	return s.get(repo+"/blobs/"+d.String(), max)
}

func (s httpSource) Referrers(_ context.Context, repo string, d digest.Digest) ([]byte, error) {
	return s.get(repo+"/referrers/"+d.String(), 4<<20)
}
