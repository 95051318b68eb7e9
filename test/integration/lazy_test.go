package integration

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/test/testenv"
)

// trickle makes the front send whole-blob downloads at about 1 MB/s;
// ranged requests go at full speed, as from a registry far away whose
// round trips are short next to its bandwidth.
func trickle(e *env) {
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if testenv.PathKind(r.URL.Path) != "blobs" || r.Method != http.MethodGet || r.Header.Get("Range") != "" {
			return false
		}
		resp, err := http.Get(e.registry.URL() + r.URL.Path)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		buf := make([]byte, 64<<10)
		for {
			n, err := resp.Body.Read(buf)
			if _, werr := w.Write(buf[:n]); werr != nil || err != nil {
				return true
			}
			w.(http.Flusher).Flush()
			time.Sleep(64 * time.Millisecond) // about 1 MB/s
		}
	})
}

// estargzLayer is an eStargz layer, as `ctr-remote image optimize` or
// `nerdctl image convert --estargz` make one, from files by name.
type estargzLayer struct {
	blob          []byte
	toc           string
	uncompressed  int64
	compressedLen int64
}

func newEstargzLayer(t *testing.T, files map[string][]byte) *estargzLayer {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for name, data := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(1, 0)})
		tw.Write(data)
	}
	tw.Close()
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tb.Bytes()), 0, int64(tb.Len())))
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	data, err := io.ReadAll(blob)
	if err != nil {
		t.Fatal(err)
	}
	size, err := blob.UncompressedSize()
	if err != nil {
		t.Fatal(err)
	}
	return &estargzLayer{blob: data, toc: blob.TOCDigest().String(), uncompressed: size, compressedLen: int64(len(data))}
}

func (l *estargzLayer) Digest() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(l.blob))
	return h, err
}
func (l *estargzLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l *estargzLayer) Size() (int64, error)                { return l.compressedLen, nil }
func (l *estargzLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

// image is a linux/amd64 OCI image of the layer, annotated as eStargz
// converters annotate it: the snapshotter checks the TOC against it.
func (l *estargzLayer) image(t *testing.T) v1.Image {
	t.Helper()
	layer, err := partial.CompressedToLayer(l)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Append(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON),
		mutate.Addendum{Layer: layer, Annotations: map[string]string{
			estargz.TOCJSONDigestAnnotation:         l.toc,
			estargz.StoreUncompressedSizeAnnotation: fmt.Sprint(l.uncompressed),
		}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Cmd = []string{"/hello.txt"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// startStargz runs the stargz snapshotter (built by `make tools` from
// its library) with the config file cfg, on a socket of its own.
func startStargz(t *testing.T, cfg string) (socket, root string) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("the stargz snapshotter mounts layers with FUSE: %v", err)
	}
	dir, err := os.MkdirTemp("", "dpsgz-")
	if err != nil {
		t.Fatal(err)
	}
	socket, root = filepath.Join(dir, "s.sock"), filepath.Join(dir, "root")
	var logs syncBuffer
	cmd := exec.Command(testenv.Tool(t, "containerd-stargz-grpc"), "--address", socket, "--root", root, "--config", cfg, "--log-level", "debug")
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		exec.Command("umount", "-R", root).Run()
		// FUSE mounts left behind are lazily unmounted one by one.
		if mounts, _ := filepath.Glob(filepath.Join(root, "snapshotter", "snapshots", "*", "fs")); len(mounts) > 0 {
			for _, m := range mounts {
				syscall.Unmount(m, syscall.MNT_DETACH)
			}
		}
		os.RemoveAll(dir)
		if t.Failed() {
			t.Logf("the stargz snapshotter's logs:\n%s", logs.String())
		}
	})
	eventually(t, 30*time.Second, "the stargz snapshotter listening", func() bool {
		_, err := os.Stat(socket)
		return err == nil
	})
	return socket, root
}

