package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/test/proxytest"
)

// Access rules, as a tenant's cache has them (its --config file): a
// denied image is refused with DENIED to crane, containerd and podman,
// before the upstream is asked anything; an allowed one pulls; a blob
// asked for under a denied repository is refused though it is cached; the
// path form and ?ns= alike. Then the rule changes in the file: the cached
// image it now denies is refused, with no restart.
func TestAccessRules(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("podman with its own storage needs root here: run the tests as root (CI does)")
	}
	e := newEnv(t)
	for _, repo := range []string{"team/app", "team/bad", "other/x"} {
		pushImage(t, e.registry.Addr, repo, "v1", ociImage(t, 1))
	}
	cfg := filepath.Join(t.TempDir(), "depproxy.yaml")
	writeConfig := func(rules string) {
		if err := os.WriteFile(cfg+".new", []byte("allow: [docker.io/team/**]\n"+rules), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Rename(cfg+".new", cfg)
	}
	writeConfig("deny: [docker.io/team/bad]\n")
	proxy := proxytest.StartBinary(t, "--config", cfg, "--upstream", "docker.io="+e.front.URL(), "--storage", t.TempDir())
	base, ops, host := proxy.URL, proxy.Ops, proxy.Host

	if err := cranePull(t, host+"/team/app:v1"); err != nil {
		t.Fatalf("an allowed image: %v", err)
	}
	e.front.Reset()
	for _, ref := range []string{"team/bad:v1", "other/x:v1"} {
		err := cranePull(t, host+"/"+ref)
		if err == nil || !strings.Contains(err.Error(), "DENIED") {
			t.Errorf("crane pull %s: %v, want DENIED", ref, err)
		}
	}

	// containerd, with a hosts.toml that has the cache alone.
	ctrd := startContainerd(t)
	hostsDir := t.TempDir()
	os.MkdirAll(filepath.Join(hostsDir, "docker.io"), 0o755)
	os.WriteFile(filepath.Join(hostsDir, "docker.io", "hosts.toml"), []byte("server = \""+base+"\"\n\n[host.\""+base+"\"]\n  capabilities = [\"pull\", \"resolve\"]\n"), 0o644)
	out, err := ctrd.Ctr(t, "-n", "access", "images", "pull", "--hosts-dir", hostsDir, "docker.io/team/bad:v1")
	if err == nil || !strings.Contains(out, "403") {
		t.Errorf("ctr pull of a denied image: %v\n%s", err, out)
	}

	// podman, from the cache itself.
	podman := podmanRunner(t, "HOME="+t.TempDir())
	if out, err := podman("pull", "--tls-verify=false", host+"/team/bad:v1"); err == nil || !strings.Contains(out, "denied by the rule docker.io/team/bad") {
		t.Errorf("podman pull of a denied image: %v\n%s", err, out)
	}

	if n := e.front.Count(http.MethodGet, "manifests") + e.front.Count(http.MethodHead, "manifests") + e.front.Count(http.MethodGet, "blobs"); n != 0 {
		t.Errorf("the upstream got %d requests for denied images", n)
	}
	if out, err := ctrd.Ctr(t, "-n", "access", "images", "pull", "--hosts-dir", hostsDir, "docker.io/team/app:v1"); err != nil {
		t.Errorf("ctr pull of an allowed image: %v\n%s", err, out)
	}

	// A blob of the allowed image, cached, asked for under a denied name;
	// the path form and ?ns= alike.
	_, m := pullAll(t, base, "team/app", "v1")
	var blob string
	for k, o := range m {
		if o.contentType == "" { // a blob's
			blob = k
		}
	}
	for _, path := range []string{"/v2/team/bad/blobs/" + blob, "/v2/docker.io/team/bad/manifests/v1", "/v2/team/bad/manifests/v1?ns=docker.io"} {
		resp, body := get(t, base+path, "")
		ociError(t, resp, body, http.StatusForbidden, "DENIED")
		if !strings.Contains(string(body), "docker.io/team/bad") {
			t.Errorf("%s: the refusal does not name the image: %s", path, body)
		}
	}

	// The rule changes in the file: the cached image is refused, by the
	// same process.
	writeConfig("deny: [docker.io/team/bad, docker.io/team/app]\n")
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		resp, _ := get(t, base+"/v2/team/app/manifests/v1", "")
		if resp.StatusCode == http.StatusForbidden {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a cached image denied in the changed file is still served: %s\n%s", resp.Status, proxy.Log.String())
		}
	}
	if proxy.Exited() {
		t.Fatal("the proxy restarted")
	}
	if got := sample(scrape(t, ops), "depproxy_proxy_denied_total", "upstream", "docker.io"); got < 5 {
		t.Errorf("depproxy_proxy_denied_total %v, want the refusals counted", got)
	}
	resp, body := get(t, ops+report.SummaryPath, "")
	var sum report.Summary
	if json.Unmarshal(body, &sum); resp.StatusCode != http.StatusOK || sum.Denied == 0 {
		t.Errorf("the summary does not count refusals: %s", body)
	}
}
