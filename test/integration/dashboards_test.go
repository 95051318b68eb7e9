package integration

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"

	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// The PrometheusRule's alerts and the Grafana dashboard's queries in
// config/prometheus: every expression parses as PromQL, and every metric
// it names is one a running proxy exports, in a real scrape after pulls,
// shared downloads, a rate-limited upstream, a stale serve and a failing
// storage.
func TestDashboardsAndRules(t *testing.T) {
	exprs := promExpressions(t)
	if len(exprs) < 15 {
		t.Fatalf("only %d expressions found in config/prometheus", len(exprs))
	}
	exported := exportedSeries(t)
	p := parser.NewParser(parser.Options{})
	for where, expr := range exprs {
		// Grafana's variables, as Grafana fills them in.
		q := strings.NewReplacer("$__rate_interval", "5m", "$namespace", "team-a", "$service", "team-a-depproxy").Replace(expr)
		node, err := p.ParseExpr(q)
		if err != nil {
			t.Errorf("%s: %v\n%s", where, err, expr)
			continue
		}
		parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			// up is Prometheus' own, for every target it scrapes.
			if vs.Name != "up" && !exported[vs.Name] {
				t.Errorf("%s uses %s, which the proxy does not export", where, vs.Name)
			}
			return nil
		})
	}
	out, err := exec.Command(testenv.Tool(t, "kustomize"), "build", filepath.Join("..", "..", "config", "prometheus")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "kind: PrometheusRule") || !strings.Contains(string(out), "grafana_dashboard") {
		t.Errorf("kustomize build config/prometheus: %v\n%s", err, out)
	}
}

// promExpressions are the rules' and the dashboard's PromQL, by where
// they are.
func promExpressions(t *testing.T) map[string]string {
	t.Helper()
	dir := filepath.Join("..", "..", "config", "prometheus")
	exprs := map[string]string{}
	raw, err := os.ReadFile(filepath.Join(dir, "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct{ Alert, Expr string }
			}
		}
	}
	if err := yaml.Unmarshal(raw, &rule); err != nil {
		t.Fatalf("rules.yaml: %v", err)
	}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			exprs["rules.yaml alert "+r.Alert] = r.Expr
		}
	}
	raw, err = os.ReadFile(filepath.Join(dir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct{ Name, Query string }
		}
		Panels []struct {
			Title   string
			Targets []struct{ RefID, Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs[fmt.Sprintf("dashboard panel %q query %s", p.Title, tg.RefID)] = tg.Expr
		}
	}
	// label_values(metric{...}, label) is Grafana's; its selector is PromQL.
	labelValues := regexp.MustCompile(`^label_values\((.*), *\w+\)$`)
	for _, v := range dash.Templating.List {
		if m := labelValues.FindStringSubmatch(v.Query); m != nil {
			exprs["dashboard variable "+v.Name] = m[1]
		}
	}
	return exprs
}

