package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const (
	largeBlob = 8 << 30
	largeRepo = "bench/model"
	largeCuts = 3
)

// largeRows: a model-sized blob (8 GiB), cold through depproxy on the
// filesystem against the upstream's own answer (through the same front,
// token and all), in the same run; then cold again with the upstream
// cutting the download three times.
func (b *bench) largeRows() []string {
	fmt.Fprintln(os.Stderr, "an 8 GiB blob")
	d := b.pushLarge()

	start := time.Now()
	direct := measure{bytes: b.fetchUpstream(largeRepo, d), upstream: 1}
	direct.wall = time.Since(start)

	cold := b.coldLarge(d)
	every := int64(largeBlob / (largeCuts + 1))
	b.front.CutBlobsEvery(every)
	cut := b.coldLarge(d)
	b.front.Fault(nil)
	return []string{
		row("none (the upstream itself)", "GET of an 8 GiB blob", direct),
		row("depproxy fs", fmt.Sprintf("cold pull of an 8 GiB blob (%.2f× the upstream's speed)", direct.wall.Seconds()/cold.wall.Seconds()), cold),
		row("depproxy fs", fmt.Sprintf("cold pull of an 8 GiB blob, the upstream cutting it %d times", largeCuts), cut),
	}
}

// coldLarge pulls the large blob once through a new, empty cache.
func (b *bench) coldLarge(d v1.Hash) measure {
	c := b.start("depproxy fs")
	defer c.stop()
	c.resetRSS()
	b.front.Reset()
	start := time.Now()
	n := b.fetch(c, largeRepo, d)
	return measure{wall: time.Since(start), bytes: n, upstream: float64(b.front.Bytes("blobs")) / largeBlob, rss: c.peakRSS()}
}

// largeBytes is the large blob's content: the same pseudo-random bytes
// every time, so that it is made twice (hashed, then uploaded) and never
// held.
func largeBytes() io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{'d', 'e', 'p', 'p', 'r', 'o', 'x', 'y'}), largeBlob)
}

// pushLarge uploads the large blob to the upstream registry in one
// monolithic PUT, as the distribution spec allows.
func (b *bench) pushLarge() v1.Hash {
	h := sha256.New()
	if _, err := io.Copy(h, largeBytes()); err != nil {
		b.Fatal(err)
	}
	d := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
	base := "http://" + b.upstream.Addr
	resp, err := http.Post(base+"/v2/"+largeRepo+"/blobs/uploads/", "", nil)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		b.Fatalf("starting the upload: %s %v", resp.Status, err)
	}
	loc = (&url.URL{Scheme: "http", Host: b.upstream.Addr}).ResolveReference(loc)
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), largeBytes())
	req.ContentLength = largeBlob
	req.Header.Set("Content-Type", "application/octet-stream")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b.Fatalf("uploading the 8 GiB blob: %s", resp.Status)
	}
	return d
}

// fetchUpstream reads a blob from the upstream through the front, with
// the token the front hands anyone.
func (b *bench) fetchUpstream(repo string, d v1.Hash) int64 {
	req, _ := http.NewRequest(http.MethodGet, b.front.URL()+"/v2/"+repo+"/blobs/"+d.String(), nil)
	req.Header.Set("Authorization", "Bearer anonymous-pull")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{resp.Body}, make([]byte, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("the upstream's blob %s: %s %v", d, resp.Status, err)
	}
	return n
}
