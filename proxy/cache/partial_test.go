package cache

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// What an earlier download left is resumed only as far as its record
// says and its bytes are there: a file shorter than its record starts
// again from its first byte, and a whole one needs nothing more.
func TestPartialResumesWhatItsRecordHolds(t *testing.T) {
	blob := []byte("the bytes of a large blob, cut and resumed")
	d := digest.FromBytes(blob)
	c := &Cache{spoolDir: filepath.Join(t.TempDir(), "spool-1")}
	leave := func(bytes []byte, written int64) {
		t.Helper()
		dir := partialDir(c.spoolDir)
		os.MkdirAll(dir, 0o700)
		name := filepath.Join(dir, d.Algorithm().String()+"-"+d.Encoded())
		os.WriteFile(name, bytes, 0o600)
		rec, _ := json.Marshal(partialRecord{Digest: d, Size: int64(len(blob)), Written: written})
		os.WriteFile(name+".json", rec, 0o600)
	}
	for _, tc := range []struct {
		name     string
		file     []byte
		written  int64
		resumeAt int64
	}{
		{"cut half way", blob[:20], 20, 20},
		{"written past its record", blob[:30], 20, 20},
		{"shorter than its record", blob[:10], 20, 0},
		{"whole", blob, int64(len(blob)), int64(len(blob))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leave(tc.file, tc.written)
			v := d.Verifier()
			p, err := c.openPartial(d, -1, v)
			if err != nil || p == nil {
				t.Fatalf("open: %v, %v", p, err)
			}
			defer p.close()
			if p.resumeAt != tc.resumeAt || p.size != int64(len(blob)) {
				t.Fatalf("resumes at %d of %d, want %d of %d", p.resumeAt, p.size, tc.resumeAt, len(blob))
			}
			if info, _ := p.file.Stat(); info.Size() != tc.resumeAt {
				t.Errorf("the file holds %d bytes to go on from, want %d", info.Size(), tc.resumeAt)
			}
			if tc.resumeAt == int64(len(blob)) && !v.Verified() {
				t.Error("a whole file's bytes were not hashed as the blob")
			}
		})
	}
	// Another process's download is left to it.
	p, err := c.openPartial(d, -1, d.Verifier())
	if err != nil || p == nil {
		t.Fatal(err)
	}
	defer p.close()
	if q, err := c.openPartial(d, -1, d.Verifier()); q != nil || err != nil {
		t.Errorf("a download another holds was opened: %v, %v", q, err)
	}
}
