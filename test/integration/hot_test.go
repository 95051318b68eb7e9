package integration

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// hotEnv is an upstream, and MinIO behind a front that counts the
// storage requests each proxy makes.
type hotEnv struct {
	*env
	storage *testenv.Front
	prefix  string
}

func newHotEnv(t *testing.T) *hotEnv {
	t.Helper()
	e := newEnv(t)
	prefix := nonName.ReplaceAllString(t.Name(), "-")
	e.minio.Storage(t, "cache", prefix) // the bucket
	return &hotEnv{env: e, storage: testenv.StartFront(t, "http://"+e.minio.Addr), prefix: prefix}
}

// startHot runs a proxy on the S3 storage with its hot tier in dir.
func (h *hotEnv) startHot(t *testing.T, dir string, size int64, spool string) *proxytest.Proxy {
	t.Helper()
	s3, err := storage.NewS3("cache", h.prefix, storage.S3Options{Endpoint: h.storage.Addr, Insecure: true, Credentials: h.minio.Credentials()})
	if err != nil {
		t.Fatal(err)
	}
	s := settings.Defaults()
	s.Upstream = settings.Keys(h.front.URL())
	s.Storage = "s3://cache/" + h.prefix
	s.HotDir, s.HotSize, s.SpoolDir = dir, settings.Size(size), spool
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return proxytest.Start(t, s, server.WithStorage(s3))
}

// s3BlobGETs is how many blob reads the storage got since the last reset.
func (h *hotEnv) s3BlobGETs() int { return h.storage.Count(http.MethodGet, "blobs") }

// pullBlob gets a blob through p and fails unless it has the bytes of want.
func pullBlob(t *testing.T, p *proxytest.Proxy, repo string, d v1.Hash, want string) {
	t.Helper()
	if _, err := getBlob(p.URL+"/v2/"+repo+"/blobs/"+d.String(), want, 0); err != nil {
		t.Fatal(err)
	}
}

// waitHot waits until p's hot tier holds bytes.
func waitHot(t *testing.T, p *proxytest.Proxy, bytes int64) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; sleep() {
		if int64(sample(scrape(t, p.Ops), "depproxy_proxy_hot_bytes")) == bytes {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hot tier holds %v bytes, want %d", sample(scrape(t, p.Ops), "depproxy_proxy_hot_bytes"), bytes)
		}
	}
}

// waitStored waits until p's downloads are stored (or given up).
func waitStored(t *testing.T, p *proxytest.Proxy) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); sample(scrape(t, p.Ops), "depproxy_proxy_downloads") > 0; sleep() {
		if time.Now().After(deadline) {
			t.Fatal("the downloads never ended")
		}
	}
}

// A blob downloaded once, and a blob already in the bucket read once,
// are served the next time from the replica's disk: no storage GET.
func TestHotTierServesWithoutStorage(t *testing.T) {
	h := newHotEnv(t)
	repo := repoName(t)
	data, d := pushBlob(t, h.registry.Addr, repo, 4<<20)
	p := h.startHot(t, t.TempDir(), 64<<20, "")
	pullBlob(t, p, repo, d, sha(data)) // cold: from the upstream, stored, kept hot
	waitHot(t, p, int64(len(data)))
	h.storage.Reset()
	h.front.Reset()
	for range 3 {
		pullBlob(t, p, repo, d, sha(data))
	}
	if got := h.s3BlobGETs(); got != 0 {
		t.Fatalf("hot blob read from storage %d times, want 0", got)
	}
	if got := h.front.Count(http.MethodGet, "blobs"); got != 0 {
		t.Fatalf("hot blob fetched from the upstream %d times", got)
	}
	if got := sample(scrape(t, p.Ops), "depproxy_proxy_hot_hits_total"); got != 3 {
		t.Fatalf("hot hits %v, want 3", got)
	}

	// Another replica's disk, empty: the stored blob is read once and
	// kept as it is served.
	other := h.startHot(t, t.TempDir(), 64<<20, "")
	h.storage.Reset()
	pullBlob(t, other, repo, d, sha(data))
	if got := h.s3BlobGETs(); got != 1 {
		t.Fatalf("a stored blob not yet hot cost %d storage GETs, want 1", got)
	}
	waitHot(t, other, int64(len(data)))
	h.storage.Reset()
	pullBlob(t, other, repo, d, sha(data))
	if got := h.s3BlobGETs(); got != 0 {
		t.Fatalf("read once from storage, then %d storage GETs, want 0", got)
	}
	if got := h.front.Count(http.MethodGet, "blobs"); got != 0 {
		t.Fatalf("stored blob fetched from the upstream %d times", got)
	}
}

