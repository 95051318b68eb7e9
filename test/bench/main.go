// Command bench measures depproxy against CNCF Distribution in proxy mode,
// side by side in one run, on loopback: the same upstream (a Distribution
// registry behind a Docker-Hub-like token challenge), the same MinIO.
//
//	go run ./test/bench [-runs 3]
//
// It prints a Markdown table; medians over the runs.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/peers"
	"github.com/depproxy/depproxy/proxy/token"
	"github.com/depproxy/depproxy/test/testenv"
)

const (
	layers    = 40
	layerSize = 2 << 20
	bigBlob   = 256 << 20
	warmPulls = 10
	imageRepo = "bench/forty"
	blobRepo  = "bench/big"
	imageTag  = "v1"
)

func main() {
	runs := flag.Int("runs", 3, "repetitions of each measurement; the table shows medians")
	warmOnly := flag.Bool("warm-only", false, "only the warm pulls")
	faultsOnly := flag.Bool("faults-only", false, "only the cold pulls with the storage up and hung")
	tagsOnly := flag.Bool("tags-only", false, "only the warm tag table (the audit log on and off among it)")
	rolloutOnly := flag.Bool("rollout-only", false, "only the rollout table: 256 nodes pulling one image through three replicas, cold then warm")
	keepOnly := flag.Bool("keep-only", false, "only the manager's memory with 0, 1,000 and 5,000 Pods of a keeping cache (envtest)")
	afterFillOnly := flag.Bool("after-fill-only", false, "only the warm reads right after a cold fill (while the blob is stored) against MinIO's direct GET")
	lazyOnly := flag.Bool("lazy-only", false, "only the lazy-pulling tables: a cold tail range on a slow upstream, and the stargz snapshotter's pull of an eStargz image")
	largeOnly := flag.Bool("large-only", false, "only the 8 GiB blob rows: cold through the cache against the upstream itself, and cut three times")
	verifyOnly := flag.Bool("verify-only", false, "only the verification table: a cosign-signed image pulled cold (15 fresh caches each) and warm, with and without --verify-policy in enforce mode")
	helmOnly := flag.Bool("helm-only", false, "only the Helm table: helm pull of a warm chart through the cache against the classic repository itself")
	shareOnly := flag.Bool("share-only", false, "only the sharing table: 1,000 simulated nodes in 4 zones pull one cold image through three replicas, with and without sharing, and a real agent's memory")
	shareNodes := flag.Int("share-nodes", 1000, "how many simulated nodes the sharing table's rollouts have")
	shareLayerMiB := flag.Int("share-layer-mib", 4, "the sharing rollout image's layer size in MiB (4 layers: 4 is a 16 MiB image, 16 the issue's 64 MiB, a rollout four times as long)")
	shareRuns := flag.Int("share-runs", 1, "rollouts of each kind in the sharing table (each is 1,000 nodes' samples, and takes minutes); the table shows the one with the median node p50")
	plotPath := flag.String("plot", "docs/bench.png", "where to write the plot of cold pulls by concurrent clients (empty: none)")
	flag.Parse()
	b := newBench()
	defer b.cleanup()
	b.plot = *plotPath
	b.shareOnly, b.shareNodes, b.shareRuns, b.shareLayerMiB = *shareOnly, *shareNodes, *shareRuns, *shareLayerMiB
	b.helmOnly, b.largeOnly, b.verifyOnly = *helmOnly, *largeOnly, *verifyOnly
	b.faultsOnly, b.tagsOnly, b.rolloutOnly, b.keepOnly, b.lazyOnly, b.afterFillOnly = *faultsOnly, *tagsOnly, *rolloutOnly, *keepOnly, *lazyOnly, *afterFillOnly
	if err := b.run(*runs, *warmOnly); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		b.cleanup()
		os.Exit(1)
	}
}

