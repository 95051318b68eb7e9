package integration

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"

	"github.com/depproxy/depproxy/test/testenv"
)

// signingKey is a cosign key pair, made by cosign itself.
type signingKey struct{ dir string }

func newSigningKey(t *testing.T) signingKey {
	t.Helper()
	k := signingKey{dir: t.TempDir()}
	k.cosign(t, "generate-key-pair")
	return k
}

// cosign runs cosign v3 offline: a key, no transparency log, no signing
// config from Sigstore's TUF (nothing leaves this machine).
func (k signingKey) cosign(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.Tool(t, "cosign"), args...)
	cmd.Dir = k.dir
	cmd.Env = append(os.Environ(), "COSIGN_PASSWORD=", "HOME="+k.dir, "TUF_ROOT="+filepath.Join(k.dir, "tuf"))
	out, err := cmd.CombinedOutput()
	if err != nil && args[0] == "generate-key-pair" {
		t.Fatalf("cosign generate-key-pair: %v\n%s", err, out)
	}
	return string(out), err
}

func (k signingKey) sign(t *testing.T, image string, bundle bool) {
	t.Helper()
	args := []string{"sign", "--key", "cosign.key", "--use-signing-config=false", "--tlog-upload=false",
		"--allow-http-registry", "--allow-insecure-registry", "--yes"}
	if !bundle {
		args = append(args, "--new-bundle-format=false")
	}
	if out, err := k.cosign(t, append(args, image)...); err != nil {
		t.Fatalf("cosign sign %s: %v\n%s", image, err, out)
	}
}

func (k signingKey) verify(t *testing.T, image string) (string, error) {
	t.Helper()
	return k.cosign(t, "verify", "--key", "cosign.pub", "--insecure-ignore-tlog=true",
		"--allow-http-registry", "--allow-insecure-registry", image)
}

// oras runs oras in dir (it takes files by relative paths only).
func oras(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.Tool(t, "oras"), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Signatures and attachments pull through the cache as from the
// upstream, with cosign v3 and oras: an image signed in cosign's bundle
// format (an OCI 1.1 referrer), one with the classic .sig tag, and an
// SBOM attached with oras. Against Distribution (no referrers API: the
// referrers live in the fallback tag) and against go-containerregistry's
// registry with the referrers API on. An unsigned image fails to
// verify. With the upstream down, a cache started afresh on the same
// storage still verifies.
func TestSignaturesThroughTheCache(t *testing.T) {
	key := newSigningKey(t)
	withAPI := httptest.NewServer(ggcrregistry.New(ggcrregistry.WithReferrersSupport(true), ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer withAPI.Close()
	e := newEnv(t)
	for _, upstream := range []struct {
		name  string
		front *testenv.Front
		push  string // where images are pushed and signed
	}{
		{"no referrers API", e.front, e.registry.Addr},
		{"referrers API", testenv.StartFront(t, withAPI.URL), strings.TrimPrefix(withAPI.URL, "http://")},
	} {
		t.Run(upstream.name, func(t *testing.T) {
			repo := repoName(t)
			images := map[string]string{}
			for i, name := range []string{"bundle", "classic", "unsigned"} {
				img := ociImage(t, i+1)
				pushImage(t, upstream.push, repo, name, img)
				images[name] = repo + "@" + digestOf(t, img).String()
			}
			key.sign(t, upstream.push+"/"+images["bundle"], true)
			key.sign(t, upstream.push+"/"+images["classic"], false)
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "sbom.json"), []byte(`{"spdxVersion":"SPDX-2.3"}`), 0o644)
			if out, err := oras(t, dir, "attach", "--plain-http", "--artifact-type", "application/spdx+json",
				upstream.push+"/"+images["bundle"], "sbom.json:application/spdx+json"); err != nil {
				t.Fatalf("oras attach: %v\n%s", err, out)
			}
			for _, name := range []string{"bundle", "classic"} {
				if out, err := key.verify(t, upstream.push+"/"+images[name]); err != nil {
					t.Fatalf("cosign verify of the %s signature against the upstream itself: %v\n%s", name, err, out)
				}
			}

			store := openStorage(t, "filesystem", nil)
			p := startProxy(t, upstream.front.URL(), store)
			upstream.front.Reset()
			for _, name := range []string{"bundle", "classic"} {
				if out, err := key.verify(t, p.Host+"/"+images[name]); err != nil {
					t.Errorf("cosign verify of the %s signature through the cache: %v\n%s", name, err, out)
				}
			}
			if out, err := key.verify(t, p.Host+"/"+images["unsigned"]); err == nil {
				t.Errorf("cosign verify of an unsigned image through the cache passed:\n%s", out)
			} else if !strings.Contains(out, "no signatures found") {
				t.Errorf("cosign verify of an unsigned image: %s", out)
			}
			// oras walks the tree: the referrers, and theirs. (The order
			// of a referrers list is the registry's: go-containerregistry's
			// varies.)
			discover := func(host string) string {
				out, err := oras(t, dir, "discover", "--plain-http", "--format", "json", host+"/"+images["bundle"])
				if err != nil {
					t.Fatalf("oras discover at %s: %v\n%s", host, err, out)
				}
				var tree struct {
					Referrers []struct {
						Digest       string          `json:"digest"`
						ArtifactType string          `json:"artifactType"`
						Referrers    json.RawMessage `json:"referrers"`
					} `json:"referrers"`
				}
				if err := json.Unmarshal([]byte(out), &tree); err != nil || len(tree.Referrers) != 2 {
					t.Errorf("oras discover at %s: %v, want the signature and the SBOM:\n%s", host, err, out)
				}
				var found []string
				for _, r := range tree.Referrers {
					found = append(found, r.Digest+" "+r.ArtifactType+" "+string(r.Referrers))
				}
				slices.Sort(found)
				return strings.Join(found, "\n")
			}
			want := discover(upstream.push)
			if got := discover(p.Host); got != want {
				t.Errorf("oras discover through the cache:\n%s\nthe upstream's:\n%s", got, want)
			}
			// The upstream's own API was asked, where it has one.
			if n := upstream.front.Count(http.MethodGet, "referrers"); n == 0 {
				t.Errorf("the upstream's referrers API was never asked")
			}

			// The upstream down, a new process on the same storage.
			p.Stop()
			upstream.front.Stop()
			defer upstream.front.Start()
			p = startProxy(t, upstream.front.URL(), store)
			for _, name := range []string{"bundle", "classic"} {
				if out, err := key.verify(t, p.Host+"/"+images[name]); err != nil {
					t.Errorf("with the upstream down, after a restart: cosign verify of the %s signature: %v\n%s", name, err, out)
				}
			}
			if got := discover(p.Host); got != want {
				t.Errorf("with the upstream down, after a restart: oras discover:\n%s", got)
			}
		})
	}
}
