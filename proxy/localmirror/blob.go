package localmirror

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/share"
)

const (
	// cacheSilence is how long the cache may send nothing of a blob
	// before the download is given up.
	cacheSilence = time.Minute
	// confirmFor is how long the cache's acceptance of a login for a
	// repository lets store hits through without asking again.
	confirmFor = time.Minute
	// acceptedFor is how long, with the cache unreachable, a login it
	// accepted for a repository is still served what the store holds.
	acceptedFor = 24 * time.Hour
	// maxConfirmed bounds the logins remembered.
	maxConfirmed = 10000
)

// blob serves d from the store, else from the peer the cache names, else
// from the cache, keeping it.
func (m *Mirror) blob(w http.ResponseWriter, r *http.Request, name string, d digest.Digest) {
	repo := repoKey(r.URL.Query().Get("ns"), name)
	if !m.mayServe(w, r, repo, d) {
		return
	}
	if f, info, done, ok := m.store.Get(d); ok {
		defer done()
		m.serveFile(w, r, d, f, info.ModTime(), "store")
		return
	}
	if r.Method != http.MethodGet || r.Header.Get("Range") != "" {
		// HEADs and ranges go through as they are: only a whole blob
		// is kept.
		m.relayFromCache(w, r, d, askOptions{})
		return
	}
	// The download goes on when the runtime hangs up: the node's pull
	// comes back for it, and peers may be following it.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	m.markAsking(d, 1)
	defer m.markAsking(d, -1)
	resp, err := m.ask(ctx, r, askOptions{})
	if err == nil && m.key != nil && resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
		// The cache refused the node's signature (another node key, a
		// clock far off): the runtime still gets the blob.
		resp.Body.Close()
		m.log.Info("the cache refused this node's signature; asking without it", "digest", d)
		m.metrics.refusedSignatures.Inc()
		resp, err = m.ask(ctx, r, askOptions{unsigned: true})
	}
	if err != nil {
		m.unavailable(w, r, d, err)
		return
	}
	if loc := resp.Header.Get("Location"); resp.StatusCode == http.StatusTemporaryRedirect && m.key != nil && share.HolderOf(loc) != "" {
		// The cache sends this node to another that holds the blob.
		resp.Body.Close()
		m.accept(r, repo) // the cache let this request have the blob
		holder := share.HolderOf(loc)
		f, report := m.fromPeer(ctx, d, loc)
		if f != nil {
			defer f.Close()
			m.book.learn(repo, "", d)
			if info, err := f.Stat(); err == nil {
				m.fromPeers.Add(info.Size())
			}
			m.reportHave(r, holder)
			m.serveFile(w, r, d, f, time.Now(), "peer")
			return
		}
		m.metrics.badPeers.Inc()
		if resp, err = m.ask(ctx, r, askOptions{report: report, holder: holder}); err != nil {
			m.unavailable(w, r, d, err)
			return
		}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		relay(w, resp)
		return
	}
	m.accept(r, repo)
	watchdog := time.AfterFunc(cacheSilence, cancel)
	defer watchdog.Stop()
	if m.keepWhileServing(w, d, &silent{r: resp.Body, watchdog: watchdog, after: cacheSilence}, resp.ContentLength) {
		m.book.learn(repo, "", d)
		m.reportHave(r, "")
	}
}

func (m *Mirror) unavailable(w http.ResponseWriter, r *http.Request, d digest.Digest, err error) {
	m.log.V(1).Info("the cache does not answer for a blob the store lacks", "digest", d, "error", err.Error())
	writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "the cache does not answer, and the node's store does not hold "+d.String())
}

// relayFromCache passes the cache's answer to r on.
func (m *Mirror) relayFromCache(w http.ResponseWriter, r *http.Request, d digest.Digest, o askOptions) {
	resp, err := m.ask(r.Context(), r, o)
	if err != nil {
		m.unavailable(w, r, d, err)
		return
	}
	defer resp.Body.Close()
	relay(w, resp)
}

// serveFile serves a checked copy of d (sendfile), counting its bytes to
// source.
func (m *Mirror) serveFile(w http.ResponseWriter, r *http.Request, d digest.Digest, f *os.File, modTime time.Time, source string) {
	setBlobHeaders(w, d)
	http.ServeContent(w, r, "", modTime, f)
	if r.Method == http.MethodGet {
		if info, err := f.Stat(); err == nil {
			m.metrics.bytes.WithLabelValues(source).Add(float64(info.Size()))
		}
	}
}

// silent reads a body, pushing its watchdog back at each read.
type silent struct {
	r        io.Reader
	watchdog *time.Timer
	after    time.Duration
}

func (s *silent) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.watchdog.Reset(s.after)
	}
	return n, err
}

// markAsking counts this node's requests to the cache for d under way:
// a peer sent here meanwhile waits for the blob's first bytes.
func (m *Mirror) markAsking(d digest.Digest, delta int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.asking[d] += delta; m.asking[d] <= 0 {
		delete(m.asking, d)
	}
}

// reportHave tells the cache, in the background, that this node has d
// whole now, fetched from holder ("" for the cache): it may be sent
// others, and holder has room again.
func (m *Mirror) reportHave(r *http.Request, holder string) {
	if m.key == nil {
		return
	}
	u := *m.cache
	u.Path, u.RawQuery = r.URL.Path, r.URL.RawQuery
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, u.String(), nil)
		if err != nil {
			return
		}
		if a := r.Header.Get("Authorization"); a != "" {
			req.Header.Set("Authorization", a)
		}
		req.Header.Set(share.HaveHeader, holder)
		m.sign(req)
		if resp, err := m.client.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
}

