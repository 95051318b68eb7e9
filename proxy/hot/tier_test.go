package hot

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// spooled writes a blob where a download would leave it, and returns
// its digest and path.
func spooled(t *testing.T, content []byte) (digest.Digest, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	return digest.FromBytes(content), path
}

func read(t *testing.T, tier *Tier, d digest.Digest) ([]byte, bool) {
	t.Helper()
	f, _, done, ok := tier.Get(d)
	if !ok {
		return nil, false
	}
	defer done()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b, true
}

func TestKeepThenGet(t *testing.T) {
	tier, err := Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("a"), 1000)
	d, path := spooled(t, content)
	if _, ok := read(t, tier, d); ok {
		t.Fatal("a blob never kept is hot")
	}
	tier.Keep(d, path, int64(len(content)))
	os.Remove(path) // the spool file goes; the copy stays
	got, ok := read(t, tier, d)
	if !ok || !bytes.Equal(got, content) {
		t.Fatalf("kept blob: %v, %d bytes", ok, len(got))
	}
	if hits, misses := testutil.ToFloat64(tier.metrics.hits), testutil.ToFloat64(tier.metrics.misses); hits != 1 || misses != 1 {
		t.Fatalf("hits %v, misses %v; want 1 and 1", hits, misses)
	}
}

func TestLeastRecentlyReadGoesFirst(t *testing.T) {
	tier, err := Open(t.TempDir(), 2500)
	if err != nil {
		t.Fatal(err)
	}
	var ds []digest.Digest
	for _, c := range "abc" {
		content := bytes.Repeat([]byte{byte(c)}, 1000)
		d, path := spooled(t, content)
		tier.Keep(d, path, 1000)
		ds = append(ds, d)
		if c == 'b' {
			read(t, tier, ds[0]) // a is read again: b is now the oldest
		}
	}
	if _, ok := read(t, tier, ds[1]); ok {
		t.Fatal("the least recently read blob was kept past the size")
	}
	for _, d := range []digest.Digest{ds[0], ds[2]} {
		if _, ok := read(t, tier, d); !ok {
			t.Fatalf("%s was evicted", d)
		}
	}
	if got := testutil.ToFloat64(tier.metrics.size); got != 2000 {
		t.Fatalf("size %v, want 2000", got)
	}
	if tier.Room(2501) {
		t.Fatal("a blob over the tier's size has room")
	}
}

func TestRestartKeepsCopiesAndChecksThem(t *testing.T) {
	dir := t.TempDir()
	tier, err := Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	good, bad := []byte("good blob"), []byte("blob to be damaged")
	dGood, p := spooled(t, good)
	tier.Keep(dGood, p, int64(len(good)))
	dBad, p := spooled(t, bad)
	tier.Keep(dBad, p, int64(len(bad)))
	// Bytes flipped while the process is down, the size unchanged.
	if err := os.WriteFile(tier.path(dBad), bytes.ToUpper(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, blobsDir, "sha256", "not-a-digest"), []byte("x"), 0o644)

	again, err := Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := read(t, again, dGood); !ok || !bytes.Equal(got, good) {
		t.Fatal("a restart lost a hot copy")
	}
	if _, ok := read(t, again, dBad); ok {
		t.Fatal("a damaged copy was served after a restart")
	}
	if _, err := os.Stat(again.path(dBad)); err == nil {
		t.Fatal("a damaged copy was left on disk")
	}
	if _, err := os.Stat(filepath.Join(dir, blobsDir, "sha256", "not-a-digest")); err == nil {
		t.Fatal("a file that is not a copy was left in the tier")
	}
	if got := testutil.ToFloat64(again.metrics.damaged); got != 1 {
		t.Fatalf("damaged %v, want 1", got)
	}
}

func TestDamageWhileRunningIsNoticed(t *testing.T) {
	tier, err := Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("checked once, then trusted")
	d, p := spooled(t, content)
	tier.Keep(d, p, int64(len(content)))
	if _, ok := read(t, tier, d); !ok {
		t.Fatal("not hot")
	}
	f, err := os.OpenFile(tier.path(d), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("X"), 3)
	f.Close()
	if _, ok := read(t, tier, d); ok {
		t.Fatal("a copy written to after it was checked was served unchecked")
	}
}

func TestFreeSpaceFloor(t *testing.T) {
	tier, err := Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	// A 10,000-byte disk holding only the tier, with a 4,000-byte floor.
	tier.free = func() (int64, int64, error) { return 10_000 - tier.used, 4000, nil }
	content := bytes.Repeat([]byte("z"), 3000)
	d, p := spooled(t, content)
	tier.Keep(d, p, 3000)
	if !tier.Room(3000) { // 7000 free, 4000 after: at the floor
		t.Fatal("no room above the floor")
	}
	if !tier.Room(5000) { // evicting the copy frees 3000: 10000-5000 ≥ 4000
		t.Fatal("eviction did not make room")
	}
	if _, ok := read(t, tier, d); ok {
		t.Fatal("the copy was not evicted to keep the floor")
	}
	if tier.Room(7000) {
		t.Fatal("room under the floor")
	}
}

