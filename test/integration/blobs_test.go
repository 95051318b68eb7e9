package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// pushBlob writes size random bytes as a blob of repo and returns them.
func pushBlob(t *testing.T, reg, repo string, size int) ([]byte, v1.Hash) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	l := static.NewLayer(data, types.OCILayer)
	r, err := name.NewRepository(reg+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(r, l); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Digest()
	return data, d
}

func blobKey(d v1.Hash) string { return "blobs/" + d.Algorithm + "/" + d.Hex }

// TestConcurrentColdBlob: 16 clients asking at once for one 64 MiB blob
// nobody has cached cost one upstream download, and each gets the right
// bytes.
func TestConcurrentColdBlob(t *testing.T) {
	e := newEnv(t)
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			repo := repoName(t)
			data, d := pushBlob(t, e.registry.Addr, repo, 64<<20)
			want := sha(data)
			p := startProxy(t, e.front.URL(), openStorage(t, backend, e.minio))
			e.front.Reset()

			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for i := 0; i < 16; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := http.Get(p.URL + "/v2/" + repo + "/blobs/" + d.String())
					if err != nil {
						errs <- err
						return
					}
					defer resp.Body.Close()
					body, err := io.ReadAll(resp.Body)
					switch {
					case err != nil:
						errs <- err
					case resp.StatusCode != http.StatusOK:
						errs <- fmt.Errorf("status %s", resp.Status)
					case sha(body) != want:
						errs <- fmt.Errorf("got %d bytes hashing to %s", len(body), sha(body))
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if n := e.front.Count("GET", "blobs"); n != 1 {
				t.Errorf("%d upstream blob GETs, want exactly 1", n)
			}
		})
	}
}

// TestBrokenBlobTransfer: a transfer the upstream cuts, or whose bytes are
// corrupt, reaches the client as an error, leaves nothing in the cache,
// and does not stop the next pull from succeeding.
func TestBrokenBlobTransfer(t *testing.T) {
	e := newEnv(t)
	faults := map[string]func(w http.ResponseWriter, r *http.Request) bool{
		"cut mid-blob": e.front.Alter("blobs", func(w http.ResponseWriter, resp *http.Response) {
			w.Header().Set("Content-Length", resp.Header.Get("Content-Length"))
			w.WriteHeader(http.StatusOK)
			io.CopyN(w, resp.Body, resp.ContentLength/2)
			w.(http.Flusher).Flush()
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		}),
		"corrupted": e.front.Alter("blobs", func(w http.ResponseWriter, resp *http.Response) {
			body, _ := io.ReadAll(resp.Body)
			body[len(body)/2] ^= 0xff
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.Write(body)
		}),
	}
	for _, backend := range backends {
		for fname, fault := range faults {
			t.Run(backend+"/"+fname, func(t *testing.T) {
				repo := repoName(t)
				data, d := pushBlob(t, e.registry.Addr, repo, 4<<20)
				store := openStorage(t, backend, e.minio)
				p := startProxy(t, e.front.URL(), store)

				e.front.Fault(fault)
				resp, err := http.Get(p.URL + "/v2/" + repo + "/blobs/" + d.String())
				if err == nil {
					body, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					if rerr == nil && resp.StatusCode == http.StatusOK {
						t.Fatalf("the client got a complete-looking response of %d bytes (sha %s) from a broken transfer", len(body), sha(body))
					}
				}
				e.front.Fault(nil)
				waitNoFill(t, p, d)
				if _, err := store.Stat(context.Background(), blobKey(d)); !errors.Is(err, storage.ErrNotFound) {
					t.Fatalf("a broken transfer left something in the cache: %v", err)
				}

				_, body := get(t, p.URL+"/v2/"+repo+"/blobs/"+d.String(), "")
				if sha(body) != sha(data) {
					t.Fatalf("the next pull got %d bytes hashing to %s", len(body), sha(body))
				}
			})
		}
	}
}

// waitNoFill waits until the proxy is done with its blob downloads
// (stored or given up, as its downloads gauge says), so that the storage
// can be inspected.
func waitNoFill(t *testing.T, p *proxytest.Proxy, d v1.Hash) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if sample(scrape(t, p.Ops), "depproxy_proxy_downloads") == 0 {
			return
		}
		sleep()
	}
	t.Fatalf("the download of %s never ended", d)
}

