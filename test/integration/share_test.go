package integration

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/share"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// nodeAgent is one `depproxy node` process with a store, sharing.
type nodeAgent struct {
	name, zone string
	local, ops string // the runtime's mirror, /metrics
	share      string // where peers fetch
	cmd        *exec.Cmd
	logs       syncBuffer
	killed     bool // by the test, on purpose
}

// startAgents starts n agents spread over zones, all sharing through the
// cache at endpoint with the node key in keyFile; each is stopped by its
// PID when the test ends.
func startAgents(t *testing.T, n int, zones []string, endpoint, keyFile string) []*nodeAgent {
	t.Helper()
	var agents []*nodeAgent
	for i := 0; i < n; i++ {
		a := &nodeAgent{name: fmt.Sprintf("node-%02d", i), zone: zones[i%len(zones)],
			local: testenv.FreeAddr(t), ops: testenv.FreeAddr(t), share: testenv.FreeAddr(t)}
		a.cmd = exec.Command(proxytest.Binary(t), "node", "--endpoint", endpoint, "--registry", "docker.io",
			"--dir", t.TempDir(), "--interval", "200ms", "--listen", a.ops,
			"--store", t.TempDir(), "--store-size", "1Gi", "--local-listen", a.local,
			"--share-listen", a.share, "--advertise", "http://"+a.share,
			"--node-name", a.name, "--zone", a.zone, "--node-key", keyFile)
		a.cmd.Stderr = &a.logs
		if err := a.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.cmd.Process.Kill(); a.cmd.Wait() })
		agents = append(agents, a)
	}
	for _, a := range agents {
		eventually(t, 20*time.Second, a.name+" does not answer:\n"+a.logs.String(), func() bool {
			resp, err := http.Get("http://" + a.local + "/v2/")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil
		})
	}
	return agents
}

func nodeKeyFile(t *testing.T) string {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	path := filepath.Join(t.TempDir(), "node.key")
	if err := os.WriteFile(path, key, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// rollout has every agent's node pull repo:v1 at once, and checks each
// got want, but for the agents during (which runs meanwhile, if set)
// killed.
func rollout(t *testing.T, agents []*nodeAgent, repo string, want v1.Hash, during func()) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(agents))
	for i, a := range agents {
		wg.Go(func() {
			got, err := testenv.PullImage(a.local, repo, ":v1")
			if err == nil && got != want {
				err = fmt.Errorf("got %s, want %s", got, want)
			}
			errs[i] = err
		})
	}
	if during != nil {
		during()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil && !agents[i].killed {
			t.Errorf("%s: %v\n%s", agents[i].name, err, agents[i].logs.String())
		}
	}
}

