package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/peers"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/token"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// replica is one `depproxy serve` process of a set that shares one
// storage and knows the others by --peers.
type replica struct {
	*proxytest.Process
	audit *syncBuffer // its standard output: the audit log, with --audit-log -
}

// startReplicas runs n replicas of one cache in front of upstreamURL,
// sharing an S3 prefix of m and a token key.
func startReplicas(t *testing.T, n int, upstreamURL string, m *testenv.MinIO, prefix string, extra ...string) []*replica {
	t.Helper()
	return startReplicasAmong(t, n, nil, upstreamURL, m, prefix, extra...)
}

// startReplicasAmong is startReplicas with more members in --peers that
// are not replicas of this cache (a rogue process).
func startReplicasAmong(t *testing.T, n int, strangers []string, upstreamURL string, m *testenv.MinIO, prefix string, extra ...string) []*replica {
	t.Helper()
	m.Storage(t, "cache", prefix) // the bucket
	_, keyPEM, err := token.NewSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "token.key")
	os.WriteFile(key, keyPEM, 0o600)
	// Each knows the others' addresses from its start: they are picked
	// first.
	var addrs, urls []string
	urls = slices.Clone(strangers)
	for i := 0; i < n; i++ {
		addrs = append(addrs, testenv.FreeAddr(t))
		urls = append(urls, "http://"+addrs[i])
	}
	var rs []*replica
	for _, addr := range addrs {
		audit := &syncBuffer{}
		p := proxytest.Serve{Listen: addr, Stdout: audit,
			Env: []string{"AWS_ACCESS_KEY_ID=" + m.AccessKey, "AWS_SECRET_ACCESS_KEY=" + m.SecretKey},
			Args: append([]string{"--advertise", "http://" + addr, "--peers", strings.Join(urls, ","), "--token-key", key,
				"--upstream", upstreamURL, "--storage", "s3://cache/" + prefix, "--s3-endpoint", m.Addr, "--s3-insecure",
				"--recheck-interval", "1m", "--spool-dir", t.TempDir()}, ownDirs(t, extra)...)}.Start(t)
		rs = append(rs, &replica{Process: p, audit: audit})
	}
	return rs
}

// ownDirs gives each replica its own directory where extra says
// $REPLICA_DIR (a --hot-dir).
func ownDirs(t *testing.T, extra []string) []string {
	out := slices.Clone(extra)
	for i, arg := range out {
		if arg == "$REPLICA_DIR" {
			out[i] = t.TempDir()
		}
	}
	return out
}

// ownerOf is the replica that owns key, as every replica computes it.
func ownerOf(rs []*replica, key string) (owner *replica, others []*replica) {
	return ownerAmong(rs, nil, key)
}

// ownerAmong is ownerOf in a ring with strangers too: owner is nil when
// one of them owns key.
func ownerAmong(rs []*replica, strangers []string, key string) (owner *replica, others []*replica) {
	urls := slices.Clone(strangers)
	for _, r := range rs {
		urls = append(urls, r.URL)
	}
	want := peers.NewRing(urls[0], urls).Owner(key)
	for _, r := range rs {
		if r.URL == want {
			owner = r
		} else {
			others = append(others, r)
		}
	}
	return owner, others
}

// getBlob reads a blob through base and checks its bytes; it retries a
// response that is cut, up to retries times, and returns how many
// attempts it took.
func getBlob(url, want string, retries int) (int, error) {
	var last error
	for attempt := 1; attempt <= retries+1; attempt++ {
		resp, err := http.Get(url)
		if err != nil {
			last = err
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			last = fmt.Errorf("attempt %d cut after %d bytes: %w", attempt, len(body), err)
			continue
		case resp.StatusCode != http.StatusOK:
			last = fmt.Errorf("attempt %d: %s %s", attempt, resp.Status, body)
			continue
		case sha(body) != want:
			return attempt, fmt.Errorf("attempt %d: %d bytes hashing to %s, want %s: a wrong blob completed", attempt, len(body), sha(body), want)
		}
		return attempt, nil
	}
	return retries + 1, last
}