// TestBlobRange: Range is honoured on a blob being downloaded and on a
// cached one.
func TestBlobRange(t *testing.T) {
	e := newEnv(t)
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			repo := repoName(t)
			data, d := pushBlob(t, e.registry.Addr, repo, 1<<20)
			p := startProxy(t, e.front.URL(), openStorage(t, backend, e.minio))
			for _, state := range []string{"cold", "cached"} {
				req, _ := http.NewRequest(http.MethodGet, p.URL+"/v2/"+repo+"/blobs/"+d.String(), nil)
				req.Header.Set("Range", "bytes=1000-1999")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusPartialContent || string(body) != string(data[1000:2000]) {
					t.Errorf("%s: Range got %s and %d bytes, want 206 and bytes 1000-1999", state, resp.Status, len(body))
				}
				if state == "cold" {
					waitNoFill(t, p, d)
				}
			}
		})
	}
}

// TestStorageDown: with MinIO stopped, pulls still succeed, straight from
// the upstream, and the storage errors are counted.
func TestStorageDown(t *testing.T) {
	reg := testenv.StartRegistry(t)
	m := testenv.StartMinIO(t)
	repo := repoName(t)
	pushIndex(t, reg.Addr, repo, "v1", ociIndex(t, ociImage(t, 2), ociImage(t, 2)))
	wantRoot, want := pullAll(t, reg.URL(), repo, "v1")

	p := startProxy(t, reg.URL(), openStorage(t, "s3", m))
	m.Stop()
	gotRoot, got := pullAll(t, p.URL, repo, "v1")
	if gotRoot != wantRoot || len(got) != len(want) {
		t.Fatalf("with storage down: root %s (want %s), %d objects (want %d)", gotRoot, wantRoot, len(got), len(want))
	}
	if n := sample(scrape(t, p.Ops), "depproxy_storage_errors_total"); n == 0 {
		t.Error("depproxy_storage_errors_total counts no storage errors while MinIO is down")
	}

	// Back up: the next pull caches again.
	m.Start()
	pullAll(t, p.URL, repo, "v1")
}

// TestS3Redirect: with redirects on, a cached blob is a 307 to a
// presigned MinIO URL that serves the right bytes; an uncached one still
// streams.
func TestS3Redirect(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	data, d := pushBlob(t, e.registry.Addr, repo, 1<<20)
	p := startProxy(t, e.front.URL(), openStorage(t, "s3", e.minio), cache.WithRedirect(true))
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	url := p.URL + "/v2/" + repo + "/blobs/" + d.String()

	resp, err := noFollow.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || sha(body) != sha(data) {
		t.Fatalf("cold pull: %s, %d bytes; want the blob streamed", resp.Status, len(body))
	}
	waitNoFill(t, p, d)

	resp, err = noFollow.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.Contains(loc, e.minio.Addr) {
		t.Fatalf("cached pull: %s to %q; want a 307 to MinIO", resp.Status, loc)
	}
	_, body = get(t, url, "")
	if sha(body) != sha(data) {
		t.Fatalf("following the redirect gave %d bytes hashing to %s", len(body), sha(body))
	}
}

// A warm blob on S3 goes from the storage's connection to the client's
// (splice) whole and unchanged: a plain GET, a Range, and a client that
// hangs up halfway leaving nothing stuck.
func TestWarmBlobFromS3(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	data, d := pushBlob(t, e.registry.Addr, repo, 24<<20)
	p := startProxy(t, e.front.URL(), openStorage(t, "minio", e.minio))
	url := p.URL + "/v2/" + repo + "/blobs/" + d.String()
	get(t, url, "")
	waitNoFill(t, p, d)
	eventually(t, 10*time.Second, "the blob was not stored", func() bool {
		_, err := p.Server.Storage().Stat(context.Background(), blobKey(d))
		return err == nil
	})
	e.front.Reset()
	for i := 0; i < 3; i++ {
		resp, body := get(t, url, "")
		if resp.StatusCode != 200 || !bytes.Equal(body, data) || resp.ContentLength != int64(len(data)) {
			t.Fatalf("warm GET %d: %s, %d bytes (Content-Length %d), equal %v", i, resp.Status, len(body), resp.ContentLength, bytes.Equal(body, data))
		}
	}
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Range", "bytes=1000-")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[1000:]) {
		t.Fatalf("Range: %s, %d bytes", resp.Status, len(body))
	}
	for i := 0; i < 4; i++ {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		io.CopyN(io.Discard, resp.Body, 1<<20)
		resp.Body.Close() // hangs up
	}
	if resp, body := get(t, url, ""); resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("after clients hung up: %s, %d bytes", resp.Status, len(body))
	}
	if n := e.front.Count("GET", "blobs"); n != 0 {
		t.Errorf("warm GETs asked the upstream %d times", n)
	}
}

