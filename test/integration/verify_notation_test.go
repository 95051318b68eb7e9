package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/dir"
	notationregistry "github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	orasremote "oras.land/oras-go/v2/registry/remote"

	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/test/notationtest"
	"github.com/depproxy/depproxy/test/proxytest"
)

// A notation verify policy, enforced at the cache, offline: a test CA
// issues a code-signing certificate, notation-go signs images with it
// and pushes the signatures to the upstream (a CNCF Distribution without
// the referrers API: oras-go keeps the fallback tag) as notation sign
// does. The cache finds them through itself and verifies them against
// the rule's trust store and trust policy: the signed image pulls whole,
// and notation's own verify reads its signature through the cache; an
// unsigned image and one signed by another CA are refused with 403
// DENIED naming the rule and the reason; the signed image under a policy
// whose trust store holds another CA is refused.
func TestVerifyNotation(t *testing.T) {
	e := newEnv(t)
	ours := notationtest.New(t, "our CA", notationtest.Options{})
	theirs := notationtest.New(t, "their CA", notationtest.Options{})
	repo := repoName(t)
	upstreamHost := strings.TrimPrefix(e.front.URL(), "http://")

	digests := map[string]string{}
	for i, tag := range []string{"signed", "unsigned", "theirs"} {
		img := ociImage(t, i+1)
		pushImage(t, e.registry.Addr, repo, tag, img)
		digests[tag] = digestOf(t, img).String()
	}
	ours.Sign(t, e.registry.Addr, repo, digests["signed"])
	theirs.Sign(t, e.registry.Addr, repo, digests["theirs"])

	// A policy over a trust store holding ca; the trust policy's scope is
	// the upstream as the cache names it.
	start := func(t *testing.T, ca *notationtest.CA) *proxytest.Proxy {
		d := t.TempDir()
		ca.WriteTrustStore(t, filepath.Join(d, "truststore"), "ours")
		notationtest.WriteTrustPolicy(t, filepath.Join(d, "trustpolicy.json"), notationtest.Statement{
			Name: "ours", Scopes: []string{upstreamHost + "/" + repo}, Stores: []string{"ca:ours"},
		})
		policy := filepath.Join(d, "verify.yaml")
		os.WriteFile(policy, []byte(fmt.Sprintf(`mode: enforce
rules:
- images: ["%s/%s"]
  notation: {trustStore: truststore, trustPolicy: trustpolicy.json}
`, upstreamHost, repo)), 0o644)
		s := settings.Defaults()
		s.Upstream = settings.Keys(e.front.URL())
		s.VerifyPolicy = policy
		return proxytest.Start(t, s)
	}
	refused := func(t *testing.T, p *proxytest.Proxy, ref, reason string) {
		t.Helper()
		resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/"+ref, acceptAll)
		ociError(t, resp, body, http.StatusForbidden, "DENIED")
		var oe struct{ Errors []struct{ Message string } }
		json.Unmarshal(body, &oe)
		if len(oe.Errors) == 0 || !strings.Contains(oe.Errors[0].Message, reason) || !strings.Contains(oe.Errors[0].Message, "rule 1") {
			t.Errorf("%s: refused with %s, want rule 1 and %q", ref, body, reason)
		}
	}

	t.Run("our CA trusted", func(t *testing.T) {
		p := start(t, ours)
		for _, ref := range []string{":signed", "@" + digests["signed"]} {
			r, err := name.ParseReference(p.Host+"/"+repo+ref, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			img, err := remote.Image(r)
			if err == nil {
				err = validate.Image(img)
			}
			if err != nil {
				t.Errorf("pulling %s, signed by the trusted CA: %v", ref, err)
			}
		}
		refused(t, p, "unsigned", "no notation signature")
		refused(t, p, digests["unsigned"], "no notation signature")
		refused(t, p, "theirs", "signed by a certificate the trust store does not hold")

		// notation verify, as a client, reads the signature through the
		// cache: the signature's manifest is served as it is.
		notationVerifies(t, p.Host, repo, digests["signed"], ours)

		m := scrape(t, p.Ops)
		if v := sample(m, "depproxy_proxy_verify_total", "result", "verified"); v != 1 {
			t.Errorf("depproxy_proxy_verify_total{result=verified} = %v, want 1 (signed, once)", v)
		}
		if v := sample(m, "depproxy_proxy_verify_total", "result", "refused"); v != 2 {
			t.Errorf("depproxy_proxy_verify_total{result=refused} = %v, want 2 (unsigned, theirs)", v)
		}
	})

	t.Run("another CA trusted", func(t *testing.T) {
		p := start(t, notationtest.New(t, "another CA", notationtest.Options{}))
		refused(t, p, "signed", "signed by a certificate the trust store does not hold")
		refused(t, p, digests["signed"], "signed by a certificate the trust store does not hold")
	})
}

// notationVerifies runs notation-go's client-side verify of
// host/repo@digest (plain HTTP) against a trust store holding ca.
func notationVerifies(t *testing.T, host, repo, digest string, ca *notationtest.CA) {
	t.Helper()
	d := t.TempDir()
	ca.WriteTrustStore(t, filepath.Join(d, dir.TrustStoreDir), "ours")
	notationtest.WriteTrustPolicy(t, filepath.Join(d, "trustpolicy.json"), notationtest.Statement{
		Name: "ours", Scopes: []string{"*"}, Stores: []string{"ca:ours"}, Revocation: "skip",
	})
	raw, err := os.ReadFile(filepath.Join(d, "trustpolicy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc trustpolicy.Document
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	v, err := verifier.New(&doc, truststore.NewX509TrustStore(dir.NewSysFS(d)), nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := orasremote.NewRepository(host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	ref := host + "/" + repo + "@" + digest
	if _, _, err := notation.Verify(context.Background(), v, notationregistry.NewRepository(r), notation.VerifyOptions{
		ArtifactReference: ref, MaxSignatureAttempts: 10,
	}); err != nil {
		t.Errorf("notation verify %s through the cache: %v", ref, err)
	}
}