// bench implements testenv.T for a program: failures end it, cleanups run
// at the end.
type bench struct {
	root     string
	cleanups []func()
	mu       sync.Mutex

	upstream *testenv.Registry
	front    *testenv.Front
	minio    *testenv.MinIO
	depproxy string // binary
	image    []v1.Hash
	imgBytes int64
	blob     v1.Hash
	plot     string // the PNG's path
	// faultsOnly runs the fault rows alone; tagsOnly the warm tag table;
	// rolloutOnly the rollout table; keepOnly the manager's memory;
	// lazyOnly the lazy-pulling tables; afterFillOnly the reads right
	// after a cold fill.
	faultsOnly, tagsOnly, rolloutOnly, keepOnly, lazyOnly, afterFillOnly bool
	rolloutBytes                                                         int64 // the rollout image's blobs, both platforms
	// shareOnly runs the sharing table alone, with shareNodes nodes; its
	// image's blobs (the one copy simulated nodes serve from) and size.
	shareOnly  bool
	shareNodes int
	shareRuns  int
	// shareLayerMiB is the size of each of the image's 4 layers.
	shareLayerMiB int
	shareBlobs    map[digest.Digest][]byte
	shareBytes    int64
	// helmOnly runs the Helm table alone; charts is its classic
	// repository's URL.
	helmOnly bool
	charts   string
	// largeOnly runs the 8 GiB blob rows alone.
	largeOnly bool
	// verifyOnly runs the verification table alone; verifyPolicy is the
	// --verify-policy of the kinds that verify.
	verifyOnly   bool
	verifyPolicy string
}

// plotClients are the points of the plot.
var plotClients = []int{1, 8, 32, 64}

func newBench() *bench {
	root, err := os.MkdirTemp("", "depproxy-bench-")
	if err != nil {
		panic(err)
	}
	return &bench{root: root}
}

func (b *bench) Helper()           {}
func (b *bench) Fatal(args ...any) { b.Fatalf("%s", fmt.Sprint(args...)) }
func (b *bench) Fatalf(f string, args ...any) {
	b.cleanup()
	fmt.Fprintf(os.Stderr, f+"\n", args...)
	os.Exit(1)
}
func (b *bench) Cleanup(f func()) { b.cleanups = append(b.cleanups, f) }
func (b *bench) TempDir() string {
	d, err := os.MkdirTemp(b.root, "")
	if err != nil {
		b.Fatal(err)
	}
	return d
}

func (b *bench) cleanup() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	b.cleanups = nil
	os.RemoveAll(b.root)
}

// cache is one pull-through cache under test, started fresh (empty):
// one process, or several replicas sharing one bucket.
type cache struct {
	name   string
	bucket string   // on MinIO
	addrs  []string // a replica each; clients spread over them
	pids   []int
	stop   func()
}

func (c *cache) addr() string { return c.addrs[0] }

func (c *cache) resetRSS() {
	for _, pid := range c.pids {
		testenv.ResetPeakRSS(pid)
	}
}

// peakRSS is the replicas' peaks, summed.
func (c *cache) peakRSS() int64 {
	var sum int64
	for _, pid := range c.pids {
		sum += testenv.PeakRSS(pid)
	}
	return sum
}