// A lazy-pulling snapshotter reads a cold layer's footer first. On an
// upstream sending about 1 MB/s, a range of the last MiB of a 64 MiB
// blob answers 206 with the right bytes within seconds, from a ranged
// upstream request, while the one full download goes on and is stored;
// a multi-range request is answered right as well. The ranges are
// counted cold, with their time to first byte; once stored, warm.
func TestColdRangeFarAhead(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	const size = 64 << 20
	data, d := pushBlob(t, e.registry.Addr, repo, size)
	// The whole-blob download trickles; ranged requests do not.
	e.front.TrickleBlobs()
	defer e.front.Fault(nil)
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	url := p.URL + "/v2/" + repo + "/blobs/" + d.String()

	// The download starts (a client reading the head), then the footer.
	head, _ := http.NewRequest(http.MethodGet, url, nil)
	head.Header.Set("Range", "bytes=0-1023")
	resp, err := http.DefaultClient.Do(head)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[:1024]) {
		t.Fatalf("the head: %s, %d bytes", resp.Status, len(got))
	}
	began := time.Now()
	tail, _ := http.NewRequest(http.MethodGet, url, nil)
	tail.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", size-1<<20, size-1))
	resp, err = http.DefaultClient.Do(tail)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(began)
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[size-1<<20:]) {
		t.Fatalf("the tail: %s, %d bytes", resp.Status, len(got))
	}
	if took > 5*time.Second {
		t.Errorf("the cold tail took %v: it waited for the download", took)
	}
	// Two ranges at once, one the spool has and one far ahead.
	multi, _ := http.NewRequest(http.MethodGet, url, nil)
	multi.Header.Set("Range", fmt.Sprintf("bytes=0-9,%d-%d", size-10, size-1))
	resp, err = http.DefaultClient.Do(multi)
	if err != nil {
		t.Fatal(err)
	}
	_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	parts := multipart.NewReader(resp.Body, params["boundary"])
	var ranges [][]byte
	for {
		part, err := parts.NextPart()
		if err != nil {
			break
		}
		b, _ := io.ReadAll(part)
		ranges = append(ranges, b)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || len(ranges) != 2 || !bytes.Equal(ranges[0], data[:10]) || !bytes.Equal(ranges[1], data[size-10:]) {
		t.Fatalf("two ranges: %s, %d parts", resp.Status, len(ranges))
	}
	if n := sample(scrape(t, p.Ops), "depproxy_proxy_cold_ranges_total"); n < 1 {
		t.Errorf("depproxy_proxy_cold_ranges_total is %v", n)
	}
	m := scrape(t, p.Ops)
	if n := sample(m, "depproxy_proxy_ranges_total", "state", "cold"); n != 3 {
		t.Errorf("depproxy_proxy_ranges_total{state=cold} is %v, want 3", n)
	}
	if n := sample(m, "depproxy_proxy_range_first_byte_seconds", "state", "cold"); n != 3 {
		t.Errorf("depproxy_proxy_range_first_byte_seconds{state=cold} counts %v, want 3", n)
	}
	// The one download goes on, and is stored.
	eventually(t, 150*time.Second, "the download stored", func() bool {
		_, err := p.Server.Storage().Stat(context.Background(), blobKey(d))
		return err == nil
	})
	if n := e.front.Count(http.MethodGet, "blobs") - int(sample(scrape(t, p.Ops), "depproxy_proxy_cold_ranges_total")); n != 1 {
		t.Errorf("%d whole downloads of the blob, want 1", n)
	}
	_, body := get(t, url, "")
	if !bytes.Equal(body, data) {
		t.Fatal("the stored blob is not the blob")
	}
	resp, err = http.DefaultClient.Do(tail)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[size-1<<20:]) {
		t.Fatalf("the tail once stored: %s, %d bytes", resp.Status, len(got))
	}
	if n := sample(scrape(t, p.Ops), "depproxy_proxy_ranges_total", "state", "warm"); n != 1 {
		t.Errorf("depproxy_proxy_ranges_total{state=warm} is %v, want 1", n)
	}
}

