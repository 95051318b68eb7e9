package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/depproxy/depproxy/proxy/share"
	"github.com/depproxy/depproxy/test/testenv"
)

// The sharing rollout: shareNodes simulated nodes in shareZones zones
// pull one cold image at once through three replicas, with and without
// the nodes sharing (proxy/share), in the same run. Links are scaled down
// so that this 2-core machine's loopback (about 2 GB/s in all, shared
// with the caches, MinIO and the checking of every byte) is not what
// bounds the rollout: 1,000 nodes at shareLink each move at most
// 250 MiB/s together.
const (
	shareZones  = 4
	shareLayers = 4
	shareRepo   = "bench/share"
	// shareLink is each node's link, each way (1 Gbit/s scaled down
	// 500×): 1,000 nodes move 250 MiB/s at most, together.
	shareLink = 256 << 10
	// shareReplicaEgress is each replica's link out: three together move
	// 384× a node's link, 0.38× what the nodes' links can take in.
	shareReplicaEgress = 32 << 20
	shareReplicas      = 3
	// shareParallel is how many blobs a node fetches at once
	// (containerd's max_concurrent_downloads).
	shareParallel = 3
	// shareKillEvery: one node in 20 (5%) is killed half way through the
	// per-node bound.
	shareKillEvery = 20
	// shareAgents are the real `depproxy node` processes whose memory is
	// measured.
	shareAgents = 8
)

// pushShare pushes the sharing rollout's image and keeps its blobs, the
// one read-only copy the simulated nodes serve each other from.
func (b *bench) pushShare() error {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for range shareLayers {
		data := make([]byte, b.shareLayerMiB<<20)
		rand.Read(data)
		var err error
		if img, err = mutate.AppendLayers(img, static.NewLayer(data, types.OCILayer)); err != nil {
			return err
		}
	}
	ref, _ := name.ParseReference(b.upstream.Addr+"/"+shareRepo+":"+imageTag, name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		return err
	}
	b.shareBlobs = map[digest.Digest][]byte{}
	cfg, _ := img.RawConfigFile()
	b.shareBlobs[digest.FromBytes(cfg)] = cfg
	layers, _ := img.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		b.shareBlobs[digest.FromBytes(data)] = data
	}
	for _, data := range b.shareBlobs {
		b.shareBytes += int64(len(data))
	}
	return nil
}

