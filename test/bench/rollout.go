package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// A rollout: every node of a cluster pulls one new two-platform image at
// once, through three replicas behind a Service.
const (
	rolloutNodes     = 256
	rolloutLayers    = 4
	rolloutLayerSize = 8 << 20 // 32 MiB a platform
	rolloutRepo      = "bench/rollout"
	// rolloutParallel is how many blobs a node fetches at once
	// (containerd's max_concurrent_downloads).
	rolloutParallel = 3
)

var rolloutPlatforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

// pushRollout pushes the rollout's image: an index of two platforms.
func (b *bench) pushRollout() error {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range rolloutPlatforms {
		img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
		for range rolloutLayers {
			data := make([]byte, rolloutLayerSize)
			rand.Read(data)
			var err error
			if img, err = mutate.AppendLayers(img, static.NewLayer(data, types.OCILayer)); err != nil {
				return err
			}
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
		m, _ := img.Manifest()
		b.rolloutBytes += m.Config.Size
		for _, l := range m.Layers {
			b.rolloutBytes += l.Size
		}
	}
	ref, _ := name.ParseReference(b.upstream.Addr+"/"+rolloutRepo+":"+imageTag, name.Insecure)
	return remote.WriteIndex(ref, idx)
}

type rolloutMeasure struct {
	wall, p50, p99 time.Duration
	upstream       float64 // blob bytes from the upstream ÷ the image's (both platforms)
}

// rolloutKinds are the caches measured, each three replicas on one bucket.
var rolloutKinds = []string{"depproxy minio", "depproxy minio, hot tier", "distribution minio, streamed"}

// rolloutRows: the rollout cold (an empty cache), then warm (the same
// cache, all of it cached), for each kind, the kinds taking turns run by
// run.
func (b *bench) rolloutRows(runs int) {
	fmt.Printf("| cache | scenario | wall time | node p50 | node p99 | p99 ÷ p50 | upstream bytes ÷ size |\n")
	fmt.Println("|---|---|---|---|---|---|---|")
	cold, warm := map[string][]rolloutMeasure{}, map[string][]rolloutMeasure{}
	for r := 0; r < runs; r++ {
		for _, kind := range rolloutKinds {
			c := b.startReplicas(kind, 3)
			cold[kind] = append(cold[kind], b.rollout(c))
			time.Sleep(3 * time.Second) // stored in the background after serving
			warm[kind] = append(warm[kind], b.rollout(c))
			c.stop()
		}
	}
	for _, kind := range rolloutKinds {
		for _, phase := range []struct {
			name string
			ms   []rolloutMeasure
		}{{"cold", cold[kind]}, {"warm", warm[kind]}} {
			ms := phase.ms
			sort.Slice(ms, func(i, j int) bool { return ms[i].p50 < ms[j].p50 })
			m := ms[len(ms)/2]
			fmt.Printf("| %s%s | %d nodes pull a %d MiB two-platform image, %s | %s | %s | %s | %.2f× | %.2f× |\n",
				kind, replicaSuffix, rolloutNodes, rolloutLayers*rolloutLayerSize>>20, phase.name,
				m.wall.Round(10*time.Millisecond), m.p50.Round(10*time.Millisecond), m.p99.Round(10*time.Millisecond),
				float64(m.p99)/float64(m.p50), m.upstream)
		}
	}
}

// rollout: every node pulls the image at once, each with connections of
// its own, spread over the replicas as a Service spreads them.
func (b *bench) rollout(c *cache) rolloutMeasure {
	b.front.Reset()
	times := make([]time.Duration, rolloutNodes)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range rolloutNodes {
		wg.Go(func() {
			times[i] = b.rolloutNode(c, c.addrs[i%len(c.addrs)], rolloutPlatforms[i%len(rolloutPlatforms)])
		})
	}
	wg.Wait()
	wall := time.Since(start)
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	return rolloutMeasure{wall: wall, p50: times[len(times)/2], p99: times[len(times)*99/100],
		upstream: float64(b.front.Bytes("blobs")) / float64(b.rolloutBytes)}
}

// rolloutNode pulls the image for one platform as a node's runtime
// does: the index, the platform's manifest, then its blobs a few at a
// time.
func (b *bench) rolloutNode(c *cache, addr string, platform v1.Platform) time.Duration {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: rolloutParallel}}
	defer client.CloseIdleConnections()
	start := time.Now()
	get := func(path, accept string) []byte {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/"+rolloutRepo+path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := client.Do(req)
		if err != nil {
			b.Fatalf("%s: %s: %v", c.name, path, err)
		}
		defer resp.Body.Close()
		var body []byte
		if accept != "" {
			body, err = io.ReadAll(resp.Body)
		} else {
			_, err = io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{resp.Body}, make([]byte, 1<<20))
		}
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("%s: %s: %s %v", c.name, path, resp.Status, err)
		}
		return body
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(get("/manifests/"+imageTag, string(types.OCIImageIndex))))
	if err != nil {
		b.Fatalf("%s: index: %v", c.name, err)
	}
	var child v1.Hash
	for _, m := range idx.Manifests {
		if m.Platform != nil && m.Platform.Satisfies(platform) {
			child = m.Digest
		}
	}
	m, err := v1.ParseManifest(bytes.NewReader(get("/manifests/"+child.String(), string(types.OCIManifestSchema1))))
	if err != nil {
		b.Fatalf("%s: manifest: %v", c.name, err)
	}
	blobs := []v1.Hash{m.Config.Digest}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest)
	}
	slots := make(chan struct{}, rolloutParallel)
	var wg sync.WaitGroup
	for _, d := range blobs {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			get("/blobs/"+d.String(), "")
		})
	}
	wg.Wait()
	return time.Since(start)
}