// blobBytes is the size of an image's layers and config.
func blobBytes(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	n := m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

// A rollout: every node pulls one cold image at once through its agent.
// The upstream sends it once; the cache sends it about once per zone, the
// nodes of a zone fetching it from each other, with the cache's tickets.
func TestNodesShareWhatTheyPulled(t *testing.T) {
	e := newEnv(t)
	img, err := random.Image(1<<20, 4)
	if err != nil {
		t.Fatal(err)
	}
	const repo = "team/rollout"
	pushImage(t, e.registry.Addr, repo, "v1", img)
	want := digestOf(t, img)
	size := blobBytes(t, img)
	key := nodeKeyFile(t)
	cache := proxytest.StartBinary(t, "--upstream", "docker.io="+e.front.URL(), "--storage", t.TempDir(), "--node-key", key)
	// The cache's egress, metered.
	egress := testenv.StartFront(t, cache.URL)

	zones := []string{"zone-a", "zone-b", "zone-c"}
	agents := startAgents(t, 12, zones, egress.URL(), key)
	e.front.Reset()
	egress.Reset()

	rollout(t, agents, repo, want, nil)
	upstream, fromCache := e.front.Bytes("blobs"), egress.Bytes("blobs")
	var fromPeers, failed float64
	for _, a := range agents {
		fromPeers += nodeBytes(t, a.ops, "peer")
		failed += nodeMetric(t, a.ops, "depproxy_node_failed_peers_total")
	}
	t.Logf("image %d bytes; upstream %.2f×, cache egress %.2f× (%d zones), from peers %.2f×, %.0f failed peers",
		size, float64(upstream)/float64(size), float64(fromCache)/float64(size), len(zones), fromPeers/float64(size), failed)
	if upstream != size {
		t.Errorf("the upstream sent %d bytes of blobs, the image has %d", upstream, size)
	}
	if limit := int64(1.2 * float64(len(zones)) * float64(size)); fromCache > limit {
		t.Errorf("the cache sent %d bytes of blobs to 12 nodes in %d zones: over %d (1.2 × zones × image)\ncache:\n%s", fromCache, len(zones), limit, cache.Log.String())
	}
	if fromPeers == 0 {
		t.Error("no node fetched anything from another")
	}
	var inZone, crossZone float64
	for _, a := range agents {
		inZone += nodeMetric(t, a.ops, `depproxy_node_peer_served_bytes_total{to="zone"}`)
		crossZone += nodeMetric(t, a.ops, `depproxy_node_peer_served_bytes_total{to="other-zone"}`)
	}
	if inZone == 0 || crossZone != 0 {
		t.Errorf("peers served %.0f bytes within their zone and %.0f across zones; want none across", inZone, crossZone)
	}
	checkNodesTold(t, cache.Ops, agents, fromPeers, float64(fromCache))
}

// checkNodesTold checks what the agents told the cache at ops (a
// replica's metrics port) against what they counted themselves: its
// summary, which the operator puts in the NodeMirror's status, adds up
// their stores and where their blob bytes came from (fromPeers,
// fromCache), and the egress the redirects saved is what the nodes got
// from peers. The agents tell it in the background: it is waited for.
// (fromCache, metered at the cache, also holds the redirects' short
// bodies: the nodes' tally of the cache's blob bytes is within 1% of it.)
func checkNodesTold(t *testing.T, ops string, agents []*nodeAgent, fromPeers, fromCache float64) {
	t.Helper()
	var stored float64
	for _, a := range agents {
		stored += nodeMetric(t, a.ops, "depproxy_proxy_hot_bytes")
	}
	var got *report.Sharing
	var saved float64
	blobsFromCache := func(n int64) bool { return float64(n) <= fromCache && float64(n) >= 0.99*fromCache }
	told := func() bool {
		return got != nil && got.Nodes == len(agents) && float64(got.PeerBytes) == fromPeers &&
			blobsFromCache(got.CacheBytes) && float64(got.StoreBytes) == stored && saved == fromPeers
	}
	for deadline := time.Now().Add(10 * time.Second); !told() && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var sum report.Summary
		resp, err := http.Get(ops + report.SummaryPath)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&sum)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		got, saved = sum.Sharing, nodeMetric(t, strings.TrimPrefix(ops, "http://"), "depproxy_share_saved_bytes_total")
	}
	if got == nil || got.Nodes != len(agents) || float64(got.PeerBytes) != fromPeers || !blobsFromCache(got.CacheBytes) || float64(got.StoreBytes) != stored {
		t.Errorf("the cache's summary of %d nodes: %+v; want %.0f bytes from peers, %.0f from the cache, %.0f stored", len(agents), got, fromPeers, fromCache, stored)
	}
	if saved != fromPeers {
		t.Errorf("depproxy_share_saved_bytes_total is %.0f; the nodes got %.0f bytes from peers", saved, fromPeers)
	}
}

