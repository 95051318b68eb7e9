package integration

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// chartRepo is a classic chart repository on disk, made by the real helm
// (helm create, helm package, helm repo index), served by a plain file
// server that can be stopped and started again on its address.
type chartRepo struct {
	dir  string // the repository: index.yaml and the .tgz files
	addr string
	srv  *http.Server
}

func newChartRepo(t *testing.T) *chartRepo {
	t.Helper()
	r := &chartRepo{dir: filepath.Join(t.TempDir(), "stable"), addr: testenv.FreeAddr(t)}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.start(t)
	return r
}

func (r *chartRepo) url() string { return "http://" + r.addr + "/stable" }

func (r *chartRepo) start(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	r.srv = &http.Server{Handler: http.StripPrefix("/stable", http.FileServer(http.Dir(r.dir)))}
	go r.srv.Serve(l)
	t.Cleanup(func() { r.srv.Close() })
}

func (r *chartRepo) stop() { r.srv.Close() }

// add packages a new chart at a version (signed with the key of keyring
// when it is given) and indexes the repository again.
func (r *chartRepo) add(t *testing.T, name, version, keyring string) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), name)
	helmRun(t, "create", src)
	args := []string{"package", src, "--version", version, "-d", r.dir}
	if keyring != "" {
		args = append(args, "--sign", "--key", "depproxy test", "--keyring", keyring)
	}
	helmRun(t, args...)
	helmRun(t, "repo", "index", r.dir)
	return filepath.Join(r.dir, name+"-"+version+".tgz")
}

func helmRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := helmTry(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func helmTry(t *testing.T, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(testenv.Tool(t, "helm"), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home, "HELM_REGISTRY_CONFIG="+filepath.Join(home, "config.json"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// signingKeys writes a new OpenPGP key as a secret and a public keyring,
// as `helm package --sign` and `helm pull --verify` read them.
func signingKeys(t *testing.T) (secring, pubring string) {
	t.Helper()
	e, err := openpgp.NewEntity("depproxy test", "", "test@depproxy.invalid", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var sec, pub bytes.Buffer
	if err := e.SerializePrivate(&sec, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(&pub); err != nil {
		t.Fatal(err)
	}
	secring, pubring = filepath.Join(dir, "secring.gpg"), filepath.Join(dir, "pubring.gpg")
	if err := os.WriteFile(secring, sec.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubring, pub.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return secring, pubring
}

// chartManifest is what a registry says of a chart version.
func chartManifest(t *testing.T, base, repo, tag string) (digest string, m struct {
	Config struct{ Digest string } `json:"config"`
	Layers []struct{ MediaType, Digest string }
}) {
	t.Helper()
	resp, body := get(t, base+"/v2/"+repo+"/manifests/"+tag, "application/vnd.oci.image.manifest.v1+json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s/%s:%s: %s %s", base, repo, tag, resp.Status, body)
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	return resp.Header.Get("Docker-Content-Digest"), m
}

// TestHelmRepositoryAsOCI: a classic chart repository, pulled as OCI
// charts through the cache by the real helm.
func TestHelmRepositoryAsOCI(t *testing.T) {
	secring, pubring := signingKeys(t)
	repo := newChartRepo(t)
	plain := repo.add(t, "web", "0.1.0", "")
	signed := repo.add(t, "web", "0.2.0+build.1", secring)
	repo.add(t, "secret", "1.0.0", "")

	start := func(t *testing.T) *proxytest.Proxy {
		s := settings.Defaults()
		s.Upstream = settings.Keys("charts.test=helm+" + repo.url())
		s.RecheckInterval = settings.Duration(time.Second)
		s.Deny = settings.List{"charts.test/secret"}
		return proxytest.Start(t, s, server.WithStorage(openStorage(t, "filesystem", nil)), server.WithCacheOptions(cache.WithListTTL(time.Second)))
	}
	p := start(t)
	ref := "oci://" + p.Host + "/charts.test/"

	t.Run("helm pull gives the chart's bytes, helm template renders it", func(t *testing.T) {
		dest := t.TempDir()
		helmRun(t, "pull", ref+"web", "--version", "0.1.0", "--plain-http", "-d", dest)
		got, _ := os.ReadFile(filepath.Join(dest, "web-0.1.0.tgz"))
		want, _ := os.ReadFile(plain)
		if len(want) == 0 || !bytes.Equal(got, want) {
			t.Fatalf("helm pull through the cache gave %d bytes, the repository has %d, not the same", len(got), len(want))
		}
		out := helmRun(t, "template", "site", ref+"web", "--version", "0.1.0", "--plain-http")
		if !strings.Contains(out, "kind: Deployment") || !strings.Contains(out, "name: site-web") {
			t.Fatalf("helm template through the cache:\n%s", out)
		}
	})

	t.Run("a signed chart verifies against its keyring", func(t *testing.T) {
		dest := t.TempDir()
		out := helmRun(t, "pull", ref+"web", "--version", "0.2.0+build.1", "--plain-http", "--verify", "--keyring", pubring, "-d", dest)
		if !strings.Contains(out, "Signed by: depproxy test") {
			t.Fatalf("helm pull --verify: %s", out)
		}
		got, _ := os.ReadFile(filepath.Join(dest, "web-0.2.0+build.1.tgz"))
		want, _ := os.ReadFile(signed)
		if !bytes.Equal(got, want) {
			t.Fatal("the signed chart's bytes differ")
		}
	})

	t.Run("the config and layers are those of helm push", func(t *testing.T) {
		reg := testenv.StartRegistry(t)
		for _, c := range []struct{ file, tag string }{{plain, "0.1.0"}, {signed, "0.2.0_build.1"}} {
			helmRun(t, "push", c.file, "oci://"+strings.TrimPrefix(reg.URL(), "http://")+"/charts", "--plain-http")
			_, pushed := chartManifest(t, reg.URL(), "charts/web", c.tag)
			_, cached := chartManifest(t, p.URL, "charts.test/web", c.tag)
			if pushed.Config.Digest != cached.Config.Digest {
				t.Errorf("%s: config %s, helm push's %s", c.tag, cached.Config.Digest, pushed.Config.Digest)
			}
			if got, want := len(cached.Layers), len(pushed.Layers); got != want {
				t.Fatalf("%s: %d layers, helm push's %d", c.tag, got, want)
			}
			for i := range pushed.Layers {
				if pushed.Layers[i] != cached.Layers[i] {
					t.Errorf("%s: layer %d %v, helm push's %v", c.tag, i, cached.Layers[i], pushed.Layers[i])
				}
			}
		}
	})

	t.Run("another replica, or a restart, makes the same manifest", func(t *testing.T) {
		first, _ := chartManifest(t, p.URL, "charts.test/web", "0.2.0_build.1")
		again, _ := chartManifest(t, start(t).URL, "charts.test/web", "0.2.0_build.1")
		if first == "" || first != again {
			t.Fatalf("manifest %s, then %s", first, again)
		}
	})

	t.Run("tags/list lists the index's versions", func(t *testing.T) {
		resp, body := get(t, p.URL+"/v2/charts.test/web/tags/list", "")
		if resp.StatusCode != http.StatusOK || string(body) != `{"name":"web","tags":["0.1.0","0.2.0_build.1"]}` {
			t.Fatalf("tags/list: %s %s", resp.Status, body)
		}
	})

	t.Run("the access rules refuse a denied chart", func(t *testing.T) {
		out, err := helmTry(t, "pull", ref+"secret", "--version", "1.0.0", "--plain-http", "-d", t.TempDir())
		if err == nil || !strings.Contains(out, "denied") {
			t.Fatalf("helm pull of a denied chart: %v\n%s", err, out)
		}
	})

	t.Run("the repository down, a cached version still pulls; a new one appears after the recheck", func(t *testing.T) {
		repo.stop()
		time.Sleep(1500 * time.Millisecond) // past the recheck interval
		dest := t.TempDir()
		helmRun(t, "pull", ref+"web", "--version", "0.1.0", "--plain-http", "-d", dest)
		got, _ := os.ReadFile(filepath.Join(dest, "web-0.1.0.tgz"))
		want, _ := os.ReadFile(plain)
		if !bytes.Equal(got, want) {
			t.Fatal("the cached chart's bytes differ with the repository down")
		}

		repo.add(t, "web", "0.3.0", "")
		repo.start(t)
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, body := get(t, p.URL+"/v2/charts.test/web/tags/list", "")
			if strings.Contains(string(body), `"0.3.0"`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("tags/list 10 s after 0.3.0 was published: %s", body)
			}
			time.Sleep(200 * time.Millisecond)
		}
		helmRun(t, "pull", ref+"web", "--version", "0.3.0", "--plain-http", "-d", t.TempDir())
	})
}

// TestHelmRepositoryThroughReplicas: two replicas on one bucket serve a
// chart repository alike: the same manifest, the chart's bytes, whichever
// replica a helm pull reaches.
func TestHelmRepositoryThroughReplicas(t *testing.T) {
	repo := newChartRepo(t)
	plain := repo.add(t, "web", "0.1.0", "")
	want, _ := os.ReadFile(plain)
	rs := startReplicas(t, 2, "charts.test=helm+"+repo.url(), testenv.StartMinIO(t), "helm")
	var digests []string
	for _, r := range rs {
		d, _ := chartManifest(t, r.URL, "charts.test/web", "0.1.0")
		digests = append(digests, d)
		dest := t.TempDir()
		helmRun(t, "pull", "oci://"+r.Host+"/charts.test/web", "--version", "0.1.0", "--plain-http", "-d", dest)
		if got, _ := os.ReadFile(filepath.Join(dest, "web-0.1.0.tgz")); !bytes.Equal(got, want) {
			t.Errorf("helm pull through %s: %d bytes, not the chart's %d", r.Host, len(got), len(want))
		}
	}
	if digests[0] == "" || digests[0] != digests[1] {
		t.Fatalf("the replicas' manifests: %v", digests)
	}
}
