package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/credprovider"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/test/proxytest"
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
  matchImages: ["`+e.front.Addr+`", one.test]
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
	p := proxytest.Start(t, s)

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
// run by the cache as the kubelet runs it, for the image being pulled
// (host, repository, tag). With no AWS here (its endpoint is a refused
// port on this machine) it fails, and says so for that image.
func TestRealECRCredentialProvider(t *testing.T) {
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
	p, err := credprovider.Load(config, bin, "")
	if err != nil {
		t.Fatal(err)
	}
	a := p.For(ecr, "", ecr+"/team/app:v1")
	if a == nil {
		t.Fatal("no provider for an ECR image")
	}
	_, err = a.Authorization()
	if err == nil || !strings.Contains(err.Error(), "ecr-credential-provider for "+ecr+"/team/app:v1") || !strings.Contains(err.Error(), "GetAuthorizationToken") {
		t.Fatalf("the plugin: %v", err)
	}
	if msg := p.Failing()[ecr]; !strings.Contains(msg, "GetAuthorizationToken") {
		t.Fatalf("what the summary says: %q", msg)
	}
	t.Logf("the plugin said: %v", err)
}

// fakePlugin builds the test plugin into a bin dir and writes a config
// with one provider for matchImages, given env; it returns the config,
// the bin dir and the file the plugin records its requests in.
func fakePlugin(t *testing.T, matchImages string, env ...string) (config, bin, calls string) {
	t.Helper()
	bin, dir := t.TempDir(), t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "test-provider"), "github.com/depproxy/depproxy/proxy/credprovider/testdata/plugin").CombinedOutput(); err != nil {
		t.Fatalf("building the plugin: %v\n%s", err, out)
	}
	secret, calls := filepath.Join(dir, "secret"), filepath.Join(dir, "calls")
	os.WriteFile(secret, []byte("cloud-token"), 0o600)
	var extra strings.Builder
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		extra.WriteString("  - {name: " + k + ", value: \"" + v + "\"}\n")
	}
	config = filepath.Join(dir, "credential-providers.yaml")
	os.WriteFile(config, []byte(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
- name: test-provider
  matchImages: [`+matchImages+`]
  defaultCacheDuration: 1m
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  env:
  - {name: PLUGIN_SECRET_FILE, value: `+secret+`}
  - {name: PLUGIN_CALLS_FILE, value: `+calls+`}
  - {name: PLUGIN_CACHE_DURATION, value: 1m}
`+extra.String()), 0o644)
	return config, bin, calls
}

// An upstream named as an ECR registry but reached at a loopback URL,
// and a plugin for ECR names that hands out a token for whatever it is
// asked: the plugin is chosen by the host the credentials would go to,
// so it is never asked, and the loopback upstream never sees a token.
func TestCredentialProviderNotForAnotherHost(t *testing.T) {
	e := newEnv(t)
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	var sent atomic.Int64
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != "" {
			sent.Add(1)
		}
		return false
	})
	config, bin, calls := fakePlugin(t, `"*.dkr.ecr.*.amazonaws.com"`)
	s := settings.Defaults()
	s.Upstream = settings.Keys("123456789012.dkr.ecr.us-east-1.amazonaws.com=" + e.front.URL())
	s.CredProviderConfig, s.CredProviderBinDir = config, bin
	p := proxytest.Start(t, s)
	if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/v1", acceptAll); resp.StatusCode != http.StatusOK {
		t.Fatalf("pull: %s %s", resp.Status, body)
	}
	if sent.Load() != 0 {
		t.Fatalf("%d requests to the loopback upstream carried credentials", sent.Load())
	}
	if raw, _ := os.ReadFile(calls); len(raw) != 0 {
		t.Fatalf("the plugin was asked for %q", raw)
	}
}

// A plugin that hands out credentials per image (cacheKeyType Image) is
// asked, as the kubelet asks, for the image pulled: host and repository
// (the kubelet's keyring looks up the repository, without tag). Two
// repositories get their own credentials, which the upstream
// checks; each is asked once.
func TestCredentialProviderPerImage(t *testing.T) {
	e := newEnv(t)
	one, two := repoName(t)+"/one", repoName(t)+"/two"
	pushImage(t, e.registry.Addr, one, "v1", ociImage(t, 1))
	pushImage(t, e.registry.Addr, two, "v1", ociImage(t, 2))
	var refused atomic.Int64
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/" {
			return false
		}
		repo := strings.TrimPrefix(r.URL.Path, "/v2/")
		for _, kind := range []string{"/manifests/", "/blobs/"} {
			if i := strings.Index(repo, kind); i >= 0 {
				repo = repo[:i]
			}
		}
		user, pass, ok := r.BasicAuth()
		if ok && user == "plugin" && pass == "cloud-token@"+repo {
			return false
		}
		if ok {
			refused.Add(1)
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="cloud"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	config, bin, calls := fakePlugin(t, `"`+e.front.Addr+`"`, "PLUGIN_CACHE_KEY_TYPE=Image")
	s := settings.Defaults()
	s.Upstream = settings.Keys(e.front.URL())
	s.CredProviderConfig, s.CredProviderBinDir = config, bin
	p := proxytest.Start(t, s)
	for i := 0; i < 2; i++ {
		for _, repo := range []string{one, two} {
			if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/v1", acceptAll); resp.StatusCode != http.StatusOK {
				t.Fatalf("pull %s: %s %s", repo, resp.Status, body)
			}
		}
	}
	if refused.Load() != 0 {
		t.Fatalf("the upstream refused the credentials sent %d times", refused.Load())
	}
	raw, _ := os.ReadFile(calls)
	if got, want := strings.Fields(string(raw)), []string{e.front.Addr + "/" + one, e.front.Addr + "/" + two}; !slices.Equal(got, want) {
		t.Fatalf("the plugin was asked for %q, want %q", got, want)
	}
}

// The proxy runs with the storage's keys in its environment, as the
// operator's pods do: a plugin it runs sees none of them, only PATH,
// HOME, the proxy variables and its config's env.
func TestCredentialProviderSeesNoStorageKeys(t *testing.T) {
	e := newEnv(t)
	t.Setenv("AWS_ACCESS_KEY_ID", e.minio.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", e.minio.SecretKey)
	prefix := nonName.ReplaceAllString(t.Name(), "-")
	e.minio.Storage(t, "cache", prefix) // the bucket
	repo := repoName(t)
	pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	e.front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="cloud"`)
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		return false
	})
	envFile := filepath.Join(t.TempDir(), "env")
	config, bin, _ := fakePlugin(t, `"`+e.front.Addr+`"`, "PLUGIN_ENV_FILE="+envFile)
	s := settings.Defaults()
	s.Upstream = settings.Keys(e.front.URL())
	s.Storage, s.S3Endpoint, s.S3Insecure = "s3://cache/"+prefix, e.minio.Addr, true
	s.CredProviderConfig, s.CredProviderBinDir = config, bin
	p := proxytest.Start(t, s)
	if resp, body := get(t, p.URL+"/v2/"+repo+"/manifests/v1", acceptAll); resp.StatusCode != http.StatusOK {
		t.Fatalf("pull: %s %s", resp.Status, body)
	}
	raw, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	env := "\n" + string(raw) + "\n"
	for _, secret := range []string{e.minio.AccessKey, e.minio.SecretKey, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		if strings.Contains(env, secret) {
			t.Errorf("the plugin saw %s", secret)
		}
	}
	if !strings.Contains(env, "\nPATH=") || !strings.Contains(env, "\nPLUGIN_SECRET_FILE=") {
		t.Errorf("the plugin's environment: %s", raw)
	}
}
