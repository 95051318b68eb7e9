package testenv

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// EstargzImage is a linux/amd64 OCI image of one eStargz layer holding
// files, as `nerdctl image convert --estargz` makes one: the layer
// annotated with its TOC digest, which the stargz snapshotter checks.
// size is the layer's (compressed) size.
func EstargzImage(t T, files map[string][]byte) (img v1.Image, size int64) {
	t.Helper()
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, name := range names {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(files[name])), Typeflag: tar.TypeReg, ModTime: time.Unix(1, 0)})
		tw.Write(files[name])
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
	uncompressed, err := blob.UncompressedSize()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := partial.CompressedToLayer(compressedLayer(data))
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Append(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON),
		mutate.Addendum{Layer: layer, Annotations: map[string]string{
			estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
			estargz.StoreUncompressedSizeAnnotation: fmt.Sprint(uncompressed),
		}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img, int64(len(data))
}

// compressedLayer is a layer's blob as it is stored.
type compressedLayer []byte

func (l compressedLayer) Digest() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(l))
	return h, err
}
func (l compressedLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l)), nil
}
func (l compressedLayer) Size() (int64, error)                { return int64(len(l)), nil }
func (l compressedLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

// Stargz is a stargz snapshotter daemon (containerd-stargz-grpc, built by
// `make tools` from the snapshotter's library) of the caller's own.
type Stargz struct {
	Socket string
	Root   string
}

// StartStargz runs the stargz snapshotter with the config file cfg. It
// needs root and FUSE.
func StartStargz(t T, cfg string) *Stargz {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("the stargz snapshotter mounts layers with FUSE: %v", err)
	}
	dir, err := os.MkdirTemp("", "dpsgz-") // short: a socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	s := &Stargz{Socket: filepath.Join(dir, "s.sock"), Root: filepath.Join(dir, "root")}
	logs := &SyncBuffer{}
	cmd := exec.Command(Tool(t, "containerd-stargz-grpc"), "--address", s.Socket, "--root", s.Root, "--config", cfg, "--log-level", "debug")
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		// What the snapshotter left mounted, lazily unmounted.
		mounts, _ := filepath.Glob(filepath.Join(s.Root, "snapshotter", "snapshots", "*", "fs"))
		for _, m := range mounts {
			syscall.Unmount(m, syscall.MNT_DETACH)
		}
		exec.Command("umount", "-R", s.Root).Run()
		os.RemoveAll(dir)
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(s.Socket); err == nil {
			return s
		}
		if i > 600 {
			t.Fatalf("the stargz snapshotter did not start:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ContainerdConfig is what containerd 2.x needs to pull lazily with this
// snapshotter through its CRI image service, its registries resolved by
// the hosts.toml files under hostsDir.
func (s *Stargz) ContainerdConfig(hostsDir string) string {
	return fmt.Sprintf(`[proxy_plugins.stargz]
  type = "snapshot"
  address = %q
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "stargz"
  disable_snapshot_annotations = false
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = %q
`, s.Socket, hostsDir)
}

// Mounted is the path of a file in the layer the snapshotter mounted
// (one image pulled), or "" if none holds it.
func (s *Stargz) Mounted(name string) string {
	found, _ := filepath.Glob(filepath.Join(s.Root, "snapshotter", "snapshots", "*", "fs", name))
	if len(found) != 1 {
		return ""
	}
	return found[0]
}

// ReadMounted reads what a container would from the layer the
// snapshotter mounted (one image pulled, of EstargzImage's files): the
// file small whole, and a MiB of big at off, far ahead of any download.
// t fails when the layer is not mounted (the pull was not lazy) or a
// read is not the file's.
func (s *Stargz) ReadMounted(t T, files map[string][]byte, small, big string, off int64) {
	t.Helper()
	mounted := s.Mounted(small)
	if mounted == "" {
		t.Fatalf("%s is in no layer the snapshotter mounted: the pull was not lazy", small)
	}
	if got, err := os.ReadFile(mounted); err != nil || !bytes.Equal(got, files[small]) {
		t.Fatalf("%s from the mounted layer: %q, %v", small, got, err)
	}
	f, err := os.Open(filepath.Join(filepath.Dir(mounted), big))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	piece := make([]byte, 1<<20)
	if _, err := f.ReadAt(piece, off); err != nil || !bytes.Equal(piece, files[big][off:off+1<<20]) {
		t.Fatalf("a MiB of %s at %d from the mounted layer is not the file's (%v)", big, off, err)
	}
}