// An eStargz image pulls lazily through the cache: containerd's CRI
// image service, with the stargz snapshotter, pulls it in about the time
// of a few ranged reads although the upstream sends whole blobs at
// 1 MB/s; a file of it reads right from the mounted layer; the upstream
// has sent far fewer bytes than the layer by then. The cache's one
// download of the layer goes on, and is stored.
func TestLazyPullThroughTheCache(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	hello := []byte("pulled lazily through depproxy\n")
	big := make([]byte, 48<<20)
	rand.Read(big)
	layer := newEstargzLayer(t, map[string][]byte{"hello.txt": hello, "big.bin": big})
	img := layer.image(t)
	pushImage(t, e.registry.Addr, repo, "v1", img)
	trickle(e)
	defer e.front.Fault(nil)

	// The image's registry is a name nobody resolves: whatever does not
	// go through the cache fails.
	const registry = "lazy.depproxy.test"
	s := settings.Defaults()
	s.Upstream = settings.Keys(registry + "=" + e.front.URL())
	s.Storage = t.TempDir()
	p := start(t, s)
	// containerd resolves the image by hosts.toml; the standalone
	// snapshotter fetches layers by its own config's mirrors: `depproxy
	// hosts` writes both, over the admin's settings. (Background
	// fetching, off in the admin's file, would read the rest of the
	// layer while the test measures what a lazy pull costs.)
	hostsDir, stargzConfig := t.TempDir(), filepath.Join(t.TempDir(), "config.toml")
	admin := "noprefetch = true\nno_background_fetch = true\n"
	os.WriteFile(stargzConfig, []byte(admin), 0o644)
	hosts := []string{"hosts", "--endpoint", p.URL, "--registry", registry, "--dir", hostsDir, "--stargz-config", stargzConfig}
	if out, err := exec.Command(depproxyBinary(t), hosts...).CombinedOutput(); err != nil {
		t.Fatalf("depproxy hosts: %v\n%s", err, out)
	}
	socket, root := startStargz(t, stargzConfig)
	c := &containerd{testenv.StartContainerd(t, "containerd2", 3, fmt.Sprintf(`[proxy_plugins.stargz]
  type = "snapshot"
  address = %q
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "stargz"
  disable_snapshot_annotations = false
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = %q
`, socket, hostsDir))}

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
	mounts, _ := filepath.Glob(filepath.Join(root, "snapshotter", "snapshots", "*", "fs", "hello.txt"))
	if len(mounts) != 1 {
		t.Fatalf("the layer is not mounted by the snapshotter (found %v): the pull was not lazy", mounts)
	}
	got, err := os.ReadFile(mounts[0])
	if err != nil || !bytes.Equal(got, hello) {
		t.Fatalf("hello.txt from the mounted layer: %q, %v", got, err)
	}
	// A MiB from the middle of the big file, far ahead of the download.
	f, err := os.Open(filepath.Join(filepath.Dir(mounts[0]), "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	piece := make([]byte, 1<<20)
	_, err = f.ReadAt(piece, 40<<20)
	f.Close()
	if err != nil || !bytes.Equal(piece, big[40<<20:41<<20]) {
		t.Fatalf("a MiB of big.bin from the mounted layer is not the file's (%v)", err)
	}
	read := time.Since(began)
	sent := e.front.Bytes("blobs")
	t.Logf("pulled in %v, a file read %v after the pull began; the upstream sent %d of the layer's %d bytes", pulled, read, sent, layer.compressedLen)
	if sent > layer.compressedLen/3 {
		t.Errorf("the upstream sent %d bytes by the first reads, of a %d-byte layer: the pull was not lazy", sent, layer.compressedLen)
	}
	if read > 30*time.Second {
		t.Errorf("the first reads came %v after the pull began: they waited for the download", read)
	}
	if n := sample(scrape(t, p.Ops), "depproxy_proxy_ranges_total"); n == 0 {
		t.Error("the snapshotter's reads were not ranges through the cache")
	}
	if out, err := exec.Command(depproxyBinary(t), append(hosts, "--remove")...).CombinedOutput(); err != nil {
		t.Fatalf("depproxy hosts --remove: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(stargzConfig); string(got) != admin {
		t.Errorf("after --remove, the snapshotter's config is %q, not the admin's", got)
	}
}