// exportedSeries runs proxies through what makes every series appear,
// and returns the names in their scrapes.
func exportedSeries(t *testing.T) map[string]bool {
	t.Helper()
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 2))
	_, blob := pushBlob(t, e.registry.Addr, repo, 4<<20)
	var sent atomic.Int64
	slow, limited := throttledBlobs(e.front, &sent), rateLimited(e.front, 5)
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool { return limited(w, r) || slow(w, r) })
	p := startProxy(t, e.front.URL(), openStorage(t, "filesystem", e.minio))
	pullAll(t, p.URL, repo, "v1")
	pullAll(t, p.URL, repo, "v1")
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { get(t, p.URL+"/v2/"+repo+"/blobs/"+blob.String(), "") })
	}
	wg.Wait()
	e.front.Stop()
	pullAll(t, p.URL, repo, "v1")

	// A storage that is down: reads and writes fail, pulls pass through.
	s3, err := storage.NewS3("down", "x", storage.S3Options{Endpoint: testenv.FreeAddr(t), Insecure: true, Credentials: e.minio.Credentials()})
	if err != nil {
		t.Fatal(err)
	}
	e2 := newEnv(t)
	pushImage(t, e2.registry.Addr, repo, "v1", ociImage(t, 1))
	// With a hot tier, whose metrics are exported whether or not it was
	// used.
	s := settings.Defaults()
	s.Upstream, s.HotDir, s.HotSize, s.MaxSize = settings.Keys(e2.front.URL()), t.TempDir(), settings.Size(1<<20), settings.Size(1<<30)
	broken := proxytest.Start(t, s, server.WithStorage(s3))
	pullAll(t, broken.URL, repo, "v1")

	// Nodes that share: a cache with --node-key, and two agents of one
	// zone pulling in turn, the second sent to the first.
	e3 := newEnv(t)
	pushImage(t, e3.registry.Addr, repo, "v1", ociImage(t, 1))
	key := nodeKeyFile(t)
	sharing := proxytest.StartBinary(t, "--upstream", "docker.io="+e3.front.URL(), "--storage", t.TempDir(), "--node-key", key)
	opsPages := []string{p.Ops, broken.Ops, sharing.Ops, verifyingProxy(t, e3, repo).Ops}
	for _, a := range startAgents(t, 2, []string{"zone-a"}, sharing.URL, key) {
		if _, err := testenv.PullImage(a.local, repo, ":v1"); err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		opsPages = append(opsPages, "http://"+a.ops)
	}
	// The second node tells the cache it has the blobs, in the
	// background: the egress saved is counted then.
	eventually(t, 10*time.Second, "the cache counts no egress saved", func() bool {
		return nodeMetric(t, strings.TrimPrefix(sharing.Ops, "http://"), "depproxy_share_saved_bytes_total") > 0
	})

	names := map[string]bool{}
	for _, ops := range opsPages {
		resp, err := http.Get(ops + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			name, _, _ := strings.Cut(line, "{")
			name, _, _ = strings.Cut(name, " ")
			names[name] = true
		}
		resp.Body.Close()
	}
	return names
}

// rateLimited adds Docker Hub's rate-limit headers to manifest answers.
func rateLimited(f *testenv.Front, remaining int) func(http.ResponseWriter, *http.Request) bool {
	return f.Alter("manifests", func(w http.ResponseWriter, resp *http.Response) {
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.Header().Set("Ratelimit-Limit", "100;w=21600")
		w.Header().Set("Ratelimit-Remaining", fmt.Sprintf("%d;w=21600", remaining))
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})
}

// verifyingProxy is a proxy of e's upstream with an audit policy whose
// rule names repo, after a pull of repo:v1, which no key signed: its
// verification series are exported, and its summary reports the failure.
func verifyingProxy(t *testing.T, e *env, repo string) *proxytest.Proxy {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	policy := fmt.Sprintf("mode: audit\nrules:\n- images: [%q]\n  keys: [{file: cosign.pub}]\n", strings.TrimPrefix(e.front.URL(), "http://")+"/"+repo)
	os.WriteFile(filepath.Join(dir, "cosign.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	if err := os.WriteFile(filepath.Join(dir, "verify.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	s := settings.Defaults()
	s.Upstream, s.VerifyPolicy = settings.Keys(e.front.URL()), filepath.Join(dir, "verify.yaml")
	p := proxytest.Start(t, s, server.WithStorage(openStorage(t, "filesystem", nil)))
	pullAll(t, p.URL, repo, "v1")

	resp, err := http.Get(p.Ops + report.SummaryPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum report.Summary
	if err := json.NewDecoder(resp.Body).Decode(&sum); err != nil {
		t.Fatal(err)
	}
	if v := sum.Verification; v == nil || v.Audited == 0 || len(v.LastRefusals) == 0 || !v.LastRefusals[0].Audited ||
		!strings.Contains(v.LastRefusals[0].Image, repo+"@sha256:") || v.LastRefusals[0].Reason == "" {
		t.Errorf("the summary's verification, after an unsigned pull in audit mode: %+v", v)
	}
	return p
}
