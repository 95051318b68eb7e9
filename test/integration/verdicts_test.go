package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
)

// writeVerifyPolicy writes, in dir, an enforcing policy whose one rule
// holds image (registry/repository) to the public keys of these signing
// keys, copied beside it; it returns the policy file.
func writeVerifyPolicy(t *testing.T, dir, image string, keys ...signingKey) string {
	t.Helper()
	var files []string
	for i, k := range keys {
		pub, err := os.ReadFile(filepath.Join(k.dir, "cosign.pub"))
		if err != nil {
			t.Fatal(err)
		}
		f := fmt.Sprintf("key-%d.pub", i)
		writeAtomically(t, filepath.Join(dir, f), pub)
		files = append(files, "{file: "+f+"}")
	}
	file := filepath.Join(dir, "verify.yaml")
	writeAtomically(t, file, []byte(fmt.Sprintf("mode: enforce\nrules:\n- images: [%q]\n  keys: [%s]\n  ignoreTlog: true\n", image, strings.Join(files, ", "))))
	return file
}

// writeAtomically replaces path as a ConfigMap volume does: a reader
// never sees half of it.
func writeAtomically(t *testing.T, path string, raw []byte) {
	t.Helper()
	if err := os.WriteFile(path+".new", raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// pullWhole pulls image from the proxy at host with go-containerregistry's
// client, every blob read and checked.
func pullWhole(t *testing.T, host, image string) error {
	t.Helper()
	r, err := name.ParseReference(host+"/"+image, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		return err
	}
	return validate.Image(img)
}

// verifications is what a proxy's depproxy_proxy_verify_total says of
// result.
func verifications(t *testing.T, ops, result string) float64 {
	t.Helper()
	return sample(scrape(t, ops), "depproxy_proxy_verify_total", "result", result)
}

// A pass is stored with the digest, under the policy's hash: pulled
// through three replicas in turn, a signed image is verified once over
// the three; a process started later over the same storage (a replica
// restarted) serves it without verifying; the policy changed (a key file
// replaced in place) verifies again, and back to what it was, takes the
// stored verdict again. Two replicas verifying the same new digest at
// the same moment would each verify it: the sharing is of verdicts
// reached, not of the work in progress.
func TestVerdictsAreSharedAndKept(t *testing.T) {
	e := newEnv(t)
	key, other := newSigningKey(t), newSigningKey(t)
	repo := repoName(t)
	img := ociImage(t, 2)
	pushImage(t, e.registry.Addr, repo, "v1", img)
	d := digestOf(t, img).String()
	key.sign(t, e.registry.Addr+"/"+repo+"@"+d, true)

	dir := t.TempDir()
	image := registryname.Of(e.front.URL()) + "/" + repo
	policy := writeVerifyPolicy(t, dir, image, key)
	prefix := nonName.ReplaceAllString(t.Name(), "-")
	rs := startReplicas(t, 3, e.front.URL(), e.minio, prefix, "--verify-policy", policy)

	for i, r := range rs {
		if err := pullWhole(t, r.Host, repo+":v1"); err != nil {
			t.Fatalf("pulling the signed image through replica %d: %v", i+1, err)
		}
	}
	total := 0.0
	for _, r := range rs {
		total += verifications(t, r.Ops, "verified")
		if v := verifications(t, r.Ops, "refused"); v != 0 {
			t.Errorf("a replica refused %v times", v)
		}
	}
	if total != 1 {
		t.Errorf("the three replicas verified the image %v times, want 1 (the first; the others read the stored verdict)", total)
	}
	store := e.minio.Storage(t, "cache", prefix)
	var stored []string
	store.List(t.Context(), layout.VerifiedPrefix, func(k string, _ storage.Info) error {
		stored = append(stored, k)
		return nil
	})
	if len(stored) != 1 || !strings.HasPrefix(stored[0], layout.VerifiedOf(digest.Digest(d))) {
		t.Errorf("stored verdicts %v, want one, of %s", stored, d)
	}

	// Restarted: nothing in memory, the verdict in the storage.
	s := settings.Defaults()
	s.Upstream = settings.Keys(e.front.URL())
	s.VerifyPolicy = policy
	p := proxytest.Start(t, s, server.WithStorage(store))
	if err := pullWhole(t, p.Host, repo+"@"+d); err != nil {
		t.Fatalf("pulling through a restarted replica: %v", err)
	}
	if v := verifications(t, p.Ops, "verified"); v != 0 {
		t.Errorf("the restarted replica verified %v times, want 0", v)
	}

	// Another key in the file the policy names: a new policy, verified
	// anew (and refused: the image is not signed with that key).
	pub, _ := os.ReadFile(filepath.Join(dir, "key-0.pub"))
	otherPub, _ := os.ReadFile(filepath.Join(other.dir, "cosign.pub"))
	writeAtomically(t, filepath.Join(dir, "key-0.pub"), otherPub)
	waitFor(t, 20*time.Second, "the changed key is applied", func() bool {
		resp, _ := get(t, p.URL+"/v2/"+repo+"/manifests/"+d, acceptAll)
		return resp.StatusCode == http.StatusForbidden
	})
	if v := verifications(t, p.Ops, "refused"); v != 1 {
		t.Errorf("under the changed key: %v refusals, want 1", v)
	}
	// Back as it was: the policy's hash is the first one's, and so is
	// the stored verdict.
	writeAtomically(t, filepath.Join(dir, "key-0.pub"), pub)
	waitFor(t, 20*time.Second, "the key put back is applied", func() bool {
		resp, _ := get(t, p.URL+"/v2/"+repo+"/manifests/"+d, acceptAll)
		return resp.StatusCode == http.StatusOK
	})
	if v := verifications(t, p.Ops, "verified"); v != 0 {
		t.Errorf("under the policy put back: verified %v times, want 0 (its verdict is stored)", v)
	}
	// A second key added: a new policy the image passes, verified once.
	writeVerifyPolicy(t, dir, image, key, other)
	waitFor(t, 20*time.Second, "the policy of two keys verifies the image", func() bool {
		if err := pullWhole(t, p.Host, repo+"@"+d); err != nil {
			t.Fatalf("pulling under the policy of two keys: %v", err)
		}
		return verifications(t, p.Ops, "verified") == 1
	})
	stored = nil
	store.List(t.Context(), layout.VerifiedPrefix, func(k string, _ storage.Info) error {
		stored = append(stored, k)
		return nil
	})
	if len(stored) != 2 {
		t.Errorf("stored verdicts %v, want two: one per policy the image passed", stored)
	}
}

// A tag moved upstream to an unsigned digest is refused, with the
// reason, once the cache sees the move; the digest it pointed at before,
// verified, is still served by digest.
func TestMovedTagIsVerified(t *testing.T) {
	e := newEnv(t)
	key := newSigningKey(t)
	repo := repoName(t)
	signed, unsigned := ociImage(t, 1), ociImage(t, 1)
	pushImage(t, e.registry.Addr, repo, "v1", signed)
	old := digestOf(t, signed).String()
	key.sign(t, e.registry.Addr+"/"+repo+"@"+old, true)

	s := settings.Defaults()
	s.Upstream = settings.Keys(e.front.URL())
	s.VerifyPolicy = writeVerifyPolicy(t, t.TempDir(), registryname.Of(e.front.URL())+"/"+repo, key)
	s.RecheckInterval = settings.Duration(0) // every tag request asks the upstream
	p := proxytest.Start(t, s, server.WithStorage(openStorage(t, "filesystem", nil)))
	if err := pullWhole(t, p.Host, repo+":v1"); err != nil {
		t.Fatalf("pulling the signed tag: %v", err)
	}

	pushImage(t, e.registry.Addr, repo, "v1", unsigned)
	resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/v1", acceptAll)
	ociError(t, resp, body, http.StatusForbidden, "DENIED")
	if !strings.Contains(string(body), "no signature") || !strings.Contains(string(body), "rule 1") {
		t.Errorf("the moved tag refused with %s, want the rule and no signature", body)
	}
	if resp.Header.Get("Docker-Content-Digest") != "" {
		t.Errorf("the refusal names a digest: %s", resp.Header.Get("Docker-Content-Digest"))
	}
	if err := pullWhole(t, p.Host, repo+"@"+old); err != nil {
		t.Errorf("pulling the digest the tag pointed at before: %v", err)
	}
	resp, body = get(t, p.URL+"/v2/"+repo+"/manifests/"+digestOf(t, unsigned).String(), acceptAll)
	ociError(t, resp, body, http.StatusForbidden, "DENIED")
}

// Warming goes through the policy: of the images a pins file names, the
// unsigned one's blobs are not fetched, it is not pinned, and the
// summary reports it refused with the rule and the reason, as the access
// rules' refusals are; the signed one is warmed.
func TestWarmingIsVerified(t *testing.T) {
	e := newEnv(t)
	key := newSigningKey(t)
	repo := repoName(t)
	signed, unsigned := ociImage(t, 2), ociImage(t, 2)
	pushImage(t, e.registry.Addr, repo, "signed", signed)
	pushImage(t, e.registry.Addr, repo, "unsigned", unsigned)
	key.sign(t, e.registry.Addr+"/"+repo+"@"+digestOf(t, signed).String(), true)

	host := registryname.Of(e.front.URL())
	pinsFile := filepath.Join(t.TempDir(), "pinned")
	writePins(t, pinsFile, host+"/"+repo+":signed", host+"/"+repo+":unsigned")
	store := openStorage(t, "filesystem", nil)
	p := startKeeping(t, e.front.URL(), store, pinsFile, 0, func(s *settings.Settings) {
		s.VerifyPolicy = writeVerifyPolicy(t, t.TempDir(), host+"/"+repo, key)
	})

	var kept []report.KeptImage
	waitFor(t, 30*time.Second, "both kept images settle", func() bool {
		kept = pinnedStatus(t, p)
		done := 0
		for _, k := range kept {
			if k.Warmed || k.Denied != "" {
				done++
			}
		}
		return done == 2
	})
	for _, k := range kept {
		isUnsigned := strings.HasSuffix(k.Ref, ":unsigned")
		switch {
		case isUnsigned && (k.Warmed || k.Digest != "" || !strings.Contains(k.Denied, "verify policy") || !strings.Contains(k.Denied, "no signature")):
			t.Errorf("kept %+v: want the unsigned image refused by the verify policy, with the reason, unwarmed", k)
		case !isUnsigned && (!k.Warmed || k.Denied != "" || k.Digest != digestOf(t, signed).String()):
			t.Errorf("kept %+v: want the signed image warmed", k)
		}
	}
	for _, b := range blobsOf(t, unsigned) {
		if exists(t, store, layout.Blob(b)) {
			t.Errorf("the unsigned image's blob %s was fetched", b)
		}
	}
	for _, b := range blobsOf(t, signed) {
		if !exists(t, store, layout.Blob(b)) {
			t.Errorf("the signed image's blob %s was not warmed", b)
		}
	}
	var set struct{ Tags []string }
	waitFor(t, 20*time.Second, "the pinned set is stored", func() bool {
		raw, err := storage.ReadAll(t.Context(), store, "_pins/set.json", 1<<20)
		return err == nil && json.Unmarshal(raw, &set) == nil
	})
	for _, tag := range set.Tags {
		if strings.HasSuffix(tag, "/unsigned") {
			t.Errorf("the unsigned image is pinned: %v", set.Tags)
		}
	}
	if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/unsigned", acceptAll); resp.StatusCode != http.StatusForbidden {
		t.Errorf("the unsigned image, pulled: %s %s", resp.Status, body)
	}
}

// Prefetching an index's children for --prefetch-platforms is warming
// too: an unsigned index refused leaves its children's blobs unfetched;
// a signed one's are prefetched.
func TestPrefetchIsVerified(t *testing.T) {
	e := newEnv(t)
	key := newSigningKey(t)
	repo := repoName(t)
	signedAmd, unsignedAmd := ociImage(t, 1), ociImage(t, 1)
	signed, unsigned := ociIndex(t, signedAmd, ociImage(t, 1)), ociIndex(t, unsignedAmd, ociImage(t, 1))
	pushIndex(t, e.registry.Addr, repo, "signed", signed)
	pushIndex(t, e.registry.Addr, repo, "unsigned", unsigned)
	sd, err := signed.Digest()
	if err != nil {
		t.Fatal(err)
	}
	key.sign(t, e.registry.Addr+"/"+repo+"@"+sd.String(), true)

	s := settings.Defaults()
	s.Upstream = settings.Keys(e.front.URL())
	s.VerifyPolicy = writeVerifyPolicy(t, t.TempDir(), registryname.Of(e.front.URL())+"/"+repo, key)
	s.PrefetchPlatforms = "linux/amd64"
	store := openStorage(t, "filesystem", nil)
	p := proxytest.Start(t, s, server.WithStorage(store))

	resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/unsigned", acceptAll)
	ociError(t, resp, body, http.StatusForbidden, "DENIED")
	if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/signed", acceptAll); resp.StatusCode != http.StatusOK {
		t.Fatalf("the signed index: %s %s", resp.Status, body)
	}
	waitFor(t, 20*time.Second, "the signed index's amd64 child is prefetched", func() bool {
		for _, b := range blobsOf(t, signedAmd) {
			if !exists(t, store, layout.Blob(b)) {
				return false
			}
		}
		return true
	})
	time.Sleep(time.Second) // the unsigned index's prefetch, had it run, would be done too
	for _, b := range blobsOf(t, unsignedAmd) {
		if exists(t, store, layout.Blob(b)) {
			t.Errorf("the refused index's child blob %s was prefetched", b)
		}
	}
}
