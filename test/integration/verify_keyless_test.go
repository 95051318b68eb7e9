package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/sigstoretest"
)

// A keyless verify policy, enforced at the cache, offline: a test
// Sigstore (sigstore-go's virtual CA, log and timestamp authority)
// issues certificates and signs images' digests into v3 bundles,
// attached in the upstream as cosign v3 attaches them. The cache checks
// them against the Sigstore's trusted_root.json alone: the rule's
// identity pulls whole; another issuer, another subject, a log proof
// tampered with, a signature of another Sigstore, and a classic
// signature are refused with 403 DENIED naming the rule and the reason.
// A key rule naming the trusted root checks a key signature's log proof
// against the root's log keys: logged pulls, tampered is refused.
func TestVerifyKeyless(t *testing.T) {
	e := newEnv(t)
	ss, stranger := sigstoretest.New(t), sigstoretest.New(t)
	repo := repoName(t)
	upstreamHost := strings.TrimPrefix(e.front.URL(), "http://")
	const (
		issuer  = "https://token.actions.example"
		subject = "https://github.com/our-org/app/.github/workflows/release.yaml@refs/tags/v1"
	)

	digests := map[string]string{}
	for i, tag := range []string{"signed", "issuer", "subject", "tampered", "stranger", "classic", "unsigned"} {
		img := ociImage(t, i%3+1)
		pushImage(t, e.registry.Addr, repo, tag, img)
		digests[tag] = digestOf(t, img).String()
	}
	sign := func(s *sigstoretest.Sigstore, tag, issuer, subject string) []byte {
		return s.Sign(t, issuer, subject, digests[tag], sigstoretest.Options{})
	}
	attachBundle(t, e.registry.Addr, repo, digests["signed"], sign(ss, "signed", issuer, subject))
	attachBundle(t, e.registry.Addr, repo, digests["issuer"], sign(ss, "issuer", "https://accounts.example", subject))
	attachBundle(t, e.registry.Addr, repo, digests["subject"], sign(ss, "subject", issuer, "https://github.com/someone-else/app/.github/workflows/release.yaml@refs/tags/v1"))
	attachBundle(t, e.registry.Addr, repo, digests["tampered"], sigstoretest.TamperProof(t, sign(ss, "tampered", issuer, subject)))
	attachBundle(t, e.registry.Addr, repo, digests["stranger"], sign(stranger, "stranger", issuer, subject))
	key := newSigningKey(t)
	key.sign(t, e.registry.Addr+"/"+repo+"@"+digests["classic"], false)

	// A key rule naming the trusted root: a key signature's log proof is
	// checked against the root's log keys.
	keyed := repo + "/keyed"
	logKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for i, tag := range []string{"logged", "tampered"} {
		img := ociImage(t, i+1)
		pushImage(t, e.registry.Addr, keyed, tag, img)
		raw, err := img.RawManifest()
		if err != nil {
			t.Fatal(err)
		}
		b := ss.SignWithKey(t, logKey, raw)
		if tag == "tampered" {
			b = sigstoretest.TamperProof(t, b)
		}
		attachBundle(t, e.registry.Addr, keyed, digestOf(t, img).String(), b)
	}

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "trusted_root.json"), ss.TrustedRoot(t), 0o644)
	pem, err := cryptoutils.MarshalPublicKeyToPEM(logKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "cosign.pub"), pem, 0o644)
	policy := filepath.Join(dir, "verify.yaml")
	// The key rule first: the keyless one's pattern is its parent.
	os.WriteFile(policy, []byte(fmt.Sprintf(`mode: enforce
rules:
- images: ["%s/%s"]
  keys: [{file: cosign.pub}]
  trustedRoot: {file: trusted_root.json}
- images: ["%s/%s"]
  keyless:
    issuer: %s
    subjectRegExp: '^https://github\.com/our-org/.*$'
    trustedRoot: {file: trusted_root.json}
`, upstreamHost, keyed, upstreamHost, repo, issuer)), 0o644)
	s := settings.Defaults()
	s.Upstream = settings.Keys(e.front.URL())
	s.VerifyPolicy = policy
	p := proxytest.Start(t, s)

	for _, image := range []string{repo + ":signed", keyed + ":logged"} {
		r, err := name.ParseReference(p.Host+"/"+image, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if img, err := remote.Image(r); err != nil {
			t.Errorf("pulling %s, signed as the rule wants: %v", image, err)
		} else if err := validate.Image(img); err != nil {
			t.Errorf("pulling %s, signed as the rule wants: %v", image, err)
		}
	}
	resp, body := get(t, p.URL+"/v2/"+keyed+"/manifests/tampered", acceptAll)
	ociError(t, resp, body, http.StatusForbidden, "DENIED")
	if !strings.Contains(string(body), "rule 1") || !strings.Contains(string(body), "log proof does not verify") {
		t.Errorf("a key signature whose log proof was tampered with: refused with %s", body)
	}
	for _, c := range []struct{ tag, reason string }{
		{"issuer", `identity mismatch: issuer "https://accounts.example"`},
		{"subject", `identity mismatch: issuer "` + issuer + `" subject "https://github.com/someone-else/`},
		{"tampered", "log proof does not verify"},
		{"stranger", "log proof does not verify: logged by a transparency log the rule's trusted root does not name"},
		{"classic", "a classic cosign signature"},
		{"unsigned", "no signature"},
	} {
		for _, ref := range []string{c.tag, digests[c.tag]} {
			resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/"+ref, acceptAll)
			ociError(t, resp, body, http.StatusForbidden, "DENIED")
			var oe struct{ Errors []struct{ Message string } }
			json.Unmarshal(body, &oe)
			if len(oe.Errors) == 0 || !strings.Contains(oe.Errors[0].Message, c.reason) || !strings.Contains(oe.Errors[0].Message, "rule 2") {
				t.Errorf("%s: refused with %s, want rule 2 and %q", ref, body, c.reason)
			}
		}
	}
	m := scrape(t, p.Ops)
	if v := sample(m, "depproxy_proxy_verify_total", "result", "verified"); v != 2 {
		t.Errorf("depproxy_proxy_verify_total{result=verified} = %v, want 2", v)
	}
	if v := sample(m, "depproxy_proxy_verify_total", "result", "refused"); v != 7 {
		t.Errorf("depproxy_proxy_verify_total{result=refused} = %v, want 7 (each once, by tag or digest)", v)
	}
}