func (b *bench) run(runs int, warmOnly bool) error {
	if b.keepOnly {
		return b.keepMemoryRows()
	}
	fmt.Fprintln(os.Stderr, "starting upstream, MinIO, building depproxy")
	b.upstream = testenv.StartRegistry(b)
	b.front = testenv.StartFront(b, b.upstream.URL())
	b.front.RequireToken()
	b.minio = testenv.StartMinIO(b)
	b.depproxy = filepath.Join(b.root, "depproxy")
	if out, err := exec.Command("go", "build", "-o", b.depproxy, "github.com/depproxy/depproxy/proxy/cmd/depproxy").CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	if b.helmOnly {
		b.helmRows(runs)
		return nil
	}
	if b.verifyOnly {
		b.verifyRows(runs)
		return nil
	}
	if b.shareOnly {
		if err := b.pushShare(); err != nil {
			return err
		}
		b.shareRows(b.shareRuns, b.shareNodes)
		return nil
	}
	if err := b.pushFixtures(); err != nil {
		return err
	}

	if b.faultsOnly {
		printRows(b.hungStorageRows(runs))
		return nil
	}
	if b.tagsOnly {
		b.warmTagTable(runs)
		return nil
	}
	if b.lazyOnly {
		b.lazyRows(runs)
		return nil
	}
	if b.afterFillOnly {
		printRows(b.afterFillRows(runs))
		return nil
	}
	if b.largeOnly {
		printRows(b.largeRows())
		return nil
	}
	if err := b.pushRollout(); err != nil {
		return err
	}
	if b.rolloutOnly {
		b.rolloutRows(runs)
		return nil
	}
	kinds := []string{"depproxy fs", "distribution fs",
		"depproxy minio", "distribution minio, streamed",
		"depproxy minio, redirect", "distribution minio, redirect",
		"depproxy minio, hot tier"} // the last: warm rows only
	var rows []string
	coldMedian := func(kind, what string, clients int) measure {
		var ms []measure
		for r := 0; r < runs; r++ {
			c := b.startReplicas(strings.TrimSuffix(kind, replicaSuffix), replicasOf(kind))
			ms = append(ms, b.cold(c, what, clients))
			c.stop()
		}
		return median(ms)
	}
	plotted := []series{{name: "depproxy", byCli: map[int]measure{}}, {name: "Distribution (proxy mode)", byCli: map[int]measure{}}}
	for _, clients := range plotClients {
		if warmOnly {
			break
		}
		for _, what := range []string{"40-layer image", "256 MiB blob"} {
			if clients != 8 && clients != 32 && what != "40-layer image" {
				continue // the plot's extra points: the image only
			}
			for i, kind := range append(kinds[:2:2], replicated...) {
				if clients != 8 && clients != 32 && i >= 2 {
					continue
				}
				m := coldMedian(kind, what, clients)
				if what == "40-layer image" && i < 2 {
					plotted[i].byCli[clients] = m
				}
				if clients == 8 || clients == 32 {
					rows = append(rows, row(kind, fmt.Sprintf("%d cold pulls, %s", clients, what), m))
				}
			}
		}
	}
	if !warmOnly && b.plot != "" {
		if err := writePlot(b.plot, "cold pulls of a 40-layer image (80 MiB), filesystem storage, medians of "+strconv.Itoa(runs), plotted); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "plot written to", b.plot)
	}
	for _, kind := range kinds {
		var ms []measure
		for r := 0; r < runs; r++ {
			c := b.start(kind)
			ms = append(ms, b.warm(c))
			c.stop()
		}
		rows = append(rows, row(kind, fmt.Sprintf("warm pull, 256 MiB blob ×%d", warmPulls), median(ms)))
	}
	rows = append(rows, b.warmReplicaRows(runs)...)
	rows = append(rows, b.afterFillRows(runs)...)
	if !warmOnly {
		rows = append(rows, b.hungStorageRows(runs)...)
		rows = append(rows, b.containerdRows(runs)...)
		rows = append(rows, b.largeRows()...)
	}
	printRows(rows)
	fmt.Println()
	b.warmTagTable(runs)
	if !warmOnly {
		fmt.Println()
		b.rolloutRows(runs)
		fmt.Println()
		if err := b.pushShare(); err != nil {
			return err
		}
		b.shareRows(b.shareRuns, b.shareNodes)
		fmt.Println()
		b.lazyRows(runs)
		fmt.Println()
		b.helmRows(runs)
		fmt.Println()
		b.verifyRows(runs)
		fmt.Println()
		return b.keepMemoryRows()
	}
	return nil
}

// warmTagTable is the warm tag requests table. The kinds take turns run
// by run, so that the audit log's cost is measured against the same
// machine's moment.
func (b *bench) warmTagTable(runs int) {
	fmt.Println("| cache | scenario | requests/s | p50 | p99 | upstream manifest requests |")
	fmt.Println("|---|---|---|---|---|---|")
	kinds := []string{"depproxy minio", "depproxy minio, audit log on", "distribution minio, streamed"}
	ts := map[string][]tagMeasure{}
	for r := 0; r < runs; r++ {
		for _, kind := range kinds {
			c := b.start(kind)
			ts[kind] = append(ts[kind], b.warmTag(c))
			c.stop()
		}
	}
	for _, kind := range kinds {
		ms := ts[kind]
		sort.Slice(ms, func(i, j int) bool { return ms[i].perSecond < ms[j].perSecond })
		m := ms[len(ms)/2]
		fmt.Printf("| %s | warm tag manifest, %d clients × %d, within the recheck interval | %.0f | %s | %s | %d |\n",
			kind, tagClients, tagRequests, m.perSecond, m.p50.Round(10*time.Microsecond), m.p99.Round(10*time.Microsecond), m.upstream)
	}
}