// mayServe reports whether d, when the store holds it, may be served to
// r under repo: it was pulled under repo before, and, where the cache
// asks for logins, the cache accepted r's login for repo lately.
// Otherwise the cache is asked now (a HEAD): what it refuses, the store
// does not serve either, and while it is unreachable the store serves
// what it served under repo before, to a login the cache accepted for it
// (in the last day). When it says no, it has answered the runtime.
func (m *Mirror) mayServe(w http.ResponseWriter, r *http.Request, repo string, d digest.Digest) bool {
	if _, held := m.store.Size(d); !held {
		return true
	}
	named := m.book.named(d, repo)
	if named && (!m.logins.Load() || m.accepted(r, repo, confirmFor)) {
		return true
	}
	head := r.Clone(r.Context())
	head.Method = http.MethodHead
	head.Header.Del("Range")
	resp, err := m.forward(head)
	if err != nil {
		if named && m.acceptedBefore(r, repo) {
			return true
		}
		writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "the cache does not answer, and the node's store may not serve "+d.String()+" to this request without it")
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		m.book.learn(repo, "", d)
		m.accept(r, repo)
		return true
	}
	if r.Method == http.MethodHead {
		relay(w, resp)
		return false
	}
	// The refusal with its body, as the runtime asked.
	m.relayFromCache(w, r, d, askOptions{})
	return false
}

// acceptedBefore: with the cache away, whether r may have what the
// store holds for repo.
func (m *Mirror) acceptedBefore(r *http.Request, repo string) bool {
	return !m.logins.Load() || m.accepted(r, repo, acceptedFor)
}

// loginKey names r's login for repo without keeping it.
func loginKey(r *http.Request, repo string) string {
	sum := sha256.Sum256([]byte(r.Header.Get("Authorization") + "\x00" + repo))
	return hex.EncodeToString(sum[:])
}

func (m *Mirror) accepted(r *http.Request, repo string, within time.Duration) bool {
	m.confirmMu.Lock()
	defer m.confirmMu.Unlock()
	at, ok := m.confirmed[loginKey(r, repo)]
	return ok && time.Since(at) < within
}

func (m *Mirror) accept(r *http.Request, repo string) {
	m.confirmMu.Lock()
	defer m.confirmMu.Unlock()
	if len(m.confirmed) >= maxConfirmed {
		for k, at := range m.confirmed {
			if time.Since(at) >= acceptedFor || len(m.confirmed) >= maxConfirmed {
				delete(m.confirmed, k)
			}
		}
	}
	m.confirmed[loginKey(r, repo)] = time.Now()
}

// probeLogins asks the cache's /v2/ once at start whether it asks for
// logins (learnt again from every answer after).
func (m *Mirror) probeLogins() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.cache.String()+"/v2/", nil)
	if err != nil {
		return
	}
	if resp, err := m.client.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") != "" {
			m.logins.Store(true)
		}
	}
}

func setBlobHeaders(w http.ResponseWriter, d digest.Digest) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("ETag", `"`+d.String()+`"`)
}

// keepWhileServing streams the cache's blob (size bytes, -1 when not
// said) to the runtime and into the store at once. The last bytes go out
// only once the digest checks: a runtime never gets a complete-looking
// wrong blob, and the store keeps only what checked. A runtime that hangs
// up does not stop it. It reports whether the store kept the blob.
func (m *Mirror) keepWhileServing(w http.ResponseWriter, d digest.Digest, body io.Reader, size int64) bool {
	if size >= 0 {
		m.store.Room(size)
	}
	spool, err := os.CreateTemp(m.spool, "blob-")
	if err != nil {
		m.log.Info("cannot spool a blob; it is served uncached", "digest", d, "error", err.Error())
		setBlobHeaders(w, d)
		io.Copy(w, body)
		return false
	}
	defer os.Remove(spool.Name()) // moved into the store, unless it failed
	defer spool.Close()
	arrived, finish := m.arriving(d, spool.Name(), size)
	checked := false
	defer func() { finish(checked) }()
	setBlobHeaders(w, d)
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)

	verifier := d.Verifier()
	var held []byte // the last chunk read, sent once the next one came
	var n int64
	buf := make([]byte, 256<<10)
	client := true // the runtime still reads
	for {
		k, rerr := body.Read(buf)
		if k > 0 {
			n += int64(k)
			if _, err := spool.Write(buf[:k]); err != nil {
				m.log.Info("spooling a blob failed", "digest", d, "error", err.Error())
				panic(http.ErrAbortHandler)
			}
			verifier.Write(buf[:k])
			arrived.advance(k)
			if client && len(held) > 0 {
				_, err := w.Write(held)
				client = err == nil
			}
			held = append(held[:0], buf[:k]...)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			m.log.Info("the cache's blob transfer was cut", "digest", d, "bytes", n, "error", rerr.Error())
			panic(http.ErrAbortHandler)
		}
	}
	if !verifier.Verified() || (size >= 0 && n != size) {
		m.log.Info("the cache's bytes do not match their digest; nothing kept", "digest", d, "bytes", n)
		panic(http.ErrAbortHandler)
	}
	checked = true
	// Kept before the last bytes go out: once the runtime has the blob,
	// the store has it too, or has said no.
	kept := m.store.Keep(d, spool.Name(), n)
	if client && len(held) > 0 {
		w.Write(held)
	}
	m.metrics.bytes.WithLabelValues("cache").Add(float64(n))
	m.fromCache.Add(n)
	return kept
}