// nodeKey is the file of the key the nodes and the sharing cache share.
func (b *bench) nodeKey() string {
	path := filepath.Join(b.root, "node.key")
	if _, err := os.Stat(path); err != nil {
		secret := make([]byte, 32)
		rand.Read(secret)
		if err := os.WriteFile(path, secret, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	return path
}

type shareMeasure struct {
	wall, p50, p99 time.Duration
	egress         float64 // the replicas' blob bytes out ÷ the image
	upstream       float64
	fromPeers      float64
	failed, killed int
	badPeers       int64
}

// shareKind is the cache of the sharing table: three replicas on MinIO
// with their hot tiers, as the rollout table's fastest.
const shareKind = "depproxy minio, hot tier"

// shareRows prints the sharing table: without sharing, with, and with
// one node in 20 killed in the middle, taking turns run by run; medians
// by node p50. Then the real agents' memory.
func (b *bench) shareRows(runs, nodes int) {
	bound := time.Duration(float64(b.shareBytes) / shareLink * float64(time.Second))
	cacheBound := time.Duration(float64(nodes) * float64(b.shareBytes) / (shareReplicas * shareReplicaEgress) * float64(time.Second))
	scenarios := []struct {
		name    string
		sharing bool
		kill    bool
	}{
		{"nodes share (--node-key)", true, false},
		{"nodes share, 5% killed half way", true, true},
		{"without sharing", false, false},
	}
	ms := make([][]shareMeasure, len(scenarios))
	for r := 0; r < runs; r++ {
		for i, s := range scenarios {
			kind := shareKind
			if s.sharing {
				kind += ", sharing"
			}
			c := b.startReplicas(kind, shareReplicas)
			fmt.Fprintf(os.Stderr, "sharing rollout %d/%d: %s\n", r+1, runs, s.name)
			ms[i] = append(ms[i], b.shareRollout(c, nodes, s.sharing, s.kill, bound))
			c.stop()
		}
	}
	fmt.Printf("| cache | scenario | wall time | node p50 | node p99 | p99 ÷ p50 | p50 ÷ per-node bound | cache egress ÷ image | upstream ÷ image | from peers ÷ image | failed pulls |\n")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for i, s := range scenarios {
		m := ms[i]
		sort.Slice(m, func(a, b int) bool { return m[a].p50 < m[b].p50 })
		x := m[len(m)/2]
		failed := fmt.Sprintf("%d of %d", x.failed, nodes-x.killed)
		if x.killed > 0 {
			failed += fmt.Sprintf(" (%d killed)", x.killed)
		}
		fmt.Printf("| %s%s | %d nodes, %d zones, %d MiB image, %s | %s | %s | %s | %.2f× | %.2f× | %.2f× | %.2f× | %.2f× | %s |\n",
			shareKind, replicaSuffix, nodes, shareZones, b.shareBytes>>20, s.name,
			x.wall.Round(10*time.Millisecond), x.p50.Round(10*time.Millisecond), x.p99.Round(10*time.Millisecond),
			float64(x.p99)/float64(x.p50), float64(x.p50)/float64(bound), x.egress, x.upstream, x.fromPeers, failed)
	}
	fmt.Printf("\nPer-node bound (image ÷ node link): %s; without sharing, N × image ÷ the replicas' egress: %s.\n\n",
		bound.Round(10*time.Millisecond), cacheBound.Round(10*time.Millisecond))
	peak, peers := b.agentMemory()
	fmt.Println("| agent | scenario | peak RSS of one agent (the most of them) | bytes the agents got from peers ÷ image |")
	fmt.Println("|---|---|---|---|")
	fmt.Printf("| depproxy node --store --share-listen | %d real agents in 2 zones pull the %d MiB image at once through one sharing cache | %d MiB | %.2f× |\n",
		shareAgents, b.shareBytes>>20, peak>>20, peers)
}

// shareRollout: every node pulls the image at once, spread over the
// replicas' modelled links as a Service spreads them.
func (b *bench) shareRollout(c *cache, nodes int, sharing, kill bool, bound time.Duration) shareMeasure {
	transport := &http.Transport{MaxIdleConnsPerHost: 4096, ResponseHeaderTimeout: time.Minute}
	defer transport.CloseIdleConnections()
	var fronts []*egressFront
	for _, addr := range c.addrs {
		f, err := startEgress("http://"+addr, shareReplicaEgress, transport)
		if err != nil {
			b.Fatal(err)
		}
		defer f.srv.Close()
		fronts = append(fronts, f)
	}
	var secret []byte
	if sharing {
		var err error
		if secret, err = os.ReadFile(b.nodeKey()); err != nil {
			b.Fatal(err)
		}
	}
	var blobs []digest.Digest
	for d := range b.shareBlobs {
		blobs = append(blobs, d)
	}
	sort.Slice(blobs, func(i, j int) bool { return len(b.shareBlobs[blobs[i]]) < len(b.shareBlobs[blobs[j]]) })
	ns := make([]*simNode, nodes)
	for i := range ns {
		var key *share.Key
		if sharing {
			var err error
			if key, err = share.NewKey(secret); err != nil {
				b.Fatal(err)
			}
		}
		n, err := newSimNode(fmt.Sprintf("node-%04d", i), fmt.Sprintf("zone-%c", 'a'+i%shareZones), fronts[i%len(fronts)].url, key, b.shareBlobs, shareLink)
		if err != nil {
			b.Fatal(err)
		}
		ns[i] = n
		defer n.stop()
	}
	b.front.Reset()
	killed := map[int]bool{}
	if kill {
		for i := shareKillEvery / 2; i < nodes; i += shareKillEvery {
			killed[i] = true
		}
		t := time.AfterFunc(bound/2, func() {
			for i := range killed {
				ns[i].stop()
			}
		})
		defer t.Stop()
	}
	times := make([]time.Duration, nodes)
	errs := make([]error, nodes)
	start := time.Now()
	var wg sync.WaitGroup
	for i, n := range ns {
		wg.Go(func() {
			t0 := time.Now()
			errs[i] = n.pullImage(shareRepo, blobs)
			times[i] = time.Since(t0)
		})
	}
	wg.Wait()
	wall := time.Since(start)
	m := shareMeasure{wall: wall, killed: len(killed), upstream: float64(b.front.Bytes("blobs")) / float64(b.shareBytes)}
	var done []time.Duration
	var fromPeers int64
	for i, n := range ns {
		fromPeers += n.fromPeers.Load()
		m.badPeers += n.badPeers.Load()
		switch {
		case killed[i]:
		case errs[i] != nil:
			m.failed++
			if m.failed <= 3 {
				fmt.Fprintf(os.Stderr, "%s: %v\n", n.self.Name, errs[i])
			}
		default:
			done = append(done, times[i])
		}
	}
	for _, f := range fronts {
		m.egress += float64(f.blobs.Load())
	}
	m.egress /= float64(b.shareBytes)
	m.fromPeers = float64(fromPeers) / float64(b.shareBytes)
	sort.Slice(done, func(i, j int) bool { return done[i] < done[j] })
	if len(done) == 0 {
		b.Fatalf("sharing rollout: no node completed its pull: %v", errs[0])
	}
	m.p50, m.p99 = done[len(done)/2], done[len(done)*99/100]
	why := map[string]int64{}
	for _, n := range ns {
		n.why.Range(func(k, v any) bool { why[k.(string)] += v.(*atomic.Int64).Load(); return true })
	}
	fmt.Fprintf(os.Stderr, "  peers that failed, by why: %v\n", why)
	fmt.Fprintf(os.Stderr, "  wall %s p50 %s p99 %s egress %.2f× upstream %.2f× peers %.2f× failed %d bad peers reported %d\n",
		wall.Round(10*time.Millisecond), m.p50.Round(10*time.Millisecond), m.p99.Round(10*time.Millisecond), m.egress, m.upstream, m.fromPeers, m.failed, m.badPeers)
	return m
}

// pullImage is a runtime's pull through the node: the manifest (which
// the agent passes to the cache), then the blobs.
func (n *simNode) pullImage(repo string, blobs []digest.Digest) error {
	req, _ := http.NewRequestWithContext(n.ctx, http.MethodGet, n.cache+"/v2/"+repo+"/manifests/"+imageTag, nil)
	req.Header.Set("Accept", string(types.OCIManifestSchema1))
	resp, err := n.cacheClient.Do(req)
	if err != nil {
		return err
	}
	m, err := v1.ParseManifest(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("manifest: %s %v", resp.Status, err)
	}
	if len(m.Layers)+1 != len(blobs) {
		return fmt.Errorf("manifest: %d layers, want %d", len(m.Layers), len(blobs)-1)
	}
	return n.pull(repo, blobs)
}

// egressFront is a replica's modelled link out: a reverse proxy whose
// answers leave through a token bucket, counting the blob bytes.
type egressFront struct {
	url   string
	srv   *http.Server
	limit *rate.Limiter
	blobs atomic.Int64
}

func startEgress(target string, bytesPerSecond int, transport http.RoundTripper) (*egressFront, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &egressFront{url: "http://" + ln.Addr().String(), limit: rate.NewLimiter(rate.Limit(bytesPerSecond), simChunk)}
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) }, Transport: transport}
	f.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lw := &limitedWriter{ResponseWriter: w, r: r, f: f, blob: strings.Contains(r.URL.Path, "/blobs/")}
		proxy.ServeHTTP(lw, r)
	})}
	go f.srv.Serve(ln)
	return f, nil
}