// printRows prints the main table.
func printRows(rows []string) {
	fmt.Println("| cache | scenario | wall time | MB/s | upstream bytes ÷ size | upstream manifest GETs | token fetches | peak RSS |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

// replicated are the kinds run as three replicas sharing one bucket,
// clients spread over them: depproxy's know each other; Distribution's
// are three proxies on one bucket, as Gardener's HA mode runs them.
var replicated = []string{"depproxy minio" + replicaSuffix, "distribution minio, streamed" + replicaSuffix}

const replicaSuffix = " ×3 replicas"

func replicasOf(kind string) int {
	if strings.HasSuffix(kind, replicaSuffix) {
		return 3
	}
	return 1
}

// warmReplicaRows: a cached 256 MiB blob through three depproxy
// replicas, from the replica that owns it and from another, and MinIO's
// own speed for the stored object, in the same run.
func (b *bench) warmReplicaRows(runs int) []string {
	var owner, other, direct []measure
	for r := 0; r < runs; r++ {
		c := b.startReplicas("depproxy minio", 3)
		var urls []string
		for _, a := range c.addrs {
			urls = append(urls, "http://"+a)
		}
		ownerURL := peers.NewRing(urls[0], urls).Owner(peers.BlobKey("docker.io", digest.Digest(b.blob.String())))
		ownerAddr, otherAddr := strings.TrimPrefix(ownerURL, "http://"), ""
		for _, a := range c.addrs {
			if a != ownerAddr {
				otherAddr = a
			}
		}
		b.fetchAt(c.name, otherAddr, blobRepo, b.blob) // cached through the owner
		time.Sleep(3 * time.Second)                    // stored in the background after serving
		b.front.Reset()
		timed := func(get func() int64) measure {
			start := time.Now()
			var total int64
			for i := 0; i < warmPulls; i++ {
				total += get()
			}
			return measure{wall: time.Since(start), bytes: total, upstream: float64(b.front.Bytes("blobs")) / bigBlob}
		}
		owner = append(owner, timed(func() int64 { return b.fetchAt(c.name, ownerAddr, blobRepo, b.blob) }))
		other = append(other, timed(func() int64 { return b.fetchAt(c.name, otherAddr, blobRepo, b.blob) }))
		direct = append(direct, timed(func() int64 { return b.minioGet(c, "cache/blobs/sha256/"+b.blob.Hex) }))
		c.stop()
	}
	return []string{
		row("depproxy minio"+replicaSuffix, fmt.Sprintf("warm pull via the blob's owner, 256 MiB blob ×%d", warmPulls), median(owner)),
		row("depproxy minio"+replicaSuffix, fmt.Sprintf("warm pull via another replica, 256 MiB blob ×%d", warmPulls), median(other)),
		row("MinIO itself", fmt.Sprintf("direct GET of the stored blob ×%d", warmPulls), median(direct)),
	}
}

// hungStorageRows: 16 cold pulls of the 40-layer image through depproxy
// on MinIO, with MinIO up and with MinIO stopped where it stands
// (SIGSTOP: connections open, nothing answers), which the cache must
// take for an outage and pass through.
func (b *bench) hungStorageRows(runs int) []string {
	const clients = 16
	var up, hung []measure
	for r := 0; r < runs; r++ {
		c := b.start("depproxy minio")
		up = append(up, b.cold(c, "40-layer image", clients))
		c.stop()
		c = b.start("depproxy minio")
		b.minio.Pause()
		hung = append(hung, b.cold(c, "40-layer image", clients))
		b.minio.Resume()
		c.stop()
	}
	return []string{
		row("depproxy minio", fmt.Sprintf("%d cold pulls, 40-layer image, storage up", clients), median(up)),
		row("depproxy minio", fmt.Sprintf("%d cold pulls, 40-layer image, storage hung (SIGSTOP)", clients), median(hung)),
	}
}

// minioGet reads an object of the cache's bucket straight from MinIO,
// as fast as the client here can.
func (b *bench) minioGet(c *cache, key string) int64 {
	mc, err := minio.New(b.minio.Addr, &minio.Options{Creds: b.minio.Credentials()})
	if err != nil {
		b.Fatal(err)
	}
	obj, err := mc.GetObject(context.Background(), c.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer obj.Close()
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{obj}, buf)
	if err != nil {
		b.Fatalf("MinIO GET %s: %v", key, err)
	}
	return n
}

const (
	tagClients  = 32
	tagRequests = 200 // per client
)

type tagMeasure struct {
	perSecond float64
	p50, p99  time.Duration
	upstream  int
}

// warmTag: the tag is cached and confirmed; then tagClients clients ask
// for it tagRequests times each, as a mirror's nodes do.
func (b *bench) warmTag(c *cache) tagMeasure {
	return b.warmTagBy(func(client *http.Client) { b.getManifest(c, client) })
}

// warmTagBy is warmTag for the manifest get fetches.
func (b *bench) warmTagBy(get func(*http.Client)) tagMeasure {
	// Keep-alive for every client, as nodes' runtimes keep theirs.
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: tagClients}}
	get(client)
	b.front.Reset()
	lat := make([]time.Duration, tagClients*tagRequests)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < tagClients; i++ {
		wg.Go(func() {
			for j := 0; j < tagRequests; j++ {
				t0 := time.Now()
				get(client)
				lat[i*tagRequests+j] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	wall := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return tagMeasure{perSecond: float64(len(lat)) / wall.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100],
		upstream: b.front.Count(http.MethodGet, "manifests") + b.front.Count(http.MethodHead, "manifests")}
}

func (b *bench) pushFixtures() error {
	fmt.Fprintln(os.Stderr, "pushing a 40-layer image and a 256 MiB blob")
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for i := 0; i < layers; i++ {
		data := make([]byte, layerSize)
		rand.Read(data)
		var err error
		if img, err = mutate.AppendLayers(img, static.NewLayer(data, types.OCILayer)); err != nil {
			return err
		}
	}
	ref, _ := name.ParseReference(b.upstream.Addr+"/"+imageRepo+":"+imageTag, name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		return err
	}
	m, _ := img.Manifest()
	b.image = append(b.image, m.Config.Digest)
	b.imgBytes = m.Config.Size
	for _, l := range m.Layers {
		b.image = append(b.image, l.Digest)
		b.imgBytes += l.Size
	}
	data := make([]byte, bigBlob)
	rand.Read(data)
	l := static.NewLayer(data, types.OCILayer)
	repo, _ := name.NewRepository(b.upstream.Addr+"/"+blobRepo, name.Insecure)
	if err := remote.WriteLayer(repo, l); err != nil {
		return err
	}
	b.blob, _ = l.Digest()
	return nil
}

// start launches an empty cache of this kind.
func (b *bench) start(kind string) *cache { return b.startReplicas(kind, 1) }

// startReplicas launches n replicas of an empty cache of this kind,
// sharing one bucket (or, on the filesystem, one directory); depproxy's
// replicas know each other (--peers), Distribution's cannot.
func (b *bench) startReplicas(kind string, n int) *cache {
	dir := b.TempDir()
	bucket := "b" + strconv.FormatInt(time.Now().UnixNano(), 36)
	mc, err := minio.New(b.minio.Addr, &minio.Options{Creds: b.minio.Credentials()})
	if err != nil {
		b.Fatal(err)
	}
	if strings.Contains(kind, "minio") {
		if err := mc.MakeBucket(context.Background(), bucket, minio.MakeBucketOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	c := &cache{name: kind, bucket: bucket}
	var peers []string
	for i := 0; i < n; i++ {
		c.addrs = append(c.addrs, testenv.FreeAddr(b))
		peers = append(peers, "http://"+c.addrs[i])
	}
	key := filepath.Join(dir, "token.pem")
	_, pem, err := token.NewSigningKey()
	if err != nil {
		b.Fatal(err)
	}
	os.WriteFile(key, pem, 0o600)
	var stops []func()
	c.stop = func() {
		for _, stop := range stops {
			stop()
		}
	}
	for i, addr := range c.addrs {
		var cmd *exec.Cmd
		switch {
		case strings.HasPrefix(kind, "depproxy"):
			upstream := "docker.io=" + b.front.URL()
			if strings.Contains(kind, "helm") {
				upstream = "charts.bench=helm+" + b.charts
			}
			args := []string{"serve", "--listen", addr, "--metrics-listen", testenv.FreeAddr(b), "--upstream", upstream,
				"--recheck-interval", "1m", "--storage", filepath.Join(dir, "data")}
			if strings.Contains(kind, "minio") {
				args = append(args[:len(args)-1], "s3://"+bucket+"/cache", "--s3-endpoint", b.minio.Addr, "--s3-insecure")
			}
			if strings.Contains(kind, "redirect") {
				args = append(args, "--s3-redirect")
			}
			if strings.Contains(kind, "verify") {
				args = append(args, "--verify-policy", b.verifyPolicy)
			}
			if strings.Contains(kind, "audit") {
				args = append(args, "--audit-log", filepath.Join(dir, "audit.log"))
			}
			if strings.Contains(kind, "hot tier") {
				args = append(args, "--hot-dir", filepath.Join(dir, fmt.Sprintf("hot-%d", i)), "--hot-size", "4Gi")
			}
			if strings.Contains(kind, "sharing") {
				args = append(args, "--node-key", b.nodeKey())
			}
			if n > 1 {
				args = append(args, "--peers", strings.Join(peers, ","), "--advertise", peers[i], "--token-key", key)
			}
			cmd = exec.Command(b.depproxy, args...)
			cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+b.minio.AccessKey, "AWS_SECRET_ACCESS_KEY="+b.minio.SecretKey)
		default:
			storage := fmt.Sprintf("{filesystem: {rootdirectory: %s}}", filepath.Join(dir, "data"))
			if strings.Contains(kind, "minio") {
				// Distribution redirects to presigned URLs unless told not to.
				storage = fmt.Sprintf("{s3: {accesskey: %s, secretkey: %s, region: us-east-1, regionendpoint: 'http://%s', bucket: %s, forcepathstyle: true, secure: false, rootdirectory: /cache}, redirect: {disable: %t}}",
					b.minio.AccessKey, b.minio.SecretKey, b.minio.Addr, bucket, !strings.Contains(kind, "redirect"))
			}
			cfg := fmt.Sprintf("version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: %s\nhttp: {addr: %s}\nproxy: {remoteurl: %s}\n",
				storage, addr, b.front.URL())
			path := filepath.Join(dir, fmt.Sprintf("config-%d.yml", i))
			os.WriteFile(path, []byte(cfg), 0o644)
			cmd = exec.Command(testenv.Tool(b, "registry"), "serve", path)
		}
		logf, _ := os.Create(filepath.Join(dir, fmt.Sprintf("log-%d", i)))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		c.pids = append(c.pids, cmd.Process.Pid)
		stops = append(stops, func() {
			cmd.Process.Kill()
			cmd.Wait()
			logf.Close()
		})
		for i := 0; ; i++ {
			if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
				resp.Body.Close()
				break
			}
			if i > 400 {
				log, _ := os.ReadFile(logf.Name())
				c.stop()
				b.Fatalf("%s did not start:\n%s", kind, log)
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
	b.front.Reset()
	return c
}

type measure struct {
	wall     time.Duration
	bytes    int64 // bytes the clients got
	upstream float64
	manGETs  int
	tokens   int
	rss      int64
}

// cold: clients pull at once from an empty cache.
func (b *bench) cold(c *cache, what string, clients int) measure {
	c.resetRSS()
	size := b.imgBytes
	if what == "256 MiB blob" {
		size = bigBlob
	}
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total int64
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var n int64
			addr := c.addrs[i%len(c.addrs)]
			if what == "256 MiB blob" {
				n = b.fetchAt(c.name, addr, blobRepo, b.blob)
			} else {
				n = b.pullImage(c, addr)
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	if total != size*int64(clients) {
		b.Fatalf("%s: clients got %d bytes, want %d", c.name, total, size*int64(clients))
	}
	return measure{
		wall:     wall,
		bytes:    total,
		upstream: float64(b.front.Bytes("blobs")) / float64(size),
		manGETs:  b.front.Count("GET", "manifests"),
		tokens:   b.front.Count("GET", "token"),
		rss:      c.peakRSS(),
	}
}

// warm: the blob is cached, then pulled warmPulls times in a row.
func (b *bench) warm(c *cache) measure {
	b.fetch(c, blobRepo, b.blob)
	waitCached := time.Now().Add(time.Minute)
	for time.Now().Before(waitCached) {
		b.front.Reset()
		b.fetch(c, blobRepo, b.blob)
		if b.front.Count("GET", "blobs") == 0 {
			break
		}
	}
	// Both caches store in the background after serving: let that end.
	time.Sleep(3 * time.Second)
	c.resetRSS()
	start := time.Now()
	var total int64
	for i := 0; i < warmPulls; i++ {
		total += b.fetch(c, blobRepo, b.blob)
	}
	return measure{wall: time.Since(start), bytes: total, upstream: float64(b.front.Bytes("blobs")) / bigBlob,
		manGETs: b.front.Count("GET", "manifests"), tokens: b.front.Count("GET", "token"), rss: c.peakRSS()}
}

// getManifest fetches the image's tag manifest.
func (b *bench) getManifest(c *cache, client *http.Client) { b.getManifestAt(c, c.addr(), client) }

func (b *bench) getManifestAt(c *cache, addr string, client *http.Client) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/"+imageRepo+"/manifests/"+imageTag, nil)
	req.Header.Set("Accept", string(types.OCIManifestSchema1))
	resp, err := client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("%s: manifest: %s", c.name, resp.Status)
	}
}

func (b *bench) pullImage(c *cache, addr string) int64 {
	b.getManifestAt(c, addr, http.DefaultClient)
	var n int64
	for _, d := range b.image {
		n += b.fetchAt(c.name, addr, imageRepo, d)
	}
	return n
}

func (b *bench) fetch(c *cache, repo string, d v1.Hash) int64 {
	return b.fetchAt(c.name, c.addr(), repo, d)
}

func (b *bench) fetchAt(name, addr, repo string, d v1.Hash) int64 {
	resp, err := http.Get("http://" + addr + "/v2/" + repo + "/blobs/" + d.String())
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	// Large reads, so that the client (on the same two cores) costs the
	// servers as little as it can.
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{resp.Body}, buf)
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("%s: blob %s: %s %v", name, d, resp.Status, err)
	}
	return n
}

func median(ms []measure) measure {
	sort.Slice(ms, func(i, j int) bool { return ms[i].wall < ms[j].wall })
	m := ms[len(ms)/2]
	rss := []int64{}
	for _, x := range ms {
		rss = append(rss, x.rss)
	}
	sort.Slice(rss, func(i, j int) bool { return rss[i] < rss[j] })
	m.rss = rss[len(rss)/2]
	return m
}

func row(kind, scenario string, m measure) string {
	mbs := float64(m.bytes) / (1 << 20) / m.wall.Seconds()
	rss := "—" // not measured: the client's wall time is the point
	if m.rss > 0 {
		rss = fmt.Sprintf("%d MiB", m.rss>>20)
	}
	return fmt.Sprintf("| %s | %s | %s | %.0f | %.2f× | %d | %d | %s |",
		kind, scenario, m.wall.Round(time.Millisecond), mbs, m.upstream, m.manGETs, m.tokens, rss)
}

// containerdRows: containerd (Debian's 1.6, a fresh one each time) fetches
// the 40-layer image as docker.io/bench/forty, configured by a hosts.toml:
// straight from the upstream, and through each cache, cold and then warm.
func (b *bench) containerdRows(runs int) []string {
	fmt.Fprintln(os.Stderr, "containerd pulls")
	ref := "docker.io/" + imageRepo + ":" + imageTag
	fetch := func(mirror string) measure {
		hosts := b.TempDir()
		toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", b.front.URL(), mirror)
		os.MkdirAll(filepath.Join(hosts, "docker.io"), 0o755)
		os.WriteFile(filepath.Join(hosts, "docker.io", "hosts.toml"), []byte(toml), 0o644)
		ctrd := testenv.StartContainerd(b, "containerd", 2, `disabled_plugins = ["io.containerd.grpc.v1.cri"]`)
		b.front.Reset()
		start := time.Now()
		if out, err := ctrd.Ctr(b, "content", "fetch", "--hosts-dir", hosts, ref); err != nil {
			b.Fatalf("ctr content fetch through %s: %v\n%s", mirror, err, out)
		}
		return measure{wall: time.Since(start), bytes: b.imgBytes, upstream: float64(b.front.Bytes("blobs")) / float64(b.imgBytes),
			manGETs: b.front.Count("GET", "manifests"), tokens: b.front.Count("GET", "token")}
	}
	var rows []string
	var direct []measure
	for r := 0; r < runs; r++ {
		direct = append(direct, fetch(b.front.URL()))
	}
	rows = append(rows, row("none (containerd straight from the upstream)", "containerd pull, 40-layer image", median(direct)))
	for _, kind := range []string{"depproxy fs", "distribution fs"} {
		var cold, warm []measure
		for r := 0; r < runs; r++ {
			c := b.start(kind)
			cold = append(cold, fetch("http://"+c.addr()))
			time.Sleep(2 * time.Second) // both store in the background after serving
			warm = append(warm, fetch("http://"+c.addr()))
			c.stop()
		}
		rows = append(rows, row(kind, "containerd pull, 40-layer image, cold", median(cold)),
			row(kind, "containerd pull, 40-layer image, warm", median(warm)))
	}
	return rows
}
