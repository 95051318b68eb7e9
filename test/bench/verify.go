package main

import (
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
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/depproxy/depproxy/test/testenv"
)

const (
	signedRepo   = "bench/signed"
	unsignedRepo = "bench/unsigned"
	// verifyColdRuns is how many fresh caches of each kind pull the
	// signed image cold: one verification each.
	verifyColdRuns = 15
	verifyLayers   = 4
	verifyKind     = "depproxy fs, verify enforce"
)

// verifyRows: a small image signed with cosign v3 (a key, the bundle
// format, no transparency log) in the upstream, pulled cold through a
// new cache with and without --verify-policy in enforce mode, the two
// taking turns run by run; then its tag warm, 32 clients × 200, with and
// without, taking turns likewise.
func (b *bench) verifyRows(runs int) {
	fmt.Fprintln(os.Stderr, "a signed image: cold and warm pulls with and without verification")
	signed := b.pushSmall(signedRepo)
	b.pushSmall(unsignedRepo)
	b.verifyPolicy = b.signWithCosign(b.upstream.Addr + "/" + signedRepo + "@" + signed.manifest.String())

	type cold struct{ manifest, pull time.Duration }
	colds := map[string][]cold{}
	kinds := []string{"depproxy fs", verifyKind}
	for r := 0; r < verifyColdRuns; r++ {
		for _, kind := range kinds {
			c := b.start(kind)
			start := time.Now()
			b.getManifestOf(c, http.DefaultClient, signedRepo, imageTag)
			m := time.Since(start)
			for _, d := range signed.blobs {
				b.fetch(c, signedRepo, d)
			}
			colds[kind] = append(colds[kind], cold{m, time.Since(start)})
			if kind == verifyKind && r == 0 {
				// The policy is in force: the unsigned image is refused.
				req, _ := http.NewRequest(http.MethodGet, "http://"+c.addr()+"/v2/"+unsignedRepo+"/manifests/"+imageTag, nil)
				req.Header.Set("Accept", string(types.OCIManifestSchema1))
				resp, err := http.DefaultClient.Do(req)
				if err != nil || resp.StatusCode != http.StatusForbidden {
					b.Fatalf("the unsigned image through the enforcing cache: %v %v, want 403", resp, err)
				}
				resp.Body.Close()
			}
			c.stop()
		}
	}
	warms := map[string][]tagMeasure{}
	for r := 0; r < runs; r++ {
		for _, kind := range kinds {
			c := b.start(kind)
			warms[kind] = append(warms[kind], b.warmTagOf(c, signedRepo))
			c.stop()
		}
	}

	medians := map[string]cold{}
	warmMedian := map[string]tagMeasure{}
	for _, kind := range kinds {
		cs := colds[kind]
		ms, ps := make([]time.Duration, len(cs)), make([]time.Duration, len(cs))
		for i, c := range cs {
			ms[i], ps[i] = c.manifest, c.pull
		}
		medians[kind] = cold{medianDuration(ms), medianDuration(ps)}
		ws := warms[kind]
		sort.Slice(ws, func(i, j int) bool { return ws[i].perSecond < ws[j].perSecond })
		warmMedian[kind] = ws[len(ws)/2]
	}
	fmt.Println("| cache | scenario | first manifest | whole pull | warm tag requests/s | warm p50 | warm p99 |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, kind := range kinds {
		m, w := medians[kind], warmMedian[kind]
		fmt.Printf("| %s | %d-layer signed image: cold (median of %d fresh caches); warm tag, %d clients × %d (median of %d) | %s | %s | %.0f | %s | %s |\n",
			kind, verifyLayers, verifyColdRuns, tagClients, tagRequests, runs,
			m.manifest.Round(100*time.Microsecond), m.pull.Round(100*time.Microsecond), w.perSecond, w.p50.Round(10*time.Microsecond), w.p99.Round(10*time.Microsecond))
	}
	plain, checked := medians["depproxy fs"], medians[verifyKind]
	fmt.Printf("\nadded by one verification: %s on the first manifest, %s on the whole pull (medians; the target is ≤ 50ms); warm: %.3f× the requests/s without (the target is ≥ 0.95×)\n",
		(checked.manifest - plain.manifest).Round(100*time.Microsecond), (checked.pull - plain.pull).Round(100*time.Microsecond),
		warmMedian[verifyKind].perSecond/warmMedian["depproxy fs"].perSecond)
}

// smallImage is an image of verifyLayers layers of 1 MiB.
type smallImage struct {
	manifest v1.Hash
	blobs    []v1.Hash // the config and the layers
}

// pushSmall pushes a new image of verifyLayers random 1 MiB layers as
// repo:imageTag.
func (b *bench) pushSmall(repo string) smallImage {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for range verifyLayers {
		data := make([]byte, 1<<20)
		rand.Read(data)
		var err error
		if img, err = mutate.AppendLayers(img, static.NewLayer(data, types.OCILayer)); err != nil {
			b.Fatal(err)
		}
	}
	ref, _ := name.ParseReference(b.upstream.Addr+"/"+repo+":"+imageTag, name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		b.Fatal(err)
	}
	var s smallImage
	s.manifest, _ = img.Digest()
	m, _ := img.Manifest()
	s.blobs = append(s.blobs, m.Config.Digest)
	for _, l := range m.Layers {
		s.blobs = append(s.blobs, l.Digest)
	}
	return s
}

// signWithCosign signs image with a new key pair, offline (no
// transparency log, no signing config from Sigstore's TUF), in cosign
// v3's bundle format, and writes the verify policy that requires it for
// docker.io/bench/**: its path.
func (b *bench) signWithCosign(image string) string {
	dir := b.TempDir()
	cosign := func(args ...string) {
		cmd := exec.Command(testenv.Tool(b, "cosign"), args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "COSIGN_PASSWORD=", "HOME="+dir, "TUF_ROOT="+filepath.Join(dir, "tuf"))
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("cosign %v: %v\n%s", args, err, out)
		}
	}
	cosign("generate-key-pair")
	cosign("sign", "--key", "cosign.key", "--use-signing-config=false", "--tlog-upload=false",
		"--allow-http-registry", "--allow-insecure-registry", "--yes", image)
	policy := filepath.Join(dir, "verify.yaml")
	os.WriteFile(policy, []byte("mode: enforce\nrules:\n- images: [\"docker.io/bench/**\"]\n  keys: [{file: cosign.pub}]\n  ignoreTlog: true\n"), 0o644)
	return policy
}

// warmTagOf is warmTag for repo's imageTag.
func (b *bench) warmTagOf(c *cache, repo string) tagMeasure {
	return b.warmTagBy(func(client *http.Client) { b.getManifestOf(c, client, repo, imageTag) })
}

// getManifestOf fetches repo:tag's manifest from the cache.
func (b *bench) getManifestOf(c *cache, client *http.Client, repo, tag string) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.addr()+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", string(types.OCIManifestSchema1))
	resp, err := client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("%s: %s:%s: %s", c.name, repo, tag, resp.Status)
	}
}