// A download the upstream cuts half way is resumed where it stopped, with
// a ranged request: the client gets the whole blob, checked, the
// upstream sends it about once, and the blob is cached. Two clients
// waiting on the one download both get it.
func TestCutDownloadResumes(t *testing.T) {
	e := newEnv(t)
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			repo := repoName(t)
			const size = 8 << 20
			data, d := pushBlob(t, e.registry.Addr, repo, size)
			p := startProxy(t, e.front.URL(), openStorage(t, backend, e.minio))
			var cuts atomic.Int32
			cutHalfWay := halfThenCut(e.front)
			e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method != http.MethodGet || r.Header.Get("Range") != "" || testenv.PathKind(r.URL.Path) != "blobs" || cuts.Add(1) > 1 {
					return false
				}
				return cutHalfWay(w, r)
			})
			t.Cleanup(func() { e.front.Fault(nil) })
			e.front.Reset()

			pullBlobAtOnce(t, p.URL+"/v2/"+repo+"/blobs/"+d.String(), 2, data)
			if got := e.front.Bytes("blobs"); got > size*11/10 {
				t.Errorf("the upstream sent %d bytes for a %d-byte blob: the download started again instead of resuming", got, size)
			}
			if n := e.front.Count(http.MethodGet, "blobs"); n != 2 {
				t.Errorf("%d upstream blob GETs, want the cut one and its resumption", n)
			}
			waitBlobCached(t, e.front, p.URL+"/v2/"+repo+"/blobs/"+d.String())
		})
	}
}

// TestCutDownloadWithoutRanges: an upstream that cuts a download and
// serves no ranges (it answers a Range with the whole blob): the download
// starts again from the beginning, read past what was had, and every
// client gets the right bytes.
func TestCutDownloadWithoutRanges(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	const size = 8 << 20
	data, d := pushBlob(t, e.registry.Addr, repo, size)
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	var cuts, ranged atomic.Int32
	cutHalfWay := halfThenCut(e.front)
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || testenv.PathKind(r.URL.Path) != "blobs" {
			return false
		}
		if r.Header.Get("Range") != "" {
			ranged.Add(1)
			r.Header.Del("Range") // the registry answers with the whole blob
			return false
		}
		return cuts.Add(1) == 1 && cutHalfWay(w, r)
	})
	t.Cleanup(func() { e.front.Fault(nil) })
	e.front.Reset()

	pullBlobAtOnce(t, p.URL+"/v2/"+repo+"/blobs/"+d.String(), 2, data)
	if ranged.Load() == 0 {
		t.Fatal("the cut download was not resumed with a range")
	}
	// The half, what the upstream sent of its whole answer to the range
	// before the cache hung up, and the whole again.
	if got := e.front.Bytes("blobs"); got > size*26/10 {
		t.Errorf("the upstream sent %d bytes for a %d-byte blob cut half way: more than the half and the whole twice", got, size)
	}
	waitBlobCached(t, e.front, p.URL+"/v2/"+repo+"/blobs/"+d.String())
}

// halfThenCut is a fault that sends half of a blob's answer and closes
// the connection.
func halfThenCut(f *testenv.Front) func(http.ResponseWriter, *http.Request) bool {
	return f.Alter("blobs", func(w http.ResponseWriter, resp *http.Response) {
		w.Header().Set("Content-Length", resp.Header.Get("Content-Length"))
		w.WriteHeader(http.StatusOK)
		io.CopyN(w, resp.Body, resp.ContentLength/2)
		testenv.Cut(w)
	})
}

// pullBlobAtOnce has clients GET the blob at url at once, each expecting
// want.
func pullBlobAtOnce(t *testing.T, url string, clients int, want []byte) {
	t.Helper()
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			resp, err := http.Get(url)
			if err != nil {
				t.Error(err)
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
				t.Errorf("through a cut download: %s, %d bytes, %v", resp.Status, len(body), err)
			}
		})
	}
	wg.Wait()
}

// waitBlobCached waits until the blob at url is served without asking
// the upstream behind front.
func waitBlobCached(t *testing.T, front *testenv.Front, url string) {
	t.Helper()
	front.Reset()
	eventually(t, 10*time.Second, "the blob is not cached", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && front.Count(http.MethodGet, "blobs") == 0
	})
}

