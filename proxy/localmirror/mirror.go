// Package localmirror is the node's own mirror, the first host its
// runtime's files name: it serves the blobs and manifests the node pulled
// before from a bounded store on the node's disk, passes everything else
// to the cache, and keeps what comes back. With the cache down it serves
// what the store holds, tags by the digest they last had, so that a node
// restarts its pods (pause included) while the cache is away.
package localmirror

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/share"
)

// Store keeps verified blobs (and manifests, which are blobs by digest
// too) on the node's disk, least recently read out first: a hot.Tier.
type Store interface {
	Get(d digest.Digest) (*os.File, fs.FileInfo, bool)
	Size(d digest.Digest) (int64, bool)
	Room(size int64) bool
	// Keep takes the verified file at path as d's copy.
	Keep(d digest.Digest, path string, size int64)
	// Dir is the store's directory: a spool under it is on the same
	// filesystem, so a verified download is moved in, not copied.
	Dir() string
}

// maxManifest bounds a manifest read from the cache, as the cache bounds
// what it reads from upstreams.
const maxManifest = 4 << 20

// Mirror serves a node's runtime.
type Mirror struct {
	cache   *url.URL
	store   Store
	book    *book
	client  *http.Client
	proxy   *httputil.ReverseProxy
	spool   string
	log     logr.Logger
	metrics *Metrics

	// Sharing (WithSharing): the nodes' key, who this node is, the
	// client for peers, and the blobs arriving, which peers may read.
	key      *share.Key
	self     share.Node
	peers    *http.Client
	mu       sync.Mutex
	arrivals map[digest.Digest]*arrival
}

// Metrics are the node's bytes by where they came from.
type Metrics struct {
	bytes      *prometheus.CounterVec
	staleTags  prometheus.Counter
	peerServed *prometheus.CounterVec
	badPeers   prometheus.Counter
}

// NewMetrics registers the mirror's metrics with r (nil: not exported).
func NewMetrics(r prometheus.Registerer) *Metrics {
	m := &Metrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depproxy_node_bytes_total",
			Help: "Bytes of blobs and manifests the node's runtime got from its local mirror, by source: store (the node's disk), peer (another node) or cache"}, []string{"source"}),
		peerServed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depproxy_node_peer_served_bytes_total",
			Help: "Bytes of blobs this node served to other nodes the cache sent it, by whether the asker said it was of this node's zone (zone) or not (other-zone)"}, []string{"to"}),
		badPeers: prometheus.NewCounter(prometheus.CounterOpts{Name: "depproxy_node_failed_peers_total",
			Help: "Peers the cache sent this node to that did not serve the blob (dead, silent, refusing, or wrong bytes), each reported to the cache"}),
		staleTags: prometheus.NewCounter(prometheus.CounterOpts{Name: "depproxy_node_stale_tags_total",
			Help: "Tags answered from the node's store by their last known digest, the cache not answering"}),
	}
	if r != nil {
		r.MustRegister(m.bytes, m.staleTags, m.peerServed, m.badPeers)
	}
	return m
}

// Option configures a Mirror.
type Option func(*Mirror)

// WithLogger sets the logger.
func WithLogger(l logr.Logger) Option { return func(m *Mirror) { m.log = l } }

// WithMetrics counts into mt.
func WithMetrics(mt *Metrics) Option { return func(m *Mirror) { m.metrics = mt } }

// WithDialTimeout bounds the connect to the cache: past it the cache is
// taken for down, and what the store holds is served.
func WithDialTimeout(d time.Duration) Option {
	return func(m *Mirror) { m.client.Transport.(*http.Transport).DialContext = dialer(d) }
}

// New returns the mirror in front of the cache at cacheURL
// (http(s)://host:port, as the node reaches it), keeping what it pulls
// in store.
func New(cacheURL string, store Store, opts ...Option) (*Mirror, error) {
	u, err := url.Parse(cacheURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("cache %q: want http(s)://host:port", cacheURL)
	}
	u.Path, u.RawQuery = "", ""
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.DialContext = dialer(time.Second)
	transport.ResponseHeaderTimeout = time.Minute
	m := &Mirror{cache: u, store: store, client: &http.Client{Transport: transport,
		// The runtime follows the cache's redirects itself.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		spool: store.Dir() + "/spool", log: logr.Discard(), arrivals: map[digest.Digest]*arrival{}}
	for _, o := range opts {
		o(m)
	}
	if m.metrics == nil {
		m.metrics = NewMetrics(nil)
	}
	// Peers are on the node network: a holder that does not connect at
	// once, or answer in seconds, is given up for the cache.
	peerTransport := http.DefaultTransport.(*http.Transport).Clone()
	peerTransport.DialContext = dialer(time.Second)
	peerTransport.ResponseHeaderTimeout = peerSilence
	m.peers = &http.Client{Transport: peerTransport}
	// A spool left by a crash holds nothing anyone verified.
	os.RemoveAll(m.spool)
	if err := os.MkdirAll(m.spool, 0o700); err != nil {
		return nil, fmt.Errorf("store %s: %w", store.Dir(), err)
	}
	held := func(d digest.Digest) bool { _, ok := store.Size(d); return ok }
	if m.book, err = openBook(store.Dir()+"/book.json", held); err != nil {
		return nil, err
	}
	m.proxy = &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(m.cache); pr.Out.Host = m.cache.Host },
		Transport: m.client.Transport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			m.log.V(1).Info("the cache does not answer", "path", r.URL.Path, "error", err.Error())
			writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "the cache does not answer, and the node's store does not hold this")
		},
	}
	return m, nil
}

func dialer(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext
}

var (
	anchoredName = regexp.MustCompile(`^` + reference.NameRegexp.String() + `$`)
	anchoredTag  = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)
)

// Close saves what the node learnt (the tags' digests), for the next
// start.
func (m *Mirror) Close() { m.book.save() }

// ServeHTTP answers the runtime: blobs and manifests from the store or
// through it, the rest passed to the cache.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, kind, ref, ok := split(r.URL.Path)
	switch {
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		writeError(w, r, http.StatusMethodNotAllowed, "UNSUPPORTED", "the node's mirror serves pulls only")
	case r.URL.Path == "/v2/" || r.URL.Path == "/v2":
		m.base(w, r)
	case !ok || !anchoredName.MatchString(name):
		m.proxy.ServeHTTP(w, r)
	case kind == "blobs":
		d, err := digest.Parse(ref)
		if err != nil {
			writeError(w, r, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("invalid digest %q", ref))
			return
		}
		m.blob(w, r, name, d)
	case kind == "manifests":
		m.manifest(w, r, name, ref)
	default:
		m.proxy.ServeHTTP(w, r)
	}
}

// split cuts /v2/<name>/<kind>/<ref>.
func split(path string) (name, kind, ref string, ok bool) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return "", "", "", false
	}
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return "", "", "", false
	}
	head, ref := rest[:i], rest[i+1:]
	j := strings.LastIndexByte(head, '/')
	if j < 0 {
		return "", "", "", false
	}
	return head[:j], head[j+1:], ref, true
}

// base answers /v2/ as the cache does (its challenge, where logins are
// on), and 200 while the cache is away: the store still serves.
func (m *Mirror) base(w http.ResponseWriter, r *http.Request) {
	resp, err := m.forward(r)
	if err != nil {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.WriteHeader(http.StatusOK)
		return
	}
	defer resp.Body.Close()
	relay(w, resp)
}

// forward asks the cache the same question.
func (m *Mirror) forward(r *http.Request) (*http.Response, error) { return m.ask(r, "") }

// ask asks the cache r's question; a node that shares signs its blob
// requests, reporting badPeer, the holder that failed it, if any.
func (m *Mirror) ask(r *http.Request, badPeer string) (*http.Response, error) {
	u := *m.cache
	u.Path, u.RawQuery = r.URL.Path, r.URL.RawQuery
	req, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	for _, h := range []string{"Accept", "Authorization", "Range", "If-Range", "User-Agent"} {
		if v := r.Header.Values(h); len(v) > 0 {
			req.Header[h] = v
		}
	}
	if m.key != nil && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
		if badPeer != "" {
			req.Header.Set(share.BadPeerHeader, badPeer)
		}
		m.key.Sign(req, m.self)
	}
	resp, err := m.client.Do(req)
	if err == nil && resp.StatusCode >= 500 {
		// A cache that answers but cannot serve is down for this.
		resp.Body.Close()
		return nil, fmt.Errorf("the cache answered %s", resp.Status)
	}
	return resp, err
}

// relay copies the cache's answer to the runtime.
func relay(w http.ResponseWriter, resp *http.Response) {
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// blob serves d from the store, else from the cache, keeping it.
func (m *Mirror) blob(w http.ResponseWriter, r *http.Request, name string, d digest.Digest) {
	repo := repoKey(r.URL.Query().Get("ns"), name)
	if !m.mayServe(w, r, repo, d) {
		return
	}
	if f, info, ok := m.store.Get(d); ok {
		defer f.Close()
		setBlobHeaders(w, d)
		http.ServeContent(w, r, "", info.ModTime(), f)
		if r.Method == http.MethodGet {
			m.metrics.bytes.WithLabelValues("store").Add(float64(info.Size()))
		}
		return
	}
	resp, err := m.forward(r)
	if err != nil {
		m.log.V(1).Info("the cache does not answer for a blob the store lacks", "digest", d, "error", err.Error())
		writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "the cache does not answer, and the node's store does not hold "+d.String())
		return
	}
	if holder := share.HolderOf(resp.Header.Get("Location")); holder != "" && m.key != nil && resp.StatusCode == http.StatusTemporaryRedirect {
		// The cache sends this node to another that holds the blob.
		resp.Body.Close()
		if m.fromPeer(r.Context(), d, resp.Header.Get("Location")) {
			m.book.learn(repo, "", d)
			m.blob(w, r, name, d) // from the store now
			return
		}
		m.metrics.badPeers.Inc()
		if resp, err = m.ask(r, holder); err != nil {
			writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "the cache does not answer, and the peer it sent this node to did not serve "+d.String())
			return
		}
	}
	defer resp.Body.Close()
	if r.Method != http.MethodGet || resp.StatusCode != http.StatusOK || r.Header.Get("Range") != "" {
		// Redirects, refusals, HEADs and ranges go through as they are:
		// only a whole blob is kept.
		relay(w, resp)
		return
	}
	if m.keepWhileServing(w, d, resp) {
		m.book.learn(repo, "", d)
	}
}

// mayServe reports whether d, when the store holds it, may be served
// under repo: it was pulled under repo before, or the cache says now that
// repo has it (a HEAD). Otherwise it has answered the runtime: the
// cache's refusal, or that the cache does not answer.
func (m *Mirror) mayServe(w http.ResponseWriter, r *http.Request, repo string, d digest.Digest) bool {
	if _, held := m.store.Size(d); !held || m.book.named(d, repo) {
		return true
	}
	head := r.Clone(r.Context())
	head.Method = http.MethodHead
	head.Header.Del("Range")
	resp, err := m.forward(head)
	if err != nil {
		writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "the cache does not answer, and the node's store holds "+d.String()+" under another repository only")
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		m.book.learn(repo, "", d)
		return true
	}
	if r.Method == http.MethodHead {
		relay(w, resp)
		return false
	}
	// The refusal with its body, as the runtime asked.
	if resp, err = m.forward(r); err != nil {
		writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "the cache does not answer")
		return false
	}
	defer resp.Body.Close()
	relay(w, resp)
	return false
}

func setBlobHeaders(w http.ResponseWriter, d digest.Digest) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("ETag", `"`+d.String()+`"`)
}

// keepWhileServing streams the cache's blob to the runtime and into the
// store at once. The last bytes go out only once the digest checks: a
// runtime never gets a complete-looking wrong blob, and the store keeps
// only what checked.
func (m *Mirror) keepWhileServing(w http.ResponseWriter, d digest.Digest, resp *http.Response) bool {
	size := resp.ContentLength
	if size >= 0 {
		m.store.Room(size)
	}
	spool, err := os.CreateTemp(m.spool, "blob-")
	if err != nil {
		m.log.Info("cannot spool a blob; it is served uncached", "digest", d, "error", err.Error())
		relay(w, resp)
		return false
	}
	defer os.Remove(spool.Name()) // moved into the store, unless it failed
	defer spool.Close()
	arrived, finish := m.arriving(d, spool.Name())
	kept := false
	defer func() { finish(kept) }()
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
		k, rerr := resp.Body.Read(buf)
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
	if client && len(held) > 0 {
		w.Write(held)
	}
	m.metrics.bytes.WithLabelValues("cache").Add(float64(n))
	m.store.Keep(d, spool.Name(), n)
	kept = true
	return true
}

// manifest serves a manifest by digest from the store; by tag, and any
// the store lacks, from the cache, keeping it and the tag's digest; with
// the cache away, a tag by its last known digest.
func (m *Mirror) manifest(w http.ResponseWriter, r *http.Request, name, ref string) {
	d, err := digest.Parse(ref)
	byDigest := err == nil
	if !byDigest && !anchoredTag.MatchString(ref) {
		writeError(w, r, http.StatusBadRequest, "MANIFEST_INVALID", fmt.Sprintf("%q is neither a tag nor a digest", ref))
		return
	}
	repo, tag := repoKey(r.URL.Query().Get("ns"), name), ref
	if byDigest {
		tag = ""
		if !m.mayServe(w, r, repo, d) {
			return
		}
		if m.serveStored(w, r, d) {
			return
		}
	}
	resp, err := m.forward(r)
	if err != nil {
		if last, ok := m.book.tag(repo, tag); ok && !byDigest && m.serveStored(w, r, last) {
			m.metrics.staleTags.Inc()
			m.log.Info("the cache does not answer: a tag served by its last known digest", "repository", repo, "tag", tag, "digest", last)
			return
		}
		writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "the cache does not answer, and the node's store does not hold "+name+":"+ref)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		relay(w, resp)
		return
	}
	if r.Method == http.MethodHead {
		// The runtime resolves a tag with a HEAD, then GETs the digest:
		// the tag's digest is learnt here.
		if got, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil && !byDigest {
			m.book.learn(repo, tag, got)
		}
		relay(w, resp)
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil || len(body) > maxManifest {
		writeError(w, r, http.StatusBadGateway, "MANIFEST_INVALID", "the cache's manifest could not be read whole")
		return
	}
	got, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		got = digest.FromBytes(body)
	}
	if got.Algorithm().FromBytes(body) != got || (byDigest && got != d) {
		m.log.Info("the cache's manifest does not match its digest; not served", "repository", repo, "ref", ref)
		writeError(w, r, http.StatusBadGateway, "MANIFEST_INVALID", "the cache's manifest does not match its digest")
		return
	}
	m.keepManifest(got, body)
	m.book.learn(repo, tag, got)
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.Header().Set("Docker-Content-Digest", got.String())
	w.WriteHeader(http.StatusOK)
	w.Write(body)
	m.metrics.bytes.WithLabelValues("cache").Add(float64(len(body)))
}

// keepManifest stores a checked manifest by its digest.
func (m *Mirror) keepManifest(d digest.Digest, body []byte) {
	if _, ok := m.store.Size(d); ok {
		return
	}
	f, err := os.CreateTemp(m.spool, "manifest-")
	if err != nil {
		return
	}
	defer os.Remove(f.Name())
	_, err = f.Write(body)
	if cerr := f.Close(); err == nil && cerr == nil {
		m.store.Keep(d, f.Name(), int64(len(body)))
	}
}

// serveStored answers a manifest from the store; false when it is not
// there (or not a manifest).
func (m *Mirror) serveStored(w http.ResponseWriter, r *http.Request, d digest.Digest) bool {
	f, info, ok := m.store.Get(d)
	if !ok {
		return false
	}
	defer f.Close()
	if info.Size() > maxManifest {
		return false
	}
	body, err := io.ReadAll(f)
	if err != nil {
		return false
	}
	mt, err := manifest.MediaType("", body)
	if err != nil {
		return false
	}
	w.Header().Set("Content-Type", mt)
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
		m.metrics.bytes.WithLabelValues("store").Add(float64(len(body)))
	}
	return true
}

// writeError sends the OCI error body (HEAD: the status alone).
func writeError(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		type ociError struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		}
		json.NewEncoder(w).Encode(struct {
			Errors []ociError `json:"errors"`
		}{[]ociError{{code, message}}})
	}
}
