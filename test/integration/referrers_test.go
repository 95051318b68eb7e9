package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

func randomName() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "nosuch/" + hex.EncodeToString(b)
}

// storedKeys lists every object in store, last-read markers included.
func storedKeys(t *testing.T, p *proxytest.Proxy, store storage.Storage) []string {
	t.Helper()
	p.Server.Cache().FlushReads(context.Background())
	var keys []string
	if err := store.List(context.Background(), "", func(key string, _ storage.Info) error {
		keys = append(keys, key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(keys)
	return keys
}

// emptyReferrers asks for a digest's referrers and wants an empty OCI
// index.
func emptyReferrers(t *testing.T, base, repo, d string) {
	t.Helper()
	resp, body := get(t, base+"/v2/"+repo+"/referrers/"+d, "")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"manifests":[]`) {
		t.Fatalf("referrers of %s in %s: %s %s, want an empty index", d, repo, resp.Status, body)
	}
}

// What anonymous referrers requests can make the cache store and ask is
// bounded: 300 for random names and digests store nothing (an empty
// answer for a digest the cache does not hold stays in memory), and
// cost the upstream no referrers GET but the first (it has no referrers
// API); 100 random digests under a repository the upstream does not
// have cost it one request in all. A digest the cache
// holds has its answer stored, empty or not.
func TestRandomReferrersStoreNothing(t *testing.T) {
	reg := testenv.StartRegistry(t)
	front := testenv.StartFront(t, reg.URL())
	repo := repoName(t)
	img := ociImage(t, 1)
	pushImage(t, reg.Addr, repo, "v1", img)
	store := openStorage(t, "filesystem", nil)
	p := startProxy(t, front.URL(), store)

	before := storedKeys(t, p, store)
	front.Reset()
	for i := range 300 {
		name := repo
		if i%2 == 1 {
			name = randomName()
		}
		emptyReferrers(t, p.URL, name, randomDigest(0))
	}
	if after := storedKeys(t, p, store); len(after) != len(before) {
		t.Errorf("300 referrers requests for random digests stored %d objects:\n%s", len(after)-len(before), strings.Join(after, "\n"))
	}
	if n := front.Count("GET", "referrers"); n > 1 {
		t.Errorf("the upstream without a referrers API was asked for referrers %d times", n)
	}
	if n := front.Count("GET", "manifests") + front.Count("HEAD", "manifests"); n > 300 {
		t.Errorf("300 referrers requests cost the upstream %d manifest requests", n)
	}

	front.Reset()
	missing := randomName()
	for range 100 {
		emptyReferrers(t, p.URL, missing, randomDigest(0))
	}
	// tags/list saying NAME_UNKNOWN (Distribution answers
	// MANIFEST_UNKNOWN for a fallback tag): remembered for the TTL.
	if n := front.Count("GET", "manifests") + front.Count("HEAD", "manifests") + front.Count("GET", "tags"); n > 1 {
		t.Errorf("100 random digests under a repository the upstream does not have cost it %d requests", n)
	}
	if n := front.Count("GET", "referrers"); n > 1 {
		t.Errorf("the upstream without a referrers API was asked for referrers %d times", n)
	}

	// The image pulled: its digest's answer is kept, empty as it is.
	subject := digestOf(t, img).String()
	if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/"+subject, acceptAll); resp.StatusCode != 200 {
		t.Fatalf("the subject: %s %s", resp.Status, body)
	}
	emptyReferrers(t, p.URL, repo, subject)
	stored := false
	for _, k := range storedKeys(t, p, store) {
		stored = stored || strings.Contains(k, "_referrers/") && strings.HasSuffix(k, strings.Replace(subject, ":", "-", 1))
	}
	if !stored {
		t.Error("the referrers of a manifest the cache holds were not stored")
	}
}

// An empty referrers answer seen once is served as seen while the
// upstream is down, long after it was fetched, as a stored one is
// (the OCI conformance suite's empty referrers with the upstream
// stopped); one never seen is an error, not an empty list nobody gave.
func TestEmptyReferrersServedWithTheUpstreamDown(t *testing.T) {
	reg := testenv.StartRegistry(t)
	front := testenv.StartFront(t, reg.URL())
	repo := repoName(t)
	pushImage(t, reg.Addr, repo, "v1", ociImage(t, 1))
	p := startProxy(t, front.URL(), openStorage(t, "filesystem", nil), cache.WithListTTL(200*time.Millisecond))

	seen, missing := randomDigest(0), randomName()
	emptyReferrers(t, p.URL, repo, seen)
	emptyReferrers(t, p.URL, missing, randomDigest(0))
	time.Sleep(300 * time.Millisecond) // past the TTL: the upstream would be asked
	front.Stop()
	defer front.Start()
	emptyReferrers(t, p.URL, repo, seen)
	emptyReferrers(t, p.URL, missing, randomDigest(0))
	resp, body := get(t, p.URL+"/v2/"+repo+"/referrers/"+randomDigest(0), "")
	ociError(t, resp, body, http.StatusServiceUnavailable, "UNAVAILABLE")
}