// TestLargeBlobCutEvery256MiB: a 1 GiB blob from an upstream that cuts
// every answer after 256 MiB, for one client and for eight at once: each
// gets the whole blob, checked, and the upstream sends it about once.
func TestLargeBlobCutEvery256MiB(t *testing.T) {
	const size, cutEvery = 1 << 30, 256 << 20
	e := newEnv(t)
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	e.front.CutBlobsEvery(cutEvery)
	t.Cleanup(func() { e.front.Fault(nil) })
	for _, clients := range []int{1, 8} {
		t.Run(fmt.Sprintf("%d clients", clients), func(t *testing.T) {
			repo := repoName(t)
			data, d := pushBlob(t, e.registry.Addr, repo, size)
			want := sha(data)
			data = nil
			e.front.Reset()
			var wg sync.WaitGroup
			for range clients {
				wg.Go(func() {
					resp, err := http.Get(p.URL + "/v2/" + repo + "/blobs/" + d.String())
					if err != nil {
						t.Error(err)
						return
					}
					defer resp.Body.Close()
					h := sha256.New()
					n, err := io.Copy(h, resp.Body)
					if got := hex.EncodeToString(h.Sum(nil)); err != nil || n != size || got != want {
						t.Errorf("%s, %d bytes hashing to %s, %v", resp.Status, n, got, err)
					}
				})
			}
			wg.Wait()
			if got := e.front.Bytes("blobs"); got > size*105/100 {
				t.Errorf("the upstream sent %.2f× the blob", float64(got)/size)
			}
		})
	}
}

// TestDownloadResumesAfterARestart: the proxy is killed while a 1 GiB
// blob is 60% downloaded; started again on the same storage, it hashes
// what it had written again, asks the upstream for the rest only, and
// serves the whole blob, checked. The upstream sends it about once.
func TestDownloadResumesAfterARestart(t *testing.T) {
	const size = 1 << 30
	e := newEnv(t)
	repo := repoName(t)
	data, d := pushBlob(t, e.registry.Addr, repo, size)
	want := sha(data)
	data = nil
	// The upstream stops at 60% of a whole answer, and holds the
	// connection: the proxy is killed there. Ranges it serves whole.
	var ranged atomic.Int32
	killed := make(chan struct{})
	stall := e.front.Alter("blobs", func(w http.ResponseWriter, resp *http.Response) {
		w.Header().Set("Content-Length", resp.Header.Get("Content-Length"))
		w.WriteHeader(http.StatusOK)
		io.CopyN(w, resp.Body, resp.ContentLength*6/10)
		w.(http.Flusher).Flush()
		<-killed
	})
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || testenv.PathKind(r.URL.Path) != "blobs" {
			return false
		}
		if r.Header.Get("Range") != "" {
			ranged.Add(1)
			return false
		}
		return stall(w, r)
	})
	t.Cleanup(func() { e.front.Fault(nil) })
	e.front.Reset()
	storage := t.TempDir()
	args := []string{"--upstream", "docker.io=" + e.front.URL(), "--storage", storage}
	first := proxytest.StartBinary(t, args...)
	url := "/v2/" + repo + "/blobs/" + d.String()

	var read atomic.Int64
	go func() {
		resp, err := http.Get(first.URL + url)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		io.Copy(writerFunc(func(p []byte) (int, error) { read.Add(int64(len(p))); return len(p), nil }), resp.Body)
	}()
	eventually(t, time.Minute, "the client did not get 55% of the blob", func() bool { return read.Load() >= size*55/100 })
	first.Kill()
	close(killed)
	sentBefore := e.front.Bytes("blobs")

	second := proxytest.StartBinary(t, args...)
	resp, err := http.Get(second.URL + url)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if got := hex.EncodeToString(h.Sum(nil)); err != nil || n != size || got != want {
		t.Fatalf("after the restart: %s, %d bytes hashing to %s, %v", resp.Status, n, got, err)
	}
	total := e.front.Bytes("blobs")
	t.Logf("the upstream sent %.2f× the blob before the kill, %.2f× in all, %d ranged requests", float64(sentBefore)/size, float64(total)/size, ranged.Load())
	if ranged.Load() == 0 || !strings.Contains(second.Log.String(), "resuming the blob's download") {
		t.Errorf("the download was not resumed:\n%s", second.Log.String())
	}
	if total > size*110/100 {
		t.Errorf("the upstream sent %.2f× the blob: over 1.1×", float64(total)/size)
	}
	waitBlobCached(t, e.front, second.URL+url)
}

// writerFunc is a function as an io.Writer.
type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
