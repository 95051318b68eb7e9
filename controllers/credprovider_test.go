package controllers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeletconfigv1 "k8s.io/kubelet/config/v1"
	"sigs.k8s.io/yaml"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/credprovider"
	"github.com/depproxy/depproxy/proxy/server"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/test/proxytest"
)

// A provider with tokenAttributes is given the service-account token for
// the audience it asks (a real one: the API server's TokenRequest issues
// it, as the kubelet's projected volume would) and the ServiceAccount
// annotations it requires; a required annotation missing is an error
// naming it, and the plugin is not run.
func TestCredentialProviderGetsTheServiceAccountToken(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "cache", Namespace: ns,
		Annotations: map[string]string{"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/cache"}}}
	if err := k8sClient.Create(ctx, sa); err != nil {
		t.Fatal(err)
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"sts.amazonaws.com"}}}
	if err := k8sClient.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	tokens := t.TempDir()
	os.MkdirAll(filepath.Join(tokens, "sts.amazonaws.com"), 0o755)
	os.WriteFile(filepath.Join(tokens, "sts.amazonaws.com", "token"), []byte(tr.Status.Token), 0o600)
	annotations, _ := json.Marshal(sa.Annotations)
	os.WriteFile(filepath.Join(tokens, "serviceaccount-annotations.json"), annotations, 0o644)

	bin, dir := t.TempDir(), t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "test-provider"), "github.com/depproxy/depproxy/proxy/credprovider/testdata/plugin").CombinedOutput(); err != nil {
		t.Fatalf("building the plugin: %v\n%s", err, out)
	}
	secret, seen := filepath.Join(dir, "secret"), filepath.Join(dir, "seen")
	os.WriteFile(secret, []byte("p"), 0o600)
	config := func(required string) string {
		path := filepath.Join(t.TempDir(), "config.yaml")
		os.WriteFile(path, []byte(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
- name: test-provider
  matchImages: ["*.dkr.ecr.*.amazonaws.com"]
  defaultCacheDuration: 1m
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  tokenAttributes:
    serviceAccountTokenAudience: sts.amazonaws.com
    cacheType: Token
    requireServiceAccount: true
    requiredServiceAccountAnnotationKeys: [`+required+`]
  env:
  - {name: PLUGIN_SECRET_FILE, value: `+secret+`}
  - {name: PLUGIN_TOKEN_FILE, value: `+seen+`}
  - {name: PLUGIN_CACHE_DURATION, value: 1m}
`), 0o644)
		return path
	}
	host := "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
	p, err := credprovider.Load(config("eks.amazonaws.com/role-arn"), bin, tokens)
	if err != nil {
		t.Fatal(err)
	}
	if ac, err := p.For(host, "", host+"/app:v1").Authorization(); err != nil || ac.Password != "p" {
		t.Fatalf("credentials: %+v, %v", ac, err)
	}
	var got struct {
		Token       string
		Annotations map[string]string
	}
	raw, _ := os.ReadFile(seen)
	if err := json.Unmarshal(raw, &got); err != nil || got.Token != tr.Status.Token ||
		got.Annotations["eks.amazonaws.com/role-arn"] != "arn:aws:iam::123456789012:role/cache" {
		t.Fatalf("the plugin saw %s", raw)
	}
	// The token is the API server's, for the audience asked.
	parts := strings.Split(got.Token, ".")
	claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct {
		Aud []string `json:"aud"`
	}
	if json.Unmarshal(claims, &c); !slices.Contains(c.Aud, "sts.amazonaws.com") {
		t.Fatalf("the token's audience is %v", c.Aud)
	}

	os.Remove(seen)
	p, err = credprovider.Load(config("example.com/missing"), bin, tokens)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.For(host, "", host+"/app:v1").Authorization(); err == nil || !strings.Contains(err.Error(), "example.com/missing") {
		t.Fatalf("a required annotation missing: %v", err)
	}
	if _, err := os.Stat(seen); err == nil {
		t.Fatal("the plugin ran without the annotation it requires")
	}
}

// Two upstreams at one host, one naming a plugin and one naming none
// (named as that host, so that its name and host both match the plugin's
// provider entry): the proxy the operator configures sends the plugin's
// credentials for the first only. The rendered config and flags run in
// the real proxy, against a loopback upstream that records what it is
// sent.
func TestCredentialProviderOnlyForItsUpstream(t *testing.T) {
	var mu sync.Mutex
	sent := map[string]string{} // repository: Authorization
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		if parts := strings.Split(r.URL.Path, "/"); len(parts) > 3 {
			mu.Lock()
			sent[parts[2]] += auth
			mu.Unlock()
		}
		if auth == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="cloud"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`))
	}))
	t.Cleanup(up.Close)
	host := strings.TrimPrefix(up.URL, "http://")

	dp := testProxy()
	dp.Spec.Upstream = depproxyv1.UpstreamSpec{}
	dp.Spec.Upstreams = []depproxyv1.RegistryUpstream{
		{Registry: host, UpstreamSpec: depproxyv1.UpstreamSpec{URL: up.URL}},
		{Registry: "cloud.test", UpstreamSpec: depproxyv1.UpstreamSpec{URL: up.URL,
			CredentialProvider: &depproxyv1.CredentialProviderSpec{Name: "test-provider"}}},
	}
	cm, err := desiredConfigMap(dp, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rendered, err := settings.Parse([]byte(cm.Data[configKey]))
	if err != nil {
		t.Fatal(err)
	}
	var cfg kubeletconfigv1.CredentialProviderConfig
	if err := yaml.Unmarshal([]byte(cm.Data[credProvidersKey]), &cfg); err != nil || len(cfg.Providers) != 1 {
		t.Fatalf("the rendered providers: %v\n%s", err, cm.Data[credProvidersKey])
	}
	bin, dir := t.TempDir(), t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "test-provider"), "github.com/depproxy/depproxy/proxy/credprovider/testdata/plugin").CombinedOutput(); err != nil {
		t.Fatalf("building the plugin: %v\n%s", err, out)
	}
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("cloud-token"), 0o600)
	cfg.Providers[0].Env = []kubeletconfigv1.ExecEnvVar{{Name: "PLUGIN_SECRET_FILE", Value: secret}, {Name: "PLUGIN_CACHE_DURATION", Value: "1m"}}
	raw, _ := yaml.Marshal(cfg)
	config := filepath.Join(dir, "providers.yaml")
	os.WriteFile(config, raw, 0o644)

	s := settings.Defaults()
	s.Upstream, s.UpstreamProvider = rendered.Upstream, rendered.UpstreamProvider
	s.CredProviderConfig, s.CredProviderBinDir, s.SpoolDir = config, bin, t.TempDir()
	proxy := proxytest.Start(t, s, server.WithStorage(storage.NewMemory()))
	for _, path := range []string{"/v2/plain/manifests/v1", "/v2/cloud.test/private/manifests/v1"} {
		resp, err := http.Get(proxy.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if sent["plain"] != "" {
		t.Errorf("the upstream that names no plugin sent %q", sent["plain"])
	}
	if want := "Basic " + base64.StdEncoding.EncodeToString([]byte("plugin:cloud-token")); !strings.Contains(sent["private"], want) {
		t.Errorf("the upstream that names the plugin sent %q", sent["private"])
	}
}