// A file already at a copy's name when a download is kept (planted by
// whoever can write the tier's directory, or left by another process) is
// not taken for the checked copy: what is served is the download's bytes,
// or nothing.
func TestPlantedFileIsNotServed(t *testing.T) {
	dir := t.TempDir()
	tier, err := Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("good"), 256)
	d, path := spooled(t, content)
	planted := bytes.Repeat([]byte("evil"), 256) // the same size
	dst := filepath.Join(dir, blobsDir, d.Algorithm().String(), d.Encoded())
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, planted, 0o644); err != nil {
		t.Fatal(err)
	}
	tier.Keep(d, path, int64(len(content)))
	got, ok := read(t, tier, d)
	if ok && !bytes.Equal(got, content) {
		t.Fatalf("served the planted file: %q…", got[:8])
	}
	if !ok {
		t.Fatal("the download was not kept")
	}
	if raw, _ := os.ReadFile(dst); !bytes.Equal(raw, content) {
		t.Fatal("the planted file is still at the copy's name")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), ".tmp-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// A copy open for reading is not evicted: a blob that fits only in its
// room is not kept (served from S3 instead), and the copy is evicted for
// the next blob once its reader is done.
func TestCopyBeingReadIsNotEvicted(t *testing.T) {
	tier, err := Open(t.TempDir(), 1500) // about one blob
	if err != nil {
		t.Fatal(err)
	}
	blob := func() ([]byte, digest.Digest, string) {
		content := make([]byte, 1000)
		rand.Read(content)
		d, path := spooled(t, content)
		return content, d, path
	}
	a, dA, pathA := blob()
	tier.Keep(dA, pathA, 1000)
	f, _, done, ok := tier.Get(dA)
	if !ok {
		t.Fatal("a is not hot")
	}
	defer done()
	head := make([]byte, 100)
	if _, err := io.ReadFull(f, head); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(tier.metrics.reading); got != 1000 {
		t.Fatalf("reading %v bytes, want 1000", got)
	}

	_, dB, pathB := blob()
	if tier.Room(1000) {
		t.Error("room for b in the room of a copy being read")
	}
	tier.Keep(dB, pathB, 1000) // as a finished download is, room or not
	if _, ok := tier.Size(dB); ok {
		t.Error("b was kept over a copy being read")
	}
	if _, ok := tier.Size(dA); !ok {
		t.Fatal("a was evicted while being read")
	}
	if _, err := os.Stat(tier.path(dA)); err != nil {
		t.Fatalf("a's file: %v", err)
	}
	// Another reader meanwhile gets the same copy.
	if got, ok := read(t, tier, dA); !ok || !bytes.Equal(got, a) {
		t.Fatal("a second reader of a did not get it whole")
	}
	rest, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(append(head, rest...), a) {
		t.Fatalf("a read %d bytes (%v), not whole and correct", len(head)+len(rest), err)
	}
	if got := testutil.ToFloat64(tier.metrics.evictions); got != 0 {
		t.Errorf("%v evictions while the only copy was being read", got)
	}
	if got := testutil.ToFloat64(tier.metrics.size); got != 1000 {
		t.Errorf("size %v, want 1000", got)
	}

	done()
	done() // a second done is no second reader gone
	if got := testutil.ToFloat64(tier.metrics.reading); got != 0 {
		t.Fatalf("reading %v bytes after the reader was done", got)
	}
	c, dC, pathC := blob()
	if !tier.Room(1000) {
		t.Fatal("no room for c once a was read")
	}
	tier.Keep(dC, pathC, 1000)
	if _, ok := tier.Size(dA); ok {
		t.Error("a was not evicted for c")
	}
	if _, err := os.Stat(tier.path(dA)); err == nil {
		t.Error("a's file outlived its eviction")
	}
	if got, ok := read(t, tier, dC); !ok || !bytes.Equal(got, c) {
		t.Error("c was not kept")
	}
	if got := testutil.ToFloat64(tier.metrics.size); got != 1000 {
		t.Errorf("size %v, want 1000", got)
	}
}

// Being read does not keep a damaged copy: it is dropped all the same,
// and stops counting as read.
func TestDamagedCopyIsDroppedWhileRead(t *testing.T) {
	tier, err := Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("read by one, damaged for the next")
	d, p := spooled(t, content)
	tier.Keep(d, p, int64(len(content)))
	_, _, done, ok := tier.Get(d)
	if !ok {
		t.Fatal("not hot")
	}
	if err := os.WriteFile(tier.path(d), bytes.ToUpper(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := read(t, tier, d); ok {
		t.Fatal("a damaged copy was served because another reader had it open")
	}
	if _, err := os.Stat(tier.path(d)); err == nil {
		t.Error("the damaged copy was left on disk")
	}
	done()
	for name, g := range map[string]float64{"reading": testutil.ToFloat64(tier.metrics.reading), "size": testutil.ToFloat64(tier.metrics.size)} {
		if g != 0 {
			t.Errorf("%s %v bytes, want 0", name, g)
		}
	}
}
