package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// A reader must not get the last byte of a blob before its digest is
// verified: a client given every byte would take a corrupt blob for good.
func TestFillReaderHoldsBackLastByteUntilVerified(t *testing.T) {
	for _, tc := range []struct {
		name    string
		finish  error
		wantErr error
	}{
		{"verified", nil, io.EOF},
		{"digest mismatch", ErrDigestMismatch, ErrDigestMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			content := []byte("0123456789")
			f := newFill(digest.FromBytes(content), func(error) {}, time.Minute)
			file, err := os.CreateTemp(t.TempDir(), "spool")
			if err != nil {
				t.Fatal(err)
			}
			defer file.Close()
			f.start(file, int64(len(content)))
			file.Write(content)
			f.advance(len(content))

			r := &fillReader{f: f, ctx: context.Background()}
			buf := make([]byte, 64)
			n, err := r.Read(buf)
			if err != nil || n != len(content)-1 {
				t.Fatalf("before verification: read %d bytes, %v; want %d", n, err, len(content)-1)
			}
			got := make(chan error, 1)
			go func() {
				n, err := r.Read(buf)
				if err == nil && n == 1 {
					_, err = r.Read(buf)
				}
				got <- err
			}()
			select {
			case err := <-got:
				t.Fatalf("the last byte was released before verification (then %v)", err)
			case <-time.After(50 * time.Millisecond):
			}
			f.finish(tc.finish)
			if err := <-got; !errors.Is(err, tc.wantErr) {
				t.Fatalf("after finish(%v): %v, want %v", tc.finish, err, tc.wantErr)
			}
		})
	}
}

// A reader waiting for bytes that never come returns when its client
// goes away.
func TestFillReaderStopsWithItsContext(t *testing.T) {
	f := newFill(digest.FromString("x"), func(error) {}, time.Minute)
	file, _ := os.CreateTemp(t.TempDir(), "spool")
	defer file.Close()
	f.start(file, 100)
	ctx, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, f.wake)
	defer stop()
	done := make(chan error, 1)
	go func() { _, err := (&fillReader{f: f, ctx: ctx}).Read(make([]byte, 8)); done <- err }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reader hung after its context was cancelled")
	}
}

// A read far ahead of the download asks the upstream for the client's
// range and no more (1 MiB pieces where its end is not known), and the
// download it went ahead of is no longer abandoned when nobody reads it.
func TestFarReadsAskForTheirRange(t *testing.T) {
	const size = 64 << 20
	blob := make([]byte, size)
	for i := range blob {
		blob[i] = byte(i * 7)
	}
	for _, c := range []struct {
		name        string
		until       int64 // 0: unknown
		off, length int64
		want        [][2]int64
	}{
		{"the client's range", size, size - 51, 51, [][2]int64{{size - 51, size}}},
		{"no end known", 0, 40 << 20, 1<<20 + 10, [][2]int64{{40 << 20, 41 << 20}, {41 << 20, 42 << 20}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cancelled := make(chan error, 1)
			f := newFill(digest.FromBytes(blob), func(err error) { cancelled <- err }, 10*time.Millisecond)
			var asked [][2]int64
			f.ranged = func(_ context.Context, off, end int64) (io.ReadCloser, error) {
				asked = append(asked, [2]int64{off, end})
				return io.NopCloser(bytes.NewReader(blob[off:end])), nil
			}
			file, _ := os.CreateTemp(t.TempDir(), "spool")
			defer file.Close()
			f.start(file, size)
			f.acquire()
			r := &fillReader{f: f, ctx: context.Background(), cold: f.ranged, until: c.until}
			r.Seek(c.off, io.SeekStart)
			got, err := io.ReadAll(io.LimitReader(r, c.length))
			if err != nil || !bytes.Equal(got, blob[c.off:c.off+c.length]) {
				t.Fatalf("read %d bytes (%v), not the blob's", len(got), err)
			}
			if !slices.Equal(asked, c.want) {
				t.Errorf("asked the upstream for %v, want %v", asked, c.want)
			}
			r.closeFar()
			f.release() // the reader leaves; only the download holds the fill
			select {
			case err := <-cancelled:
				t.Fatalf("the download was cancelled: %v", err)
			case <-time.After(100 * time.Millisecond):
			}
		})
	}
}