// throttledBlobs is a fault that makes the upstream send real blobs in
// 256 KiB pieces every 10 ms (25 MiB/s), so that a test can act while a
// download runs; sent counts the bytes as they go.
func throttledBlobs(f *testenv.Front, sent *atomic.Int64) func(http.ResponseWriter, *http.Request) bool {
	return f.Alter("blobs", func(w http.ResponseWriter, resp *http.Response) {
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		buf := make([]byte, 256<<10)
		for {
			n, err := io.ReadFull(resp.Body, buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				w.(http.Flusher).Flush()
				sent.Add(int64(n))
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil {
				return
			}
		}
	})
}

// TestReplicasDownloadOnce: three replicas with --peers, one MinIO
// prefix: clients spread over them cost one upstream download per blob
// and one manifest GET per tag.
func TestReplicasDownloadOnce(t *testing.T) {
	e := newEnv(t)
	rs := startReplicas(t, 3, e.front.URL(), e.minio, "replicas-once")

	t.Run("24 clients of a cold 64 MiB blob", func(t *testing.T) {
		repo := repoName(t)
		data, d := pushBlob(t, e.registry.Addr, repo, 64<<20)
		want := sha(data)
		e.front.Reset()
		var wg sync.WaitGroup
		errs := make(chan error, 24)
		for i := 0; i < 24; i++ {
			wg.Go(func() {
				if _, err := getBlob(rs[i%3].URL+"/v2/"+repo+"/blobs/"+d.String(), want, 0); err != nil {
					errs <- fmt.Errorf("client %d via %s: %w", i, rs[i%3].URL, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n, b := e.front.Count("GET", "blobs"), e.front.Bytes("blobs"); n != 1 || b != int64(len(data)) {
			t.Errorf("the upstream sent the blob %d times (%d bytes, %.2f× its size); want once", n, b, float64(b)/float64(len(data)))
		}
		// Each request is counted once, by the replica its client asked,
		// not again by the owner it was forwarded to.
		var requests, pulled float64
		for _, r := range rs {
			m := scrape(t, r.Ops)
			requests += sample(m, "depproxy_proxy_requests_total", "type", "blob")
			pulled += sample(m, "depproxy_proxy_pulled_bytes_total", "type", "blob")
		}
		if requests != 24 || pulled != float64(len(data)) {
			t.Errorf("the replicas count %v blob requests and %v bytes pulled, want 24 and %d", requests, pulled, len(data))
		}
	})

	t.Run("a cold 40-layer image, one crane per replica", func(t *testing.T) {
		repo := repoName(t)
		img := ociImage(t, 40)
		pushImage(t, e.registry.Addr, repo, "v1", img)
		m, _ := img.Manifest()
		size := m.Config.Size
		for _, l := range m.Layers {
			size += l.Size
		}
		e.front.Reset()
		var wg sync.WaitGroup
		for _, r := range rs {
			wg.Go(func() {
				dir := t.TempDir()
				cmd := exec.Command(testenv.Tool(t, "crane"), "pull", "--insecure", "--format", "oci", r.Host+"/"+repo+":v1", dir)
				cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("crane pull via %s: %v\n%s", r.URL, err, out)
				}
			})
		}
		wg.Wait()
		if n := e.front.Count("GET", "manifests"); n != 1 {
			t.Errorf("%d manifest GETs upstream, want 1", n)
		}
		if b := e.front.Bytes("blobs"); b != size {
			t.Errorf("the upstream sent %d blob bytes, %.2f× the image's %d", b, float64(b)/float64(size), size)
		}
	})

	t.Run("a forged replica request", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, rs[0].URL+"/v2/", nil)
		req.Header.Set(peers.Header, fmt.Sprintf("%d:%s", time.Now().Unix(), strings.Repeat("0", 64)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ociError(t, resp, body, http.StatusUnauthorized, "UNAUTHORIZED")
	})
}

// TestReplicaLost: the replica that owns a blob dies (kill -9) while it
// downloads it for the clients of the other two; every client ends with
// the right bytes after at most 2 retries, the upstream sends the blob at
// most twice, and storage holds the whole blob or nothing. A replica told
// to stop (SIGTERM) mid-stream finishes the stream.
func TestReplicaLost(t *testing.T) {
	e := newEnv(t)
	var sent atomic.Int64
	e.front.Fault(throttledBlobs(e.front, &sent))
	rs := startReplicas(t, 3, e.front.URL(), e.minio, "replicas-lost", "--shutdown-delay", "1s")
	store := e.minio.Storage(t, "cache", "replicas-lost")

	t.Run("kill -9 the owner mid-fill", func(t *testing.T) {
		repo := repoName(t)
		data, d := pushBlob(t, e.registry.Addr, repo, 32<<20)
		want := sha(data)
		owner, others := ownerOf(rs, peers.BlobKey(registryname.Of(e.front.URL()), digest.Digest(d.String())))
		e.front.Reset()
		sent.Store(0)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		attempts := make([]int, 8)
		for i := 0; i < 8; i++ {
			wg.Go(func() {
				r := others[i%2]
				var err error
				attempts[i], err = getBlob(r.URL+"/v2/"+repo+"/blobs/"+d.String(), want, 2)
				if err != nil {
					errs <- fmt.Errorf("client %d via %s, %d attempts: %w", i, r.URL, attempts[i], err)
				}
			})
		}
		eventually(t, 20*time.Second, "the download never started", func() bool { return sent.Load() > 4<<20 })
		owner.Kill()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		t.Logf("attempts: %v; upstream blob GETs: %d", attempts, e.front.Count("GET", "blobs"))
		if slices.Max(attempts) < 2 {
			t.Error("no client's response was cut: the owner died after the download, and nothing was lost")
		}
		if n := e.front.Count("GET", "blobs"); n > 2 {
			t.Errorf("the upstream was asked for the blob %d times, want at most 2", n)
		}
		eventually(t, 10*time.Second, "the blob was not stored whole", func() bool {
			_, info, err := store.Open(context.Background(), layout.Blob(digest.Digest(d.String())))
			return err == nil && info.Size == int64(len(data))
		})
		r, _, _ := store.Open(context.Background(), layout.Blob(digest.Digest(d.String())))
		stored, _ := io.ReadAll(r)
		r.Close()
		if !bytes.Equal(stored, data) {
			t.Errorf("storage holds %d bytes that are not the blob", len(stored))
		}
	})

	t.Run("SIGTERM mid-stream", func(t *testing.T) {
		var live []*replica
		for _, r := range rs {
			if !r.Exited() {
				live = append(live, r)
			}
		}
		r := live[0]
		repo := repoName(t)
		data, d := pushBlob(t, e.registry.Addr, repo, 32<<20)
		sent.Store(0)
		done := make(chan error, 1)
		go func() {
			_, err := getBlob(r.URL+"/v2/"+repo+"/blobs/"+d.String(), sha(data), 0)
			done <- err
		}()
		eventually(t, 20*time.Second, "the download never started", func() bool { return sent.Load() > 4<<20 })
		if err := r.Terminate(t, 60*time.Second); err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("the stream in flight at SIGTERM: %v", err)
		}
	})
}

// TestRogueReplica: a process in the ring that is no replica of this
// cache answers every manifest and HEAD with its own. No replica uses,
// stores or serves its answers (it cannot prove them), pulls still get
// the upstream's bytes, and the signatures it was sent work nowhere
// else.
func TestRogueReplica(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var captured []*http.Request
	poison := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("6", 64) + `","size":2},"layers":[]}`)
	rogue := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		captured = append(captured, r.Clone(context.Background()))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", "sha256:"+sha(poison))
		w.Header().Set(peers.AnswerHeader, strings.Repeat("0", 64))
		w.Header().Set("Content-Length", strconv.Itoa(len(poison)))
		if r.Method == http.MethodGet {
			w.Write(poison)
		}
	}))
	t.Cleanup(rogue.Close)
	strangers := []string{rogue.URL}
	rs := startReplicasAmong(t, 2, strangers, e.front.URL(), e.minio, "replicas-rogue", "--recheck-interval", "0s")

	repo := repoName(t)
	registry := registryname.Of(e.front.URL())
	img := ociImage(t, 1)
	want := digestOf(t, img).String()
	var tags []string
	for i := 0; len(tags) < 3 && i < 200; i++ {
		tag := fmt.Sprintf("t%d", i)
		if owner, _ := ownerAmong(rs, strangers, peers.ManifestKey(registry, repo, manifest.TagRef(tag))); owner == nil {
			pushImage(t, e.registry.Addr, repo, tag, img)
			tags = append(tags, tag)
		}
	}
	for _, tag := range tags {
		for _, r := range rs {
			// Twice: a cold GET, then a HEAD of the cached tag.
			for range 2 {
				resp, err := http.Get(r.URL + "/v2/" + repo + "/manifests/" + tag)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || "sha256:"+sha(body) != want || resp.Header.Get("Docker-Content-Digest") != want {
					t.Fatalf("%s:%s via %s: %s, digest %s (header %s), want %s: the rogue's answer was served",
						repo, tag, r.URL, resp.Status, "sha256:"+sha(body), resp.Header.Get("Docker-Content-Digest"), want)
				}
			}
		}
	}
	mu.Lock()
	asked := slices.Clone(captured)
	mu.Unlock()
	var heads, gets int
	for _, r := range asked {
		if r.Method == http.MethodHead {
			heads++
		} else {
			gets++
		}
	}
	if gets == 0 || heads == 0 {
		t.Fatalf("the rogue was asked %d GETs and %d HEADs: the test proves nothing", gets, heads)
	}
	store := e.minio.Storage(t, "cache", "replicas-rogue")
	if _, _, err := store.Open(context.Background(), layout.Manifest(digest.Digest("sha256:"+sha(poison)))); err == nil {
		t.Error("the rogue's manifest was stored")
	}

	// What the rogue was sent, replayed to the replicas themselves.
	for _, req := range asked[:1] {
		for _, r := range rs {
			replay, _ := http.NewRequest(req.Method, r.URL+req.URL.RequestURI(), nil)
			replay.Header.Set(peers.Header, req.Header.Get(peers.Header))
			resp, err := http.DefaultClient.Do(replay)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if req.Method == http.MethodHead {
				if resp.StatusCode != http.StatusUnauthorized {
					t.Errorf("a replayed HEAD signature: %s", resp.Status)
				}
				continue
			}
			ociError(t, resp, body, http.StatusUnauthorized, "UNAUTHORIZED")
		}
	}
}
