package integration

import (
	"crypto/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// An eStargz image pulls lazily through the cache: containerd's CRI
// image service, with the stargz snapshotter, pulls it in about the time
// of a few ranged reads although the upstream sends whole blobs at
// 1 MB/s; a file of it reads right from the mounted layer; the upstream
// has sent far fewer bytes than the layer by then. Beside the ranges,
// the upstream sees one whole-blob GET of the layer: the cache's one
// download, which goes on to store it.
func TestLazyPullThroughTheCache(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	hello := []byte("pulled lazily through depproxy\n")
	big := make([]byte, 48<<20)
	rand.Read(big)
	files := map[string][]byte{"hello.txt": hello, "big.bin": big}
	img, layerSize := testenv.EstargzImage(t, files)
	pushImage(t, e.registry.Addr, repo, "v1", img)
	e.front.TrickleBlobs()
	defer e.front.Fault(nil)

	// The image's registry is a name nobody resolves: whatever does not
	// go through the cache fails.
	const registry = "lazy.depproxy.test"
	s := settings.Defaults()
	s.Upstream = settings.Keys(registry + "=" + e.front.URL())
	s.Storage = t.TempDir()
	p := proxytest.Start(t, s)
	// containerd resolves the image by hosts.toml; the standalone
	// snapshotter fetches layers by its own config's mirrors: `depproxy
	// hosts` writes both, over the admin's settings. (Background
	// fetching, off in the admin's file, would read the rest of the
	// layer while the test measures what a lazy pull costs.)
	hostsDir, stargzConfig := t.TempDir(), filepath.Join(t.TempDir(), "config.toml")
	admin := "noprefetch = true\nno_background_fetch = true\n"
	os.WriteFile(stargzConfig, []byte(admin), 0o644)
	hosts := []string{"hosts", "--endpoint", p.URL, "--registry", registry, "--dir", hostsDir, "--stargz-config", stargzConfig}
	if out, err := exec.Command(proxytest.Binary(t), hosts...).CombinedOutput(); err != nil {
		t.Fatalf("depproxy hosts: %v\n%s", err, out)
	}
	sgz := testenv.StartStargz(t, stargzConfig)
	c := &containerd{testenv.StartContainerd(t, "containerd2", 3, sgz.ContainerdConfig(hostsDir))}

	e.front.Reset()
	began := time.Now()
	ref := registry + "/" + repo + ":v1"
	if out, err := c.Crictl(t, "pull", ref); err != nil {
		t.Fatalf("crictl pull %s: %v\n%s", ref, err, out)
	}
	pulled := time.Since(began)
	if got := c.repoDigest(t, ref); got != digestOf(t, img).String() {
		t.Fatalf("containerd has %s, the registry %s", got, digestOf(t, img))
	}
	// hello.txt, and a MiB from the middle of the big file, far ahead of
	// the download.
	sgz.ReadMounted(t, files, "hello.txt", "big.bin", 40<<20)
	read := time.Since(began)
	sent := e.front.Bytes("blobs")
	t.Logf("pulled in %v, a file read %v after the pull began; the upstream sent %d of the layer's %d bytes", pulled, read, sent, layerSize)
	if sent > layerSize/3 {
		t.Errorf("the upstream sent %d bytes by the first reads, of a %d-byte layer: the pull was not lazy", sent, layerSize)
	}
	if read > 30*time.Second {
		t.Errorf("the first reads came %v after the pull began: they waited for the download", read)
	}
	m := scrape(t, p.Ops)
	if n := sample(m, "depproxy_proxy_ranges_total"); n == 0 {
		t.Error("the snapshotter's reads were not ranges through the cache")
	}
	// The config and the layer, once each.
	if whole := e.front.Count(http.MethodGet, "blobs") - int(sample(m, "depproxy_proxy_cold_ranges_total")); whole != 2 {
		t.Errorf("the upstream saw %d whole-blob GETs, want 2 (the config and the layer)", whole)
	}
	if out, err := exec.Command(proxytest.Binary(t), append(hosts, "--remove")...).CombinedOutput(); err != nil {
		t.Fatalf("depproxy hosts --remove: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(stargzConfig); string(got) != admin {
		t.Errorf("after --remove, the snapshotter's config is %q, not the admin's", got)
	}
}
