package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
)

// The Content-Type of a manifest is never the upstream's or the author's
// choice when that is not a manifest type: a browser would render
// text/html or SVG from this origin.
func TestManifestContentTypeIsAManifestType(t *testing.T) {
	e := newEnv(t)
	body := `{"schemaVersion":2,"mediaType":"text/html","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` +
		strings.Repeat("a", 64) + `","size":2},"layers":[],"annotations":{"x":"<script>alert(1)</script>"}}`
	sum := sha256.Sum256([]byte(body))
	d := "sha256:" + hex.EncodeToString(sum[:])
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			return false
		}
		w.Header().Set("Content-Type", "image/svg+xml")
		w.Header().Set("Docker-Content-Digest", d)
		if r.Method == http.MethodGet {
			w.Write([]byte(body))
		}
		return true
	})
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	for _, ref := range []string{"v1", d, d} { // the tag, the digest, and the digest from storage
		resp, got := get(t, p.URL+"/v2/evil/page/manifests/"+ref, acceptAll)
		if resp.StatusCode != 200 || string(got) != body || resp.Header.Get("Docker-Content-Digest") != d {
			t.Fatalf("%s: %s, %d bytes, digest %s", ref, resp.Status, len(got), resp.Header.Get("Docker-Content-Digest"))
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/vnd.oci.image.manifest.v1+json" {
			t.Errorf("%s: served as %q", ref, ct)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no X-Content-Type-Options: nosniff", ref)
		}
	}
}

// A blob HEAD whose upstream HEAD gave no length answers without one,
// never with a negative Content-Length.
func TestBlobHeadWithoutUpstreamLength(t *testing.T) {
	e := newEnv(t)
	d := "sha256:" + strings.Repeat("b", 64)
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodHead || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Docker-Content-Digest", d)
		w.WriteHeader(http.StatusOK)
		return true
	})
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	resp, err := http.Head(p.URL + "/v2/some/repo/blobs/" + d)
	if err != nil {
		t.Fatalf("HEAD: %v (a malformed Content-Length?)", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d {
		t.Fatalf("HEAD: %s %v", resp.Status, resp.Header)
	}
	if cl := resp.Header.Get("Content-Length"); strings.HasPrefix(cl, "-") {
		t.Fatalf("Content-Length %s", cl)
	}
}

// An upstream's redirect to another service on this machine, at a
// loopback address the upstream is not on, is not followed: its bytes
// never reach the client, and it sees no request.
func TestRedirectToLoopbackServiceRefused(t *testing.T) {
	e := newEnv(t)
	var hits atomic.Int64
	secret := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write([]byte("internal secret: the admin password is hunter2"))
	}))
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	secret.Listener = l
	secret.Start()
	defer secret.Close()
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		http.Redirect(w, r, secret.URL+"/admin", http.StatusTemporaryRedirect)
		return true
	})
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil))
	d := "sha256:" + strings.Repeat("c", 64)
	resp, body := get(t, p.URL+"/v2/some/repo/blobs/"+d, "")
	if strings.Contains(string(body), "secret") || hits.Load() != 0 {
		t.Fatalf("the redirect was followed: %d requests to the other service, the client got %q", hits.Load(), body)
	}
	ociError(t, resp, body, http.StatusBadGateway, "UNAVAILABLE")
}

// Idle keep-alive connections are closed; a client that stops reading a
// blob is cut, and one that reads slowly but steadily gets all of it.
func TestConnectionTimeouts(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	blob, h := pushBlob(t, e.registry.Addr, repo, 16<<20)
	s := settings.Defaults()
	s.Upstream, s.Storage = settings.Keys(e.front.URL()), t.TempDir()
	base := proxytest.Start(t, s, server.WithTimeouts(500*time.Millisecond, time.Second)).URL
	url := base + "/v2/" + repo + "/blobs/" + h.String()
	if resp, body := get(t, url, ""); resp.StatusCode != 200 || len(body) != len(blob) {
		t.Fatalf("warming the cache: %s, %d bytes", resp.Status, len(body))
	}
	addr := strings.TrimPrefix(base, "http://")

	t.Run("an idle keep-alive connection is closed", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("idle connection: %v, want the server to close it", err)
		}
		if waited := time.Since(start); waited > 5*time.Second {
			t.Fatalf("closed after %v", waited)
		}
	})

	t.Run("a client that stops reading is cut", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.(*net.TCPConn).SetReadBuffer(64 << 10)
		fmt.Fprintf(conn, "GET /v2/%s/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n", repo, h)
		time.Sleep(3 * time.Second) // three write timeouts without reading
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.Copy(io.Discard, conn)
		if n >= int64(len(blob)) {
			t.Fatalf("read %d bytes: the stalled client was not cut", n)
		}
	})

	t.Run("a slow steady client gets the whole blob", func(t *testing.T) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		hash := sha256.New()
		var total int64
		for {
			n, err := io.CopyN(hash, resp.Body, 2<<20)
			total += n
			if err != nil {
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
		if total != int64(len(blob)) || "sha256:"+hex.EncodeToString(hash.Sum(nil)) != h.String() {
			t.Fatalf("slow client got %d of %d bytes", total, len(blob))
		}
	})
}

