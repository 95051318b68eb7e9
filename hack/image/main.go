// Command image packs one static binary into a single-layer image and
// pushes it, for the end-to-end cluster where no Docker engine runs. It
// sets what the Dockerfile's final stages set: the binary at /NAME, the
// entrypoint, the default command and the nonroot user.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	binary := flag.String("binary", "", "the static binary to pack")
	at := flag.String("at", "", "its path in the image, e.g. /manager")
	cmd := flag.String("cmd", "", "comma-separated default arguments")
	user := flag.String("user", "65532:65532", "the user the entrypoint runs as")
	ref := flag.String("tag", "", "where to push, e.g. localhost:5001/depproxy/manager:e2e")
	flag.Parse()
	if *binary == "" || *at == "" || *ref == "" {
		log.Fatal("usage: image -binary FILE -at /PATH -tag REF [-cmd ARGS] [-user UID:GID]")
	}
	if err := build(*binary, *at, *cmd, *user, *ref); err != nil {
		log.Fatal(err)
	}
}

func build(binary, at, cmd, user, ref string) error {
	content, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	layerTar, err := tarOf(content, at)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = []string{at}
	cfg.Config.User = user
	if cmd != "" {
		cfg.Config.Cmd = strings.Split(cmd, ",")
	}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	if err := remote.Write(tag, img); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// tarOf is a layer holding the binary at path and the directories above it.
func tarOf(content []byte, at string) ([]byte, error) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	var dirs []string
	for d := path.Dir(at); d != "/" && d != "."; d = path.Dir(d) {
		dirs = append([]string{d}, dirs...)
	}
	for _, d := range dirs {
		if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755}); err != nil {
			return nil, err
		}
	}
	// distroless has a world-writable /tmp; so does this image.
	if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}); err != nil {
		return nil, err
	}
	if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(at, "/"), Mode: 0o755, Size: int64(len(content))}); err != nil {
		return nil, err
	}
	if _, err := w.Write(content); err != nil {
		return nil, err
	}
	return buf.Bytes(), w.Close()
}