// Nodes that fail their peers cost a retry, never a failed or wrong
// pull: a holder that sends wrong bytes for every blob, one that accepts
// and says nothing, and two agents killed in the middle of the rollout.
// The bad holders are dropped by the cache.
func TestNodesSurviveBadPeers(t *testing.T) {
	e := newEnv(t)
	img, err := random.Image(512<<10, 4)
	if err != nil {
		t.Fatal(err)
	}
	const repo = "team/rollout"
	pushImage(t, e.registry.Addr, repo, "v1", img)
	want := digestOf(t, img)
	keyFile := nodeKeyFile(t)
	secret, _ := os.ReadFile(keyFile)
	key, err := share.NewKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	cache := proxytest.StartBinary(t, "--upstream", "docker.io="+e.front.URL(), "--storage", t.TempDir(), "--node-key", keyFile)
	base, ops := cache.URL, cache.Ops
	egress := testenv.StartFront(t, base)

	// The bad holders: one lies, one stalls. Each asks the cache for
	// every blob, signed, and so becomes a holder of it in zone-a.
	liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("not the blob you want ", 1000)))
	}))
	t.Cleanup(liar.Close)
	stall := make(chan struct{})
	staller := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stall:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(stall); staller.Close() })
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	blobs := []v1.Hash{m.Config.Digest}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest)
	}
	askAs := func(n share.Node, d v1.Hash) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/blobs/"+d.String(), nil)
		key.Sign(req, n)
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return share.HolderOf(resp.Header.Get("Location"))
	}
	bad := []share.Node{{Name: "liar", Zone: "zone-a", Peer: liar.URL}, {Name: "staller", Zone: "zone-a", Peer: staller.URL}}
	for _, n := range bad {
		for _, d := range blobs {
			askAs(n, d)
		}
	}

	agents := startAgents(t, 10, []string{"zone-a", "zone-b"}, egress.URL(), keyFile)
	// The cache sends slowly: the rollout lasts long enough to lose
	// nodes in the middle of it.
	egress.TrickleBlobs()
	killed := map[int]bool{0: true, 1: true}
	rollout(t, agents, repo, want, func() {
		time.Sleep(300 * time.Millisecond)
		for i := range killed {
			agents[i].killed = true
			agents[i].cmd.Process.Kill()
		}
	})
	var failed float64
	for i, a := range agents {
		if !killed[i] {
			failed += nodeMetric(t, a.ops, "depproxy_node_failed_peers_total")
		}
	}
	if failed == 0 {
		t.Error("no agent was sent to a bad holder: the test shows nothing")
	}
	if dropped := nodeMetric(t, strings.TrimPrefix(ops, "http://"), "depproxy_share_dropped_holders_total"); dropped == 0 {
		t.Error("the cache dropped no holder")
	}
	// A new node of zone-a is never sent to the holders that failed.
	for i := 0; i < 8; i++ {
		for _, d := range blobs {
			if h := askAs(share.Node{Name: fmt.Sprintf("late-%d", i), Zone: "zone-a", Peer: "http://127.0.0.1:1"}, d); h == "liar" || h == "staller" {
				t.Fatalf("after the rollout, a node is still sent to %s for %s", h, d)
			}
		}
	}
}

// nodeMetric is a counter's value on a /metrics page (summed over its
// labels).
func nodeMetric(t *testing.T, ops, metric string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, metric+" ") || strings.HasPrefix(line, metric+"{") {
			var v float64
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			sum += v
		}
	}
	return sum
}

// service spreads requests over the replicas as a Kubernetes Service
// does, and meters the blob bytes they send out.
type service struct {
	srv     *httptest.Server
	mu      sync.Mutex
	next    int
	blobOut int64
}

func startService(t *testing.T, urls []string) *service {
	s := &service{}
	proxies := make([]*httputil.ReverseProxy, len(urls))
	for i, u := range urls {
		target, _ := url.Parse(u)
		proxies[i] = httputil.NewSingleHostReverseProxy(target)
	}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		p := proxies[s.next%len(proxies)]
		s.next++
		s.mu.Unlock()
		if strings.Contains(r.URL.Path, "/blobs/") {
			w = &meteredWriter{ResponseWriter: w, s: s}
		}
		p.ServeHTTP(w, r)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *service) blobBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blobOut
}