// A hot copy damaged on disk is noticed on the next read: the client
// gets the right bytes from storage, and the copy is made again.
func TestHotTierDamagedCopy(t *testing.T) {
	h := newHotEnv(t)
	repo := repoName(t)
	data, d := pushBlob(t, h.registry.Addr, repo, 2<<20)
	dir := t.TempDir()
	p := h.startHot(t, dir, 64<<20, "")
	pullBlob(t, p, repo, d, sha(data))
	waitHot(t, p, int64(len(data)))
	pullBlob(t, p, repo, d, sha(data)) // checked and trusted
	copyPath := filepath.Join(dir, "blobs", d.Algorithm, d.Hex)
	f, err := os.OpenFile(copyPath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("no hot copy where expected: %v", err)
	}
	f.WriteAt([]byte("rot"), 1<<20)
	f.Close()

	h.storage.Reset()
	pullBlob(t, p, repo, d, sha(data))
	if got := h.s3BlobGETs(); got != 1 {
		t.Fatalf("a damaged copy: %d storage GETs, want 1", got)
	}
	if got := sample(scrape(t, p.Ops), "depproxy_proxy_hot_damaged_total"); got != 1 {
		t.Fatalf("damaged copies %v, want 1", got)
	}
	waitHot(t, p, int64(len(data)))
	h.storage.Reset()
	pullBlob(t, p, repo, d, sha(data))
	if got := h.s3BlobGETs(); got != 0 {
		t.Fatalf("after the copy was made again: %d storage GETs, want 0", got)
	}
}

// --hot-size under two blobs keeps the one read last.
func TestHotTierKeepsTheMostRecent(t *testing.T) {
	h := newHotEnv(t)
	repo := repoName(t)
	a, da := pushBlob(t, h.registry.Addr, repo, 1<<20)
	b, db := pushBlob(t, h.registry.Addr, repo, 1<<20)
	p := h.startHot(t, t.TempDir(), 3<<19, "") // 1.5 MiB
	pullBlob(t, p, repo, da, sha(a))
	waitHot(t, p, 1<<20)
	pullBlob(t, p, repo, db, sha(b))
	for deadline := time.Now().Add(20 * time.Second); sample(scrape(t, p.Ops), "depproxy_proxy_hot_evictions_total") < 1; sleep() {
		if time.Now().After(deadline) {
			t.Fatal("the first blob was never evicted")
		}
	}
	waitHot(t, p, 1<<20)
	h.storage.Reset()
	pullBlob(t, p, repo, db, sha(b))
	if got := h.s3BlobGETs(); got != 0 {
		t.Fatalf("the blob read last: %d storage GETs, want 0", got)
	}
	pullBlob(t, p, repo, da, sha(a))
	if got := h.s3BlobGETs(); got != 1 {
		t.Fatalf("the evicted blob: %d storage GETs, want 1", got)
	}
}