type limitedWriter struct {
	http.ResponseWriter
	r      *http.Request
	f      *egressFront
	blob   bool
	status int
}

func (w *limitedWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

func (w *limitedWriter) Write(p []byte) (int, error) {
	var n int
	for len(p) > 0 {
		k := min(len(p), simChunk)
		if err := w.f.limit.WaitN(w.r.Context(), k); err != nil {
			return n, err
		}
		m, err := w.ResponseWriter.Write(p[:k])
		n += m
		if w.blob && (w.status == 0 || w.status == http.StatusOK) {
			w.f.blobs.Add(int64(m))
		}
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

func (w *limitedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// agentMemory runs shareAgents real `depproxy node` agents, sharing,
// each pulling the image through its own local mirror at once from one
// sharing cache: the most any agent's memory peaked at, and what the
// agents got from each other ÷ the image.
func (b *bench) agentMemory() (int64, float64) {
	c := b.startReplicas("depproxy fs, sharing", 1)
	defer c.stop()
	key := b.nodeKey()
	type agent struct {
		cmd        *exec.Cmd
		local, ops string
	}
	var agents []*agent
	for i := range shareAgents {
		a := &agent{local: testenv.FreeAddr(b), ops: testenv.FreeAddr(b)}
		peer := testenv.FreeAddr(b)
		a.cmd = exec.Command(b.depproxy, "node", "--endpoint", "http://"+c.addr(), "--registry", "docker.io",
			"--dir", b.TempDir(), "--interval", "200ms", "--listen", a.ops,
			"--store", b.TempDir(), "--store-size", "1Gi", "--local-listen", a.local,
			"--share-listen", peer, "--advertise", "http://"+peer,
			"--node-name", fmt.Sprintf("agent-%d", i), "--zone", fmt.Sprintf("zone-%c", 'a'+i%2), "--node-key", key)
		logf, _ := os.Create(filepath.Join(b.root, fmt.Sprintf("agent-%d.log", i)))
		a.cmd.Stdout, a.cmd.Stderr = logf, logf
		if err := a.cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { a.cmd.Process.Kill(); a.cmd.Wait(); logf.Close() }()
		agents = append(agents, a)
	}
	for _, a := range agents {
		for i := 0; ; i++ {
			if resp, err := http.Get("http://" + a.local + "/v2/"); err == nil {
				resp.Body.Close()
				break
			}
			if i > 400 {
				b.Fatalf("agent %s did not start", a.local)
			}
			time.Sleep(25 * time.Millisecond)
		}
		testenv.ResetPeakRSS(a.cmd.Process.Pid)
	}
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Go(func() {
			client := &http.Client{}
			get := func(path string, accept string) []byte {
				req, _ := http.NewRequest(http.MethodGet, "http://"+a.local+"/v2/"+shareRepo+path, nil)
				if accept != "" {
					req.Header.Set("Accept", accept)
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Fatalf("agent %s: %s: %v", a.local, path, err)
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Fatalf("agent %s: %s: %s %v", a.local, path, resp.Status, err)
				}
				if accept == "" && digest.FromBytes(body).String() != strings.TrimPrefix(path, "/blobs/") {
					b.Fatalf("agent %s: %s: wrong bytes", a.local, path)
				}
				return body
			}
			m, err := v1.ParseManifest(bytes.NewReader(get("/manifests/"+imageTag, string(types.OCIManifestSchema1))))
			if err != nil {
				b.Fatal(err)
			}
			get("/blobs/"+m.Config.Digest.String(), "")
			for _, l := range m.Layers {
				get("/blobs/"+l.Digest.String(), "")
			}
		})
	}
	wg.Wait()
	var peak int64
	var peers float64
	for _, a := range agents {
		peak = max(peak, testenv.PeakRSS(a.cmd.Process.Pid))
		peers += metric(b, "http://"+a.ops+"/metrics", `depproxy_node_bytes_total{source="peer"}`)
	}
	return peak, peers / float64(b.shareBytes)
}

// metric reads one sample of a Prometheus text page (0 when absent).
func metric(b *bench, url, series string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}