type meteredWriter struct {
	http.ResponseWriter
	s *service
}

func (m *meteredWriter) Write(p []byte) (int, error) {
	n, err := m.ResponseWriter.Write(p)
	m.s.mu.Lock()
	m.s.blobOut += int64(n)
	m.s.mu.Unlock()
	return n, err
}

// Three replicas on MinIO behind one Service: whichever replica a node's
// request lands on, the replica that owns the node's zone keeps that
// zone's holders, so the cache still sends about one image per zone.
func TestNodesShareThroughReplicas(t *testing.T) {
	e := newEnv(t)
	img, err := random.Image(1<<20, 4)
	if err != nil {
		t.Fatal(err)
	}
	const repo = "team/rollout"
	pushImage(t, e.registry.Addr, repo, "v1", img)
	want, size := digestOf(t, img), blobBytes(t, img)
	key := nodeKeyFile(t)
	rs := startReplicas(t, 3, e.front.URL(), testenv.StartMinIO(t), "share", "--node-key", key)
	var urls []string
	for _, r := range rs {
		urls = append(urls, r.URL)
	}
	svc := startService(t, urls)
	zones := []string{"zone-a", "zone-b", "zone-c"}
	agents := startAgents(t, 12, zones, svc.srv.URL, key)
	e.front.Reset()

	rollout(t, agents, repo, want, nil)
	upstream, fromCache := e.front.Bytes("blobs"), svc.blobBytes()
	t.Logf("image %d bytes; upstream %.2f×, the replicas' egress %.2f× (%d zones)", size, float64(upstream)/float64(size), float64(fromCache)/float64(size), len(zones))
	if upstream != size {
		t.Errorf("the upstream sent %d bytes of blobs, the image has %d", upstream, size)
	}
	if limit := int64(1.2 * float64(len(zones)) * float64(size)); fromCache > limit {
		t.Errorf("the replicas sent %d bytes of blobs to 12 nodes in %d zones: over %d (1.2 × zones × image)", fromCache, len(zones), limit)
	}
	// Each node's report that it has a blob is answered by one replica,
	// which counts what a peer saved: over the replicas, once.
	var fromPeers, saved float64
	for _, a := range agents {
		fromPeers += nodeBytes(t, a.ops, "peer")
	}
	for deadline := time.Now().Add(10 * time.Second); saved != fromPeers && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		saved = 0
		for _, r := range rs {
			saved += nodeMetric(t, strings.TrimPrefix(r.Ops, "http://"), "depproxy_share_saved_bytes_total")
		}
	}
	if fromPeers == 0 || saved != fromPeers {
		t.Errorf("the replicas counted %.0f bytes saved; the nodes got %.0f from peers", saved, fromPeers)
	}
}