// A restart keeps what is hot: the new process serves it from disk.
func TestHotTierSurvivesRestart(t *testing.T) {
	h := newHotEnv(t)
	repo := repoName(t)
	data, d := pushBlob(t, h.registry.Addr, repo, 4<<20)
	dir := t.TempDir()
	p := h.startHot(t, dir, 64<<20, "")
	pullBlob(t, p, repo, d, sha(data))
	waitHot(t, p, int64(len(data)))
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	again := h.startHot(t, dir, 64<<20, "")
	if got := sample(scrape(t, again.Ops), "depproxy_proxy_hot_bytes"); got != float64(len(data)) {
		t.Fatalf("after a restart the hot tier holds %v bytes, want %d", got, len(data))
	}
	h.storage.Reset()
	pullBlob(t, again, repo, d, sha(data))
	if got := h.s3BlobGETs(); got != 0 {
		t.Fatalf("after a restart: %d storage GETs, want 0", got)
	}
}

// A hot disk without room (a 4 MiB tmpfs): an 8 MiB blob is served from
// storage every time, right; a small one still goes hot there.
func TestHotTierDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("mounting a small tmpfs needs root: run the tests as root (CI does)")
	}
	h := newHotEnv(t)
	repo := repoName(t)
	big, dBig := pushBlob(t, h.registry.Addr, repo, 8<<20)
	small, dSmall := pushBlob(t, h.registry.Addr, repo, 1<<20)
	dir := smallDisk(t, "4m")
	p := h.startHot(t, dir, 1<<30, t.TempDir()) // --hot-size over the disk
	pullBlob(t, p, repo, dBig, sha(big))        // cold
	waitStored(t, p)
	for i := range 2 {
		h.storage.Reset()
		pullBlob(t, p, repo, dBig, sha(big))
		if got := h.s3BlobGETs(); got != 1 {
			t.Fatalf("pull %d of a blob with no room: %d storage GETs, want 1", i, got)
		}
	}
	pullBlob(t, p, repo, dSmall, sha(small))
	waitHot(t, p, 1<<20)
	h.storage.Reset()
	pullBlob(t, p, repo, dSmall, sha(small))
	if got := h.s3BlobGETs(); got != 0 {
		t.Fatalf("a blob that fits: %d storage GETs, want 0", got)
	}
}

// Three replicas with hot tiers: after one cold pull of an image and one
// pull through each replica, every replica's next pull of it reads no
// blob from storage.
func TestHotTierOnReplicas(t *testing.T) {
	h := newHotEnv(t)
	repo := repoName(t)
	img, err := random.Image(1<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	pushImage(t, h.registry.Addr, repo, "v1", img)
	minio := *h.minio
	minio.Addr = h.storage.Addr // the replicas' storage requests are counted
	rs := startReplicas(t, 3, h.front.URL(), &minio, h.prefix, "--hot-dir", "$REPLICA_DIR", "--hot-size", "64Mi")
	if err := cranePull(t, rs[0].Host+"/"+repo+":v1"); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if err := cranePull(t, r.Host+"/"+repo+":v1"); err != nil {
			t.Fatal(err)
		}
	}
	size := imageBlobBytes(t, img)
	blobs := 4 // three layers and the config
	for _, r := range rs {
		for deadline := time.Now().Add(20 * time.Second); int64(sample(scrape(t, r.Ops), "depproxy_proxy_hot_bytes")) < size; sleep() {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s holds %v hot bytes, want %d", r.URL, sample(scrape(t, r.Ops), "depproxy_proxy_hot_bytes"), size)
			}
		}
	}
	h.storage.Reset()
	for _, r := range rs {
		if err := cranePull(t, r.Host+"/"+repo+":v1"); err != nil {
			t.Fatal(err)
		}
	}
	if got := h.s3BlobGETs(); got != 0 {
		t.Fatalf("second pulls through each replica: %d blob GETs from storage, want 0", got)
	}
	var hits float64
	for _, r := range rs {
		hits += sample(scrape(t, r.Ops), "depproxy_proxy_hot_hits_total")
	}
	if want := float64(3 * blobs); hits < want {
		t.Fatalf("hot hits over the replicas %v, want at least %v (%d blobs, 3 replicas)", hits, want, blobs)
	}
}

// imageBlobBytes is the size of an image's layers and config.
func imageBlobBytes(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	size := m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	return size
}
