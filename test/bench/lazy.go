package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/depproxy/depproxy/test/testenv"
)

// lazyRows: what lazy pulling waits for, through each cache, on an
// upstream that sends whole blobs at about 1 MB/s and ranges at full
// speed (testenv's TrickleBlobs): a cold tail range of a 64 MiB blob (a
// snapshotter reading a layer's footer first), and containerd pulling
// an eStargz image with the stargz snapshotter.
func (b *bench) lazyRows(runs int) {
	fmt.Fprintln(os.Stderr, "lazy pulling")
	b.front.TrickleBlobs()
	defer b.front.Fault(nil)

	const size = 64 << 20
	data := make([]byte, size)
	rand.Read(data)
	layer := static.NewLayer(data, types.OCILayer)
	repo, _ := name.NewRepository(b.upstream.Addr+"/bench/lazy-blob", name.Insecure)
	if err := remote.WriteLayer(repo, layer); err != nil {
		b.Fatal(err)
	}
	d, _ := layer.Digest()
	fmt.Println("| cache | scenario | answer | first byte of the range | the whole range | upstream bytes ÷ blob size |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, kind := range []string{"depproxy fs", "distribution fs"} {
		var ms []rangeMeasure
		for r := 0; r < runs; r++ {
			c := b.start(kind)
			ms = append(ms, b.coldTail(c, d.String(), data))
			c.stop()
		}
		sort.Slice(ms, func(i, j int) bool { return ms[i].whole < ms[j].whole })
		m := ms[len(ms)/2]
		fmt.Printf("| %s | the last MiB of a cold 64 MiB blob, upstream at 1 MB/s | %d | %s | %s | %.2f× |\n",
			kind, m.status, m.first.Round(time.Millisecond), m.whole.Round(time.Millisecond), m.upstream)
	}
	fmt.Println()
	b.lazyPullRows(runs)
}

type rangeMeasure struct {
	status       int
	first, whole time.Duration
	upstream     float64
}

// coldTail asks an empty cache for the last MiB of the blob. A cache that
// answers the whole blob instead (200) has the range when the body
// reaches it.
func (b *bench) coldTail(c *cache, d string, data []byte) rangeMeasure {
	size := int64(len(data))
	from := size - 1<<20
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.addr()+"/v2/bench/lazy-blob/blobs/"+d, nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, size-1))
	b.front.Reset()
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	m := rangeMeasure{status: resp.StatusCode}
	switch resp.StatusCode {
	case http.StatusOK:
		if _, err := io.CopyN(io.Discard, resp.Body, from); err != nil {
			b.Fatalf("%s: the whole blob for a range: %v", c.name, err)
		}
	case http.StatusPartialContent:
	default:
		b.Fatalf("%s: a cold range answered %s", c.name, resp.Status)
	}
	first := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		b.Fatal(err)
	}
	m.first = time.Since(start)
	rest, err := io.ReadAll(io.LimitReader(resp.Body, size-from-1))
	m.whole = time.Since(start)
	if err != nil || !bytes.Equal(append(first, rest...), data[from:]) {
		b.Fatalf("%s: the range's bytes are not the blob's (%v)", c.name, err)
	}
	m.upstream = float64(b.front.Bytes("blobs")) / float64(size)
	return m
}

// lazyPullRows: containerd 2.x with the stargz snapshotter pulls an
// eStargz image (a small file and a 48 MiB one) and a file of it is read
// from the mounted layer, a MiB of the big one too: straight from the
// upstream, and through depproxy (configured by `depproxy hosts
// --stargz-config`), each with background fetching off.
func (b *bench) lazyPullRows(runs int) {
	big := make([]byte, 48<<20)
	rand.Read(big)
	files := map[string][]byte{"hello.txt": []byte("hello\n"), "big.bin": big}
	img, layerSize := testenv.EstargzImage(b, files)
	ref, _ := name.ParseReference(b.upstream.Addr+"/bench/lazy:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		b.Fatal(err)
	}
	type lazyMeasure struct {
		pull, read time.Duration
		upstream   float64
	}
	pull := func(through *cache) lazyMeasure {
		hostsDir, cfg := b.TempDir(), filepath.Join(b.TempDir(), "config.toml")
		os.WriteFile(cfg, []byte("noprefetch = true\nno_background_fetch = true\n"), 0o644)
		if through == nil {
			os.MkdirAll(filepath.Join(hostsDir, "docker.io"), 0o755)
			os.WriteFile(filepath.Join(hostsDir, "docker.io", "hosts.toml"), []byte(fmt.Sprintf("server = %q\n", b.front.URL())), 0o644)
			f, _ := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
			fmt.Fprintf(f, "[[resolver.host.\"docker.io\".mirrors]]\nhost = %q\ninsecure = true\n", b.front.Addr)
			f.Close()
		} else if out, err := exec.Command(b.depproxy, "hosts", "--endpoint", "http://"+through.addr(), "--registry", "docker.io",
			"--dir", hostsDir, "--stargz-config", cfg).CombinedOutput(); err != nil {
			b.Fatalf("depproxy hosts: %v\n%s", err, out)
		}
		sgz := testenv.StartStargz(b, cfg)
		ctrd := testenv.StartContainerd(b, "containerd2", 3, sgz.ContainerdConfig(hostsDir))
		b.front.Reset()
		start := time.Now()
		if out, err := ctrd.Crictl(b, "pull", "docker.io/bench/lazy:v1"); err != nil {
			b.Fatalf("crictl pull: %v\n%s", err, out)
		}
		m := lazyMeasure{pull: time.Since(start)}
		sgz.ReadMounted(b, files, "hello.txt", "big.bin", 40<<20)
		m.read = time.Since(start)
		m.upstream = float64(b.front.Bytes("blobs")) / float64(layerSize)
		return m
	}
	fmt.Println("| cache | scenario | pull | first file read | upstream bytes ÷ layer size, by then |")
	fmt.Println("|---|---|---|---|---|")
	for _, kind := range []string{"none (straight from the upstream)", "depproxy fs"} {
		var ms []lazyMeasure
		for r := 0; r < runs; r++ {
			var c *cache
			if kind != "none (straight from the upstream)" {
				c = b.start(kind)
			}
			ms = append(ms, pull(c))
			if c != nil {
				c.stop()
			}
		}
		sort.Slice(ms, func(i, j int) bool { return ms[i].read < ms[j].read })
		m := ms[len(ms)/2]
		fmt.Printf("| %s | containerd + stargz snapshotter, eStargz image (48 MiB layer), cold | %s | %s | %.2f× |\n",
			kind, m.pull.Round(time.Millisecond), m.read.Round(time.Millisecond), m.upstream)
	}
}
