package credprovider

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMatches(t *testing.T) {
	for _, c := range []struct {
		pattern, image string
		want           bool
	}{
		{"*.dkr.ecr.*.amazonaws.com", "123456789012.dkr.ecr.eu-west-1.amazonaws.com", true},
		{"*.dkr.ecr.*.amazonaws.com", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app", true},
		{"*.dkr.ecr.*.amazonaws.com", "dkr.ecr.eu-west-1.amazonaws.com", false},
		{"*.azurecr.io", "x.azurecr.io", true},
		{"*.azurecr.io", "x.y.azurecr.io", false},
		{"gcr.io", "gcr.io/proj/app", true},
		{"registry.io:8080/path", "registry.io:8080/path/app", true},
		{"registry.io:8080/path", "registry.io/path/app", false},
		{"registry.io/path", "registry.io/other", false},
		{"https://127.0.0.1:5000", "127.0.0.1:5000", true},
	} {
		if got := matches(c.pattern, c.image); got != c.want {
			t.Errorf("matches(%q, %q) = %v, want %v", c.pattern, c.image, got, c.want)
		}
	}
}

// plugin builds the test plugin into a bin dir and writes a config for
// it; the plugin answers the password in the returned secret file.
func buildPlugin(t *testing.T, cacheDuration string, env ...string) (config, binDir, secret, calls string) {
	t.Helper()
	binDir = t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, "test-provider"), "./testdata/plugin").CombinedOutput(); err != nil {
		t.Fatalf("building the plugin: %v\n%s", err, out)
	}
	dir := t.TempDir()
	secret, calls = filepath.Join(dir, "secret"), filepath.Join(dir, "calls")
	config = filepath.Join(dir, "config.yaml")
	os.WriteFile(secret, []byte("one\n"), 0o600)
	os.WriteFile(config, []byte(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
- name: test-provider
  matchImages: ["*.registry.test", "127.0.0.1:*"]
  defaultCacheDuration: 1m
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  env:
  - {name: PLUGIN_SECRET_FILE, value: `+secret+`}
  - {name: PLUGIN_CALLS_FILE, value: `+calls+`}
  - {name: PLUGIN_CACHE_DURATION, value: `+cacheDuration+`}
`+extraEnv(env)), 0o644)
	return config, binDir, secret, calls
}

// The plugin is run for a matching host, its answer cached for the
// duration it gives (asked again before it ends); a host no provider
// matches gets none; a bad config says what is wrong.
func TestPluginCredentials(t *testing.T) {
	config, binDir, secret, calls := buildPlugin(t, "10s")
	p, err := Load(config, binDir, "")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	p.now = func() time.Time { return now }
	a := p.For("a.registry.test", "", "a.registry.test/app:v1")
	if a == nil || p.For("ghcr.io", "", "ghcr.io/app:v1") != nil {
		t.Fatal("matchImages picked the wrong hosts")
	}
	ac, err := a.Authorization()
	if err != nil || ac.Username != "plugin" || ac.Password != "one" {
		t.Fatalf("credentials: %+v, %v", ac, err)
	}
	os.WriteFile(secret, []byte("two\n"), 0o600)
	now = now.Add(7 * time.Second)
	if ac, _ := a.Authorization(); ac.Password != "one" {
		t.Fatal("the answer was not cached for its duration")
	}
	now = now.Add(2 * time.Second) // 9 s of 10: asked again before it expires
	if ac, _ := a.Authorization(); ac.Password != "two" {
		t.Fatal("the answer was not refreshed before it expired")
	}
	if raw, _ := os.ReadFile(calls); strings.Count(string(raw), "a.registry.test") != 2 {
		t.Errorf("the plugin ran for %q, want twice for a.registry.test", raw)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- name: missing\n  matchImages: [x.io]\n  apiVersion: credentialprovider.kubelet.k8s.io/v1beta1\n"), 0o644)
	if _, err := Load(bad, binDir, ""); err == nil || !strings.Contains(err.Error(), "no plugin") || !strings.Contains(err.Error(), "v1beta1") {
		t.Errorf("a bad config: %v", err)
	}
}

func extraEnv(env []string) string {
	var b strings.Builder
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		b.WriteString("  - {name: " + k + ", value: \"" + v + "\"}\n")
	}
	return b.String()
}

// A provider is chosen by the host the credentials are sent to; an
// upstream named otherwise gets them only when its name matches the same
// provider; a bound upstream only from its own provider.
func TestPluginChosenByHost(t *testing.T) {
	config, binDir, _, _ := buildPlugin(t, "10s")
	p, err := Load(config, binDir, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		registry, only, image string
		want                  bool
	}{
		{"a.registry.test", "", "a.registry.test/app:v1", true},
		{"", "", "a.registry.test/app:v1", true},
		{"b.registry.test", "", "a.registry.test/app@sha256:" + strings.Repeat("0", 64), true},
		// Named as a registry the provider is for, reached elsewhere.
		{"a.registry.test", "", "127.0.0.1:5000/app:v1", false},
		// Reached at the provider's host, named as something else.
		{"mirror.example", "", "a.registry.test/app:v1", false},
		{"a.registry.test", "test-provider", "a.registry.test/app:v1", true},
		{"a.registry.test", "another-provider", "a.registry.test/app:v1", false},
	} {
		if got := p.For(c.registry, c.only, c.image) != nil; got != c.want {
			t.Errorf("For(%q, %q, %q): %v, want %v", c.registry, c.only, c.image, got, c.want)
		}
	}
	if !p.Has("test-provider") || p.Has("another-provider") {
		t.Error("Has")
	}
}

// As the kubelet asks: the image with its repository and tag; an answer
// for the image (cacheKeyType Image) is used for that image only, so that
// two repositories get their own credentials.
func TestPluginPerImage(t *testing.T) {
	config, binDir, _, calls := buildPlugin(t, "1m", "PLUGIN_CACHE_KEY_TYPE=Image")
	p, err := Load(config, binDir, "")
	if err != nil {
		t.Fatal(err)
	}
	pass := func(image string) string {
		t.Helper()
		ac, err := p.For("a.registry.test", "", image).Authorization()
		if err != nil {
			t.Fatalf("%s: %v", image, err)
		}
		return ac.Password
	}
	if got := pass("a.registry.test/team/one:v1"); got != "one@team/one" {
		t.Errorf("team/one: %q", got)
	}
	if got := pass("a.registry.test/team/two:v1"); got != "one@team/two" {
		t.Errorf("team/two: %q", got)
	}
	pass("a.registry.test/team/one:v1") // cached
	raw, _ := os.ReadFile(calls)
	if got := strings.Fields(string(raw)); strings.Join(got, " ") != "a.registry.test/team/one:v1 a.registry.test/team/two:v1" {
		t.Errorf("the plugin was asked for %q", got)
	}
}

// A plugin sees PATH, HOME, the proxy variables and its config's env;
// never the proxy's own secrets (the storage's keys).
func TestPluginEnvironment(t *testing.T) {
	envFile := filepath.Join(t.TempDir(), "env")
	config, binDir, _, _ := buildPlugin(t, "1m", "PLUGIN_ENV_FILE="+envFile)
	t.Setenv("AWS_ACCESS_KEY_ID", "storage-key-id")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "storage-secret")
	t.Setenv("DEPPROXY_SOMETHING", "x")
	t.Setenv("HTTPS_PROXY", "http://proxy.internal:3128")
	t.Setenv("no_proxy", "10.0.0.0/8")
	p, err := Load(config, binDir, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.For("", "", "a.registry.test/app:v1").Authorization(); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(envFile)
	env := "\n" + string(raw) + "\n"
	for _, bad := range []string{"storage-key-id", "storage-secret", "DEPPROXY_SOMETHING"} {
		if strings.Contains(env, bad) {
			t.Errorf("the plugin saw %s", bad)
		}
	}
	for _, want := range []string{"\nPATH=", "\nHTTPS_PROXY=http://proxy.internal:3128\n", "\nno_proxy=10.0.0.0/8\n", "\nPLUGIN_SECRET_FILE="} {
		if !strings.Contains(env, want) {
			t.Errorf("the plugin's environment has no %q:%s", want, env)
		}
	}
}