// attachBundle attaches a sigstore bundle to the image subject (a
// digest) as cosign v3 does: an OCI 1.1 referrer of artifactType the
// bundle's media type, an empty config, the bundle its one layer.
// go-containerregistry keeps the referrers fallback tag where the
// registry has no referrers API.
func attachBundle(t *testing.T, reg, repo, subject string, bundle []byte) {
	t.Helper()
	r, err := name.NewRepository(reg+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	emptyConfig := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	layer := static.NewLayer(bundle, sigstoretest.BundleType)
	var descs []v1.Descriptor
	for _, l := range []v1.Layer{emptyConfig, layer} {
		if err := remote.WriteLayer(r, l); err != nil {
			t.Fatal(err)
		}
		d, _ := l.Digest()
		size, _ := l.Size()
		mt, _ := l.MediaType()
		descs = append(descs, v1.Descriptor{MediaType: mt, Digest: d, Size: size})
	}
	resp, body := get(t, "http://"+reg+"/v2/"+repo+"/manifests/"+subject, acceptAll)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the subject %s: %s", subject, resp.Status)
	}
	sub := v1.Descriptor{MediaType: types.MediaType(resp.Header.Get("Content-Type")), Size: int64(len(body))}
	if sub.Digest, err = v1.NewHash(subject); err != nil {
		t.Fatal(err)
	}
	m, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"artifactType":  sigstoretest.BundleType,
		"config":        descs[0],
		"layers":        descs[1:],
		"subject":       sub,
		"annotations": map[string]string{
			"dev.sigstore.bundle.content":       "dsse-envelope",
			"dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	h, _, err := v1.SHA256(strings.NewReader(string(m)))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(r.Digest(h.String()), rawManifest{m, types.OCIManifestSchema1}); err != nil {
		t.Fatalf("attaching the bundle to %s: %v", subject, err)
	}
}

// rawManifest is a manifest's bytes as go-containerregistry puts them.
type rawManifest struct {
	body []byte
	mt   types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.body, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }
