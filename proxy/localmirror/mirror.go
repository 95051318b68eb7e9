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
	"sync/atomic"
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
	// Get opens d's copy; done closes it, and the copy is not evicted
	// while it is open (a runtime or a peer reading it).
	Get(d digest.Digest) (f *os.File, info fs.FileInfo, done func(), ok bool)
	Size(d digest.Digest) (int64, bool)
	Room(size int64) bool
	// Keep takes the verified file at path as d's copy.
	Keep(d digest.Digest, path string, size int64) bool
	// Dir is the store's directory: a spool under it is on the same
	// filesystem, so a verified download is moved in, not copied.
	Dir() string
	// Bytes is what the store holds.
	Bytes() int64
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
	asking   map[digest.Digest]int // blobs this node is asking the cache for
	serving  chan struct{}         // a slot per peer served at once
	// fromPeers and fromCache count the blob bytes kept from each.
	fromPeers, fromCache atomic.Int64

	// logins: the cache asks for them (it answered 401 with a
	// challenge), so a store hit is served only to a request the cache
	// accepts; confirmed are the logins (their hash, per repository) it
	// accepted, and when.
	logins    atomic.Bool
	confirmMu sync.Mutex
	confirmed map[string]time.Time
}

// Metrics are the node's bytes by where they came from.
type Metrics struct {
	bytes      *prometheus.CounterVec
	staleTags  prometheus.Counter
	peerServed *prometheus.CounterVec
	badPeers   prometheus.Counter
	// refusedSignatures: the cache refused this node's signature, and
	// the blob was asked for without it.
	refusedSignatures prometheus.Counter
}

// NewMetrics registers the mirror's metrics with r (nil: not exported).
func NewMetrics(r prometheus.Registerer) *Metrics {
	m := &Metrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depproxy_node_bytes_total",
			Help: "Bytes of blobs and manifests the node's runtime got from its local mirror, by source: store (the node's disk), peer (another node) or cache"}, []string{"source"}),
		peerServed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depproxy_node_peer_served_bytes_total",
			Help: "Bytes of blobs this node served to other nodes the cache sent it, by whether the asker said it was of this node's zone (zone) or not (other-zone)"}, []string{"to"}),
		badPeers: prometheus.NewCounter(prometheus.CounterOpts{Name: "depproxy_node_failed_peers_total",
			Help: "Peers the cache sent this node to that did not serve the blob (dead, silent, refusing, busy, or wrong bytes), each reported to the cache"}),
		refusedSignatures: prometheus.NewCounter(prometheus.CounterOpts{Name: "depproxy_node_refused_signatures_total",
			Help: "Blob requests whose node signature the cache refused (another node key, a clock far off), asked again without it"}),
		staleTags: prometheus.NewCounter(prometheus.CounterOpts{Name: "depproxy_node_stale_tags_total",
			Help: "Tags answered from the node's store by their last known digest, the cache not answering"}),
	}
	if r != nil {
		r.MustRegister(m.bytes, m.staleTags, m.peerServed, m.badPeers, m.refusedSignatures)
	}
	return m
}

// sign marks req as this node's, with its tally: what it holds and
// fetched, which the cache adds up for the NodeMirror's status.
func (m *Mirror) sign(req *http.Request) {
	self := m.self
	self.Tally = &share.Tally{Store: m.store.Bytes(), Peer: m.fromPeers.Load(), Cache: m.fromCache.Load(), At: time.Now().UnixMilli()}
	m.key.Sign(req, self)
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
		spool: store.Dir() + "/spool", log: logr.Discard(), arrivals: map[digest.Digest]*arrival{}, asking: map[digest.Digest]int{},
		serving: make(chan struct{}, maxPeerServes), confirmed: map[string]time.Time{}}
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
	m.peers = &http.Client{Transport: peerTransport,
		// A peer serves the blob or not: it sends nobody elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	// A spool left by a crash holds nothing anyone verified.
	os.RemoveAll(m.spool)
	if err := os.MkdirAll(m.spool, 0o700); err != nil {
		return nil, fmt.Errorf("store %s: %w", store.Dir(), err)
	}
	held := func(d digest.Digest) bool { _, ok := store.Size(d); return ok }
	if m.book, err = openBook(store.Dir()+"/book.json", held); err != nil {
		return nil, err
	}
	m.probeLogins()
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
func (m *Mirror) forward(r *http.Request) (*http.Response, error) {
	return m.ask(r.Context(), r, askOptions{})
}

// askOptions say how a question goes to the cache.
type askOptions struct {
	// report names a holder that did not serve this node, under the
	// header saying how (share.BadPeerHeader or share.BusyPeerHeader).
	report, holder string
	// unsigned: a blob request of a sharing node that goes without the
	// node's signature (the cache refused it).
	unsigned bool
}

// ask asks the cache r's question, within ctx. A node that shares signs
// its blob requests.
func (m *Mirror) ask(ctx context.Context, r *http.Request, o askOptions) (*http.Response, error) {
	u := *m.cache
	u.Path, u.RawQuery = r.URL.Path, r.URL.RawQuery
	req, err := http.NewRequestWithContext(ctx, r.Method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	for _, h := range []string{"Accept", "Authorization", "Range", "If-Range", "User-Agent"} {
		if v := r.Header.Values(h); len(v) > 0 {
			req.Header[h] = v
		}
	}
	if m.key != nil && !o.unsigned && r.Method == http.MethodGet && r.Header.Get("Range") == "" && strings.Contains(r.URL.Path, "/blobs/") {
		if o.report != "" {
			req.Header.Set(o.report, o.holder)
		}
		m.sign(req)
	}
	resp, err := m.client.Do(req)
	if err == nil && resp.StatusCode >= 500 {
		// A cache that answers but cannot serve is down for this.
		resp.Body.Close()
		return nil, fmt.Errorf("the cache answered %s", resp.Status)
	}
	if err == nil && resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") != "" && !m.logins.Swap(true) {
		m.log.Info("the cache asks for logins: what the store holds is served only to requests the cache accepts")
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
		if last, ok := m.book.tag(repo, tag); ok && !byDigest && m.acceptedBefore(r, repo) && m.serveStored(w, r, last) {
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
	m.accept(r, repo)
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
	f, info, done, ok := m.store.Get(d)
	if !ok {
		return false
	}
	defer done()
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
