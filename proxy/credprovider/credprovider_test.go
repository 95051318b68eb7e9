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
func buildPlugin(t *testing.T, cacheDuration string) (config, binDir, secret, calls string) {
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
`), 0o644)
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
	a := p.For("a.registry.test")
	if a == nil || p.For("ghcr.io") != nil {
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