// slowBlobs makes the upstream send every blob slowly, counting the
// downloads running at once and the most seen.
// readAll GETs url and reads the body; a response cut before its
// headers (the download failed before any byte went out) is an error
// with nothing read, as for the client.
func readAll(url string) (int64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return io.Copy(io.Discard, resp.Body)
}

type slowBlobs struct {
	running, most, sent atomic.Int64
}

func (s *slowBlobs) fault(length int64, forever bool) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		n := s.running.Add(1)
		defer s.running.Add(-1)
		for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
		}
		if length >= 0 {
			w.Header().Set("Content-Length", fmt.Sprint(length))
		}
		chunk := make([]byte, 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				return true
			}
			s.sent.Add(int64(len(chunk)))
			w.(http.Flusher).Flush()
			if !forever {
				select {
				case <-r.Context().Done():
					return true
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}
}

func randomDigest(i int) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("not a real blob %d %d", i, time.Now().UnixNano())))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// eventually polls cond until it holds or the time is up.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// spoolFiles counts the download files under a filesystem storage's
// spool.
func spoolFiles(t *testing.T, root string) int {
	files, _ := filepath.Glob(filepath.Join(root, ".tmp", "spool-*", "blob-*"))
	return len(files)
}

// Every upstream download is bounded: cut at the size limit when the
// upstream announces none, cancelled when nobody reads it, limited in
// number, and given up when the upstream goes silent.
func TestDownloadsAreBounded(t *testing.T) {
	t.Run("a body that never ends is cut at the limit", func(t *testing.T) {
		e := newEnv(t)
		var s slowBlobs
		e.front.Fault(s.fault(-1, true))
		root := t.TempDir()
		store, _ := storage.NewFilesystem(root)
		p := startProxy(t, e.front.URL(), store, cache.WithLimits(cache.Limits{MaxBlobSize: 4 << 20}))
		n, err := readAll(p.URL + "/v2/endless/blob/blobs/" + randomDigest(0))
		if err == nil || n > 4<<20 {
			t.Fatalf("the client got %d bytes and %v: the endless body was not cut at 4 MiB", n, err)
		}
		eventually(t, 5*time.Second, "the upstream is still sending", func() bool { return s.running.Load() == 0 })
		if sent := s.sent.Load(); sent > 16<<20 {
			t.Errorf("the upstream sent %d bytes for a 4 MiB limit", sent)
		}
		eventually(t, 5*time.Second, "a spool file is left", func() bool { return spoolFiles(t, root) == 0 })
	})

	t.Run("a body longer than the cached manifest says is cut at its size", func(t *testing.T) {
		e := newEnv(t)
		repo := repoName(t)
		// An index whose image's layer descriptor says 65,536 bytes.
		content := make([]byte, 65536)
		rand.Read(content)
		img, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON),
			static.NewLayer(content, types.OCILayer))
		if err != nil {
			t.Fatal(err)
		}
		idx := ociIndex(t, img)
		pushIndex(t, e.registry.Addr, repo, "v1", idx)
		m, _ := img.Manifest()
		layer := m.Layers[0]
		if layer.Size != 65536 {
			t.Fatalf("the layer descriptor says %d bytes", layer.Size)
		}
		root := t.TempDir()
		store, _ := storage.NewFilesystem(root)
		p := startProxy(t, e.front.URL(), store) // the default limit: 64 GiB
		for _, ref := range []string{"v1", digestOf(t, img).String()} {
			if resp, body := do(t, "GET", p.URL+"/v2/"+repo+"/manifests/"+ref, http.Header{"Accept": {acceptAll}}, nil); resp.StatusCode != 200 {
				t.Fatalf("manifest %s: %s %s", ref, resp.Status, body)
			}
		}
		var s slowBlobs
		e.front.Fault(s.fault(-1, true))
		n, err := readAll(p.URL + "/v2/" + repo + "/blobs/" + layer.Digest.String())
		if err == nil || n > layer.Size {
			t.Fatalf("the client got %d bytes and %v for a layer the manifest gives %d bytes", n, err, layer.Size)
		}
		// The upstream's writes fail once the connection is closed; what
		// it counts before that went into loopback's socket buffers.
		eventually(t, 5*time.Second, "the upstream is still sending", func() bool { return s.running.Load() == 0 })
		if sent := s.sent.Load(); sent > 16<<20 {
			t.Errorf("the upstream sent %d bytes for a %d-byte layer", sent, layer.Size)
		}
		eventually(t, 5*time.Second, "a spool file is left", func() bool { return spoolFiles(t, root) == 0 })
		t.Logf("layer of %d bytes: the client got %d, the upstream sent %d", layer.Size, n, s.sent.Load())
	})

	t.Run("downloads nobody reads are cancelled", func(t *testing.T) {
		e := newEnv(t)
		var s slowBlobs
		e.front.Fault(s.fault(16<<20, false)) // larger, it would be kept to resume
		root := t.TempDir()
		store, _ := storage.NewFilesystem(root)
		p := startProxy(t, e.front.URL(), store, cache.WithLimits(cache.Limits{Abandoned: 300 * time.Millisecond}))
		for i := 0; i < 20; i++ {
			resp, err := http.Get(p.URL + "/v2/slow/blob/blobs/" + randomDigest(i))
			if err != nil {
				t.Fatal(err)
			}
			io.CopyN(io.Discard, resp.Body, 1000)
			resp.Body.Close() // the client leaves
		}
		eventually(t, 10*time.Second, fmt.Sprintf("%d abandoned downloads still running", s.running.Load()),
			func() bool { return s.running.Load() == 0 })
		eventually(t, 5*time.Second, "spool files of abandoned downloads are left", func() bool { return spoolFiles(t, root) == 0 })
	})

	t.Run("downloads are limited in number", func(t *testing.T) {
		e := newEnv(t)
		var s slowBlobs
		e.front.Fault(s.fault(1<<30, false))
		p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil), cache.WithLimits(cache.Limits{MaxDownloads: 2}))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for i := 0; i < 6; i++ {
			go func(i int) {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/v2/slow/blob/blobs/"+randomDigest(i), nil)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}(i)
		}
		eventually(t, 5*time.Second, "no download started", func() bool { return s.running.Load() > 0 })
		time.Sleep(time.Second)
		if most := s.most.Load(); most != 2 {
			t.Fatalf("%d downloads ran at once, the limit is 2", most)
		}
	})

	t.Run("a silent upstream is given up", func(t *testing.T) {
		e := newEnv(t)
		var running atomic.Int64
		e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
				return false
			}
			running.Add(1)
			defer running.Add(-1)
			w.Header().Set("Content-Length", fmt.Sprint(1<<20))
			w.Write(make([]byte, 1024))
			w.(http.Flusher).Flush()
			<-r.Context().Done() // and then nothing
			return true
		})
		p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", nil), cache.WithLimits(cache.Limits{Silence: 500 * time.Millisecond}))
		start := time.Now()
		resp, err := http.Get(p.URL + "/v2/silent/blob/blobs/" + randomDigest(0))
		if err == nil { // the headers may have gone out before the cut
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if err == nil || time.Since(start) > 10*time.Second {
			t.Fatalf("after %v: %v; want the response cut soon after the upstream went silent", time.Since(start), err)
		}
		eventually(t, 5*time.Second, "the silent connection is still open", func() bool { return running.Load() == 0 })
	})
}

// On SIGTERM (the context ending) the server first says it is not ready,
// still serving, for --shutdown-delay; only then do the listeners close.
func TestShutdownDelay(t *testing.T) {
	e := newEnv(t)
	s := settings.Defaults()
	s.Upstream, s.ShutdownDelay = settings.Keys(e.front.URL()), settings.Duration(1500*time.Millisecond)
	p := proxytest.Start(t, s)
	ready := func() int {
		resp, err := http.Get(p.Ops + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	stopped := make(chan error, 1)
	go func() { stopped <- p.Stop() }()
	eventually(t, time.Second, "/readyz still ready after the stop", func() bool { return ready() == http.StatusServiceUnavailable })
	if resp, _ := get(t, p.URL+"/v2/", ""); resp.StatusCode != 200 {
		t.Fatalf("the registry stopped serving during the delay: %s", resp.Status)
	}
	select {
	case err := <-stopped:
		t.Fatalf("the server stopped before its delay: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}