// A peer listener serves only a request signed by the node a ticket
// names, for the blob it names, once: 401 otherwise.
func TestPeerListenerNeedsATicket(t *testing.T) {
	keyFile := nodeKeyFile(t)
	secret, _ := os.ReadFile(keyFile)
	key, err := share.NewKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	// No cache answers: the agent's peer listener alone is tried.
	agent := startAgents(t, 1, []string{"zone-a"}, "http://"+testenv.FreeAddr(t), keyFile)[0]
	blob, other := digest.FromString("a layer"), digest.FromString("another layer")
	asker := share.Node{Name: "asker", Zone: "zone-a"}
	get := func(d digest.Digest, ticket string, signer *share.Key, as share.Node) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+agent.share+"/blobs/"+d.String()+"?ticket="+url.QueryEscape(ticket), nil)
		if signer != nil {
			signer.Sign(req, as)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	stranger, _ := share.NewKey([]byte("another trust domain altogether"))
	for what, status := range map[string]int{
		"unsigned, no ticket":        get(blob, "", nil, asker),
		"signed, no ticket":          get(blob, "", key, asker),
		"a ticket for another blob":  get(other, key.Issue(blob, asker.Name, agent.name), key, asker),
		"another node's ticket":      get(blob, key.Issue(blob, "someone-else", agent.name), key, asker),
		"a ticket to another holder": get(blob, key.Issue(blob, asker.Name, "node-99"), key, asker),
		"signed with another key":    get(blob, key.Issue(blob, asker.Name, agent.name), stranger, asker),
	} {
		if status != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", what, status)
		}
	}
	ticket := key.Issue(blob, asker.Name, agent.name)
	if status := get(blob, ticket, key, asker); status != http.StatusNotFound {
		t.Errorf("a good ticket for a blob the node does not hold: %d, want 404 (admitted, not held)", status)
	}
	if status := get(blob, ticket, key, asker); status != http.StatusUnauthorized {
		t.Errorf("a ticket used again: %d, want 401", status)
	}
}

// The cache checks its access rules before it sends a node anywhere: a
// digest a holder has is refused under a denied repository, as a blob it
// would serve itself is.
func TestNodeRequestsMeetTheAccessRules(t *testing.T) {
	e := newEnv(t)
	img, err := random.Image(64<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	pushImage(t, e.registry.Addr, "team/open", "v1", img)
	pushImage(t, e.registry.Addr, "team/secret", "v1", img)
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()
	keyFile := nodeKeyFile(t)
	secret, _ := os.ReadFile(keyFile)
	key, _ := share.NewKey(secret)
	cache := proxytest.StartBinary(t, "--upstream", "docker.io="+e.front.URL(), "--storage", t.TempDir(), "--node-key", keyFile,
		"--deny", "docker.io/team/secret")
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	ask := func(as share.Node, repo string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, cache.URL+"/v2/"+repo+"/blobs/"+layer.String(), nil)
		key.Sign(req, as)
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, body
	}
	holder := share.Node{Name: "holder", Zone: "zone-a", Peer: "http://127.0.0.1:1"}
	if resp, _ := ask(holder, "team/open"); resp.StatusCode != http.StatusOK {
		t.Fatalf("the first node's request: %s", resp.Status)
	}
	asker := share.Node{Name: "asker", Zone: "zone-a", Peer: "http://127.0.0.1:2"}
	resp, body := ask(asker, "team/secret")
	ociError(t, resp, body, http.StatusForbidden, "DENIED")
	if resp, _ := ask(share.Node{Name: "control", Zone: "zone-a", Peer: "http://127.0.0.1:3"}, "team/open"); resp.StatusCode != http.StatusTemporaryRedirect || share.HolderOf(resp.Header.Get("Location")) == "" {
		t.Errorf("under the allowed name the node is not sent to a holder: %s", resp.Status)
	}
}

// Agents whose node key the cache does not share still pull: the cache
// refuses their signature, and they ask again without it.
func TestNodesWithAnotherKeyStillPull(t *testing.T) {
	e := newEnv(t)
	img := ociImage(t, 2)
	pushImage(t, e.registry.Addr, "team/app", "v1", img)
	cache := proxytest.StartBinary(t, "--upstream", "docker.io="+e.front.URL(), "--storage", t.TempDir(), "--node-key", nodeKeyFile(t))
	agent := startAgents(t, 1, []string{"zone-a"}, cache.URL, nodeKeyFile(t))[0]
	if got, err := testenv.PullImage(agent.local, "team/app", ":v1"); err != nil || got != digestOf(t, img) {
		t.Fatalf("a pull by a node with another key: %v %v\n%s", got, err, agent.logs.String())
	}
	if n := nodeMetric(t, agent.ops, "depproxy_node_refused_signatures_total"); n == 0 {
		t.Error("the refused signatures are not counted")
	}
}
