package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// `depproxy node --store` makes the agent the node's own mirror, named
// before the cache: containerd 2.x pulls through it and the cache; then,
// with the cache and the registry both gone, an image the node pulled
// before is pulled again from the node's store, and one it never pulled
// is not (the runtime is sent on to the next host, which fails).
func TestNodeLocalMirrorServesWithTheCacheDown(t *testing.T) {
	tr := newTwoRegistries(t)
	pushImage(t, tr.hub.registry.Addr, tr.repo, "v2", ociImage(t, 2))
	cache := proxytest.StartBinary(t, "--upstream", "docker.io="+tr.hub.front.URL(), "--storage", t.TempDir())
	base := cache.URL

	hostsDir, store := t.TempDir(), t.TempDir()
	local, ops := testenv.FreeAddr(t), testenv.FreeAddr(t)
	var agentLogs syncBuffer
	agent := exec.Command(proxytest.Binary(t), "node", "--endpoint", base, "--registry", "docker.io",
		"--server", "docker.io="+tr.hub.front.URL(), "--dir", hostsDir, "--interval", "100ms", "--listen", ops,
		"--store", store, "--store-size", "1Gi", "--local-listen", local)
	agent.Stderr = &agentLogs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	hostsFile := filepath.Join(hostsDir, "docker.io", "hosts.toml")
	eventually(t, 10*time.Second, "the agent did not write the node's file:\n"+agentLogs.String(), func() bool {
		b, _ := os.ReadFile(hostsFile)
		return strings.HasPrefix(string(b), "# Written by depproxy")
	})
	hosts, _ := os.ReadFile(hostsFile)
	if l, c := strings.Index(string(hosts), `[host."http://`+local+`"]`), strings.Index(string(hosts), `[host."`+base+`"]`); l < 0 || c < 0 || l > c {
		t.Fatalf("hosts.toml does not name the node's mirror before the cache:\n%s", hosts)
	}

	c := startContainerd2(t, fmt.Sprintf("[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = %q\n", hostsDir))
	ref := "docker.io/" + tr.repo + ":v1"
	if out, err := c.Crictl(t, "pull", ref); err != nil {
		t.Fatalf("crictl pull %s: %v\n%s", ref, err, out)
	}
	if got := c.repoDigest(t, ref); got != tr.hubImage {
		t.Fatalf("containerd has %s, the registry %s", got, tr.hubImage)
	}
	if fromCache := nodeBytes(t, ops, "cache"); fromCache == 0 {
		t.Fatalf("the pull did not go through the node's mirror:\n%s", agentLogs.String())
	}

	// The cache and the registry go away; the image is removed from
	// containerd and pulled again: from the node's store.
	cache.Kill()
	tr.hub.front.Stop()
	if out, err := c.Crictl(t, "rmi", ref); err != nil {
		t.Fatalf("crictl rmi: %v\n%s", err, out)
	}
	if out, err := c.Crictl(t, "pull", ref); err != nil {
		t.Fatalf("with the cache and the registry down, crictl pull %s: %v\n%s\n%s", ref, err, out, agentLogs.String())
	}
	if got := c.repoDigest(t, ref); got != tr.hubImage {
		t.Fatalf("from the store: containerd has %s, want %s", got, tr.hubImage)
	}
	if fromStore := nodeBytes(t, ops, "store"); fromStore == 0 {
		t.Error("the second pull did not come from the node's store")
	}
	if out, err := c.Crictl(t, "pull", "docker.io/"+tr.repo+":v2"); err == nil {
		t.Errorf("an image the node never pulled was pulled with everything down:\n%s", out)
	}

	agent.Process.Signal(syscall.SIGTERM)
	if err := agent.Wait(); err != nil {
		t.Fatalf("the agent exited with %v after SIGTERM:\n%s", err, agentLogs.String())
	}
	if _, err := os.Stat(hostsFile); err == nil {
		t.Error("SIGTERM left the node's file")
	}
}

// nodeBytes is the agent's depproxy_node_bytes_total for source.
func nodeBytes(t *testing.T, ops, source string) float64 {
	t.Helper()
	return nodeMetric(t, ops, `depproxy_node_bytes_total{source="`+source+`"}`)
}

// Where the cache asks for logins, the node's mirror serves what its
// store holds only to a request the cache accepts: a pod without the
// login gets the cache's 401, not the bytes another pod pulled. With the
// cache down, a login it accepted before is still served.
func TestNodeMirrorServesOnlyWhatTheCacheAccepts(t *testing.T) {
	e := newEnv(t)
	img := ociImage(t, 1)
	pushImage(t, e.registry.Addr, "team/private", "v1", img)
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()
	cache := proxytest.StartBinary(t, "--upstream", "docker.io="+e.front.URL(), "--storage", t.TempDir(),
		"--users", usersFile(t, map[string]string{"alice": "s3cret"}))
	req, _ := http.NewRequest(http.MethodGet, cache.URL+"/token?scope=repository:team/private:pull", nil)
	req.SetBasicAuth("alice", "s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("a token: %v %v", resp, err)
	}
	var tr tokenResponse
	json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	agent := startAgents(t, 1, []string{"zone-a"}, cache.URL, nodeKeyFile(t))[0]
	blobURL := "http://" + agent.local + "/v2/team/private/blobs/" + layer.String()
	get := func(bearer string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, blobURL, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if status := get(tr.Token); status != http.StatusOK {
		t.Fatalf("alice's pull through the node: %d", status)
	}
	if status := get(""); status != http.StatusUnauthorized {
		t.Errorf("a pull without a login, of a blob the node's store holds: %d, want the cache's 401", status)
	}
	if status := get("made.up.token"); status != http.StatusUnauthorized {
		t.Errorf("a pull with a made-up token: %d, want 401", status)
	}
	cache.Kill()
	if status := get(tr.Token); status != http.StatusOK {
		t.Errorf("with the cache down, alice's login it accepted: %d, want the store's copy", status)
	}
	if status := get(""); status != http.StatusServiceUnavailable {
		t.Errorf("with the cache down, no login: %d, want 503", status)
	}
}
