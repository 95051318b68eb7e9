package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/test/testenv"
)

// A registry that wants credentials only a kubelet credential provider
// plugin hands out, valid 3 s and rotated every 3 s: a pull loop through
// the cache never has the upstream refuse the credentials it sends; a
// second upstream, which no provider matches, never receives them; and
// with the plugin failing and its last credentials stale, the cached tag
// is still served.
func TestCredentialProviderPlugin(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	other := testenv.StartFront(t, e.registry.URL())

	bin, dir := t.TempDir(), t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "test-provider"), "github.com/depproxy/depproxy/proxy/credprovider/testdata/plugin").CombinedOutput(); err != nil {
		t.Fatalf("building the plugin: %v\n%s", err, out)
	}
	secret, calls, fail := filepath.Join(dir, "secret"), filepath.Join(dir, "calls"), filepath.Join(dir, "fail")
	config := filepath.Join(dir, "credential-providers.yaml")
	os.WriteFile(config, []byte(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
- name: test-provider
  matchImages: ["`+e.front.Addr+`"]
  defaultCacheDuration: 1m
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  env:
  - {name: PLUGIN_SECRET_FILE, value: `+secret+`}
  - {name: PLUGIN_CALLS_FILE, value: `+calls+`}
  - {name: PLUGIN_FAIL_FILE, value: `+fail+`}
  - {name: PLUGIN_CACHE_DURATION, value: 3s}
`), 0o644)

	// The upstream's own check: the current password, or the one before
	// it (a rotation overlaps, as a cloud's does).
	var mu sync.Mutex
	current, previous := "pass-0", ""
	os.WriteFile(secret, []byte(current), 0o600)
	var refused, accepted atomic.Int64
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		user, pass, ok := r.BasicAuth()
		mu.Lock()
		good := ok && user == "plugin" && (pass == current || (previous != "" && pass == previous))
		mu.Unlock()
		if good {
			accepted.Add(1)
			return false
		}
		if ok {
			refused.Add(1) // credentials sent, and wrong
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="cloud"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	var leaked atomic.Int64
	other.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != "" {
			leaked.Add(1)
		}
		return false
	})

	s := settings.Defaults()
	s.Upstream = settings.Keys("one.test="+e.front.URL(), "two.test="+other.URL())
	s.CredProviderConfig, s.CredProviderBinDir = config, bin
	p := start(t, s)

	stop := time.Now().Add(2 * time.Minute)
	for i := 1; time.Now().Before(stop); i++ {
		if i%15 == 0 { // every 3 s
			mu.Lock()
			previous, current = current, "pass-"+time.Now().Format("150405.000")
			os.WriteFile(secret, []byte(current), 0o600)
			mu.Unlock()
		}
		resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/v1", acceptAll)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("pull %d: %s %s", i, resp.Status, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if refused.Load() != 0 || accepted.Load() < 300 {
		t.Fatalf("the upstream refused the credentials it was sent %d times (accepted %d)", refused.Load(), accepted.Load())
	}
	if raw, _ := os.ReadFile(calls); strings.Count(string(raw), "\n") < 30 {
		t.Errorf("the plugin ran %d times in 2 minutes of 3 s credentials", strings.Count(string(raw), "\n"))
	}
	resp, _ := get(t, p.URL+"/v2/two.test/"+repo+"/manifests/v1", acceptAll)
	if resp.StatusCode != http.StatusOK || leaked.Load() != 0 {
		t.Fatalf("the second upstream: %s, and %d requests with credentials", resp.Status, leaked.Load())
	}

	// The plugin down, its last credentials stale: the cached tag.
	os.WriteFile(fail, nil, 0o600)
	mu.Lock()
	previous, current = "", "rotated-while-the-plugin-is-down"
	mu.Unlock()
	time.Sleep(3 * time.Second)
	if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/v1", acceptAll); resp.StatusCode != http.StatusOK {
		t.Fatalf("a cached tag with the plugin failing: %s %s", resp.Status, body)
	}
	// The summary says which upstream's plugin fails, and what it said
	// (the operator's UpstreamCredentials condition).
	resp, body := get(t, p.Ops+report.SummaryPath, "")
	var sum report.Summary
	if json.Unmarshal(body, &sum); resp.StatusCode != http.StatusOK || !strings.Contains(sum.CredentialErrors[e.front.Addr], "token service is down") {
		t.Fatalf("the summary's credential errors: %v", sum.CredentialErrors)
	}
}

// The real ecr-credential-provider, built from the Go module proxy, is
// run by the cache as the kubelet runs it, for an upstream named as an
// ECR registry. With no AWS here (its endpoint is a refused port on this
// machine) it fails: nothing is pulled, no credentials are sent, and the
// summary says what the plugin said, for that registry.
func TestRealECRCredentialProvider(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	var sent atomic.Int64
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != "" {
			sent.Add(1)
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="ecr"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	bin := t.TempDir()
	if err := os.Symlink(testenv.Tool(t, "ecr-credential-provider"), filepath.Join(bin, "ecr-credential-provider")); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(t.TempDir(), "credential-providers.yaml")
	os.WriteFile(config, []byte(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
- name: ecr-credential-provider
  matchImages: ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"]
  defaultCacheDuration: 12h
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  args: [get-credentials]
  env:
  - {name: AWS_ENDPOINT_URL, value: "http://127.0.0.1:1"}
  - {name: AWS_ACCESS_KEY_ID, value: none}
  - {name: AWS_SECRET_ACCESS_KEY, value: none}
  - {name: AWS_REGION, value: eu-west-1}
  - {name: AWS_EC2_METADATA_DISABLED, value: "true"}
`), 0o644)
	const ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
	s := settings.Defaults()
	s.Upstream = settings.Keys(ecr + "=" + e.front.URL())
	s.CredProviderConfig, s.CredProviderBinDir = config, bin
	p := start(t, s)

	if resp, _ := get(t, p.URL+"/v2/"+repo+"/manifests/v1", acceptAll); resp.StatusCode == http.StatusOK {
		t.Fatal("pulled with no credentials")
	}
	resp, body := get(t, p.Ops+report.SummaryPath, "")
	var sum report.Summary
	json.Unmarshal(body, &sum)
	msg := sum.CredentialErrors[ecr]
	if resp.StatusCode != http.StatusOK || !strings.Contains(msg, "ecr-credential-provider for "+ecr) || !strings.Contains(msg, "GetAuthorizationToken") {
		t.Fatalf("the summary's credential errors: %v", sum.CredentialErrors)
	}
	if sent.Load() != 0 {
		t.Fatalf("%d requests carried credentials", sent.Load())
	}
	t.Logf("the plugin said: %s", msg)
}
