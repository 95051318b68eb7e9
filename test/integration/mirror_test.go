package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// containerd wraps a test's own containerd with the look-ups the tests
// make.
type containerd struct{ *testenv.Containerd }

func startContainerd(t *testing.T) *containerd {
	t.Helper()
	return &containerd{testenv.StartContainerd(t, "containerd", 2, `disabled_plugins = ["io.containerd.grpc.v1.cri"]`)}
}

// digestOfImage is the digest containerd recorded for ref.
func (c *containerd) digestOfImage(t *testing.T, ns, ref string) string {
	t.Helper()
	out, err := c.Ctr(t, "-n", ns, "images", "ls")
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == ref {
			return f[2]
		}
	}
	t.Fatalf("%s is not in containerd's images:\n%s", ref, out)
	return ""
}

// containerd 1.6, configured by `depproxy hosts`, pulls an image of each
// of two registries through one cache, and falls back to the registries
// themselves when the cache is stopped.
func TestContainerdPullsThroughTheMirror(t *testing.T) {
	tr := newTwoRegistries(t)
	ctrd := startContainerd(t)
	data := t.TempDir()
	proxy := proxytest.StartBinary(t, "--upstream", "docker.io="+tr.hub.front.URL(), "--upstream", "ghcr.io="+tr.ghcr.front.URL(),
		"--storage", data)
	base := proxy.URL

	hostsDir := t.TempDir()
	// A hosts.toml that was there before is kept aside, and put back.
	os.MkdirAll(filepath.Join(hostsDir, "ghcr.io"), 0o755)
	before := "server = \"https://ghcr.io\"\n"
	os.WriteFile(filepath.Join(hostsDir, "ghcr.io", "hosts.toml"), []byte(before), 0o644)
	hosts := func(extra ...string) {
		args := append([]string{"hosts", "--endpoint", base, "--registry", "docker.io", "--registry", "ghcr.io",
			"--server", "docker.io=" + tr.hub.front.URL(), "--server", "ghcr.io=" + tr.ghcr.front.URL(), "--dir", hostsDir}, extra...)
		if out, err := exec.Command(proxytest.Binary(t), args...).CombinedOutput(); err != nil {
			t.Fatalf("depproxy hosts: %v\n%s", err, out)
		}
	}
	hosts()

	refs := map[string]string{"docker.io/" + tr.repo + ":v1": tr.hubImage, "ghcr.io/" + tr.repo + ":v1": tr.ghcrImage}
	for ref, want := range refs {
		if out, err := ctrd.Ctr(t, "-n", "through", "images", "pull", "--hosts-dir", hostsDir, ref); err != nil {
			t.Fatalf("ctr pull %s: %v\n%s", ref, err, out)
		}
		if got := ctrd.digestOfImage(t, "through", ref); got != want {
			t.Fatalf("%s: containerd has %s, the registry %s", ref, got, want)
		}
	}
	// Through the cache, each from its own upstream: the tags are the
	// cache's, by registry.
	for _, registry := range []string{"docker.io", "ghcr.io"} {
		if _, err := os.Stat(filepath.Join(data, "registries", registry, tr.repo, "_tags", "v1")); err != nil {
			t.Errorf("the cache holds no %s tag: the pull did not come through it (%v)", registry, err)
		}
	}

	proxy.Kill()
	for ref, want := range refs {
		start := time.Now()
		if out, err := ctrd.Ctr(t, "-n", "fallback", "images", "pull", "--hosts-dir", hostsDir, ref); err != nil {
			t.Fatalf("ctr pull %s with the cache stopped: %v\n%s", ref, err, out)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("%s: the fallback took %v", ref, took)
		}
		if got := ctrd.digestOfImage(t, "fallback", ref); got != want {
			t.Fatalf("%s from the fallback: %s, want %s", ref, got, want)
		}
	}

	hosts("--remove")
	if got, _ := os.ReadFile(filepath.Join(hostsDir, "ghcr.io", "hosts.toml")); string(got) != before {
		t.Errorf("the hosts.toml that was there before is not back: %q", got)
	}
	if _, err := os.Stat(filepath.Join(hostsDir, "docker.io")); !os.IsNotExist(err) {
		t.Errorf("--remove left docker.io's directory: %v", err)
	}
}

// `depproxy node` writes the node's files only once the cache answers at
// the node's address, takes them out while it stays unreachable, puts
// them back when it answers, and on SIGTERM takes them out and restores
// what was there before.
func TestNodeAgentFollowsTheCache(t *testing.T) {
	tr := newTwoRegistries(t)
	addr := testenv.FreeAddr(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "ghcr.io"), 0o755)
	before := "server = \"https://ghcr.io\"\n"
	os.WriteFile(filepath.Join(dir, "ghcr.io", "hosts.toml"), []byte(before), 0o644)
	hub, ghcr := filepath.Join(dir, "docker.io", "hosts.toml"), filepath.Join(dir, "ghcr.io", "hosts.toml")
	ours := func(path string) bool {
		b, _ := os.ReadFile(path)
		return strings.HasPrefix(string(b), "# Written by depproxy")
	}

	var agentLogs syncBuffer
	agent := exec.Command(proxytest.Binary(t), "node", "--endpoint", "http://"+addr, "--registry", "docker.io", "--registry", "ghcr.io",
		"--dir", dir, "--unreachable", "1s", "--interval", "100ms", "--listen", testenv.FreeAddr(t))
	agent.Stderr = &agentLogs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })

	time.Sleep(1500 * time.Millisecond)
	if ours(hub) || ours(ghcr) {
		t.Fatal("the node's files were written before the cache answered")
	}
	startProxy := func() *proxytest.Process {
		return proxytest.Serve{Listen: addr, Args: []string{"--upstream", "docker.io=" + tr.hub.front.URL(), "--upstream", "ghcr.io=" + tr.ghcr.front.URL(),
			"--storage", t.TempDir()}}.Start(t)
	}
	proxy := startProxy()
	eventually(t, 10*time.Second, "the files are not written while the cache answers:\n"+agentLogs.String(), func() bool { return ours(hub) && ours(ghcr) })
	if b, _ := os.ReadFile(ghcr + ".depproxy-saved"); string(b) != before {
		t.Errorf("the node's own hosts.toml was not kept aside: %q", b)
	}

	proxy.Kill()
	eventually(t, 10*time.Second, "the files stay while the cache is unreachable", func() bool { return !ours(hub) && !ours(ghcr) })
	if b, _ := os.ReadFile(ghcr); string(b) != before {
		t.Errorf("while the cache is away, the node's own hosts.toml is not back: %q", b)
	}
	startProxy()
	eventually(t, 10*time.Second, "the files do not come back when the cache answers again", func() bool { return ours(hub) && ours(ghcr) })

	agent.Process.Signal(syscall.SIGTERM)
	if err := agent.Wait(); err != nil {
		t.Fatalf("the agent exited with %v after SIGTERM:\n%s", err, agentLogs.String())
	}
	if ours(hub) || ours(ghcr) {
		t.Fatal("SIGTERM left the node's files")
	}
	if b, _ := os.ReadFile(ghcr); string(b) != before {
		t.Errorf("after SIGTERM, the node's own hosts.toml is not back: %q", b)
	}
}

// startContainerd2 runs containerd 2.x (built by `make tools`) with its
// CRI plugin, its registry settings given by registryConfig.
func startContainerd2(t *testing.T, registryConfig string) *containerd {
	t.Helper()
	return &containerd{testenv.StartContainerd(t, "containerd2", 3, registryConfig)}
}

// repoDigest is the digest containerd's CRI image service reports for
// ref.
func (c *containerd) repoDigest(t *testing.T, ref string) string {
	t.Helper()
	out, err := c.Crictl(t, "inspecti", "-o", "json", ref)
	if err != nil {
		t.Fatalf("crictl inspecti %s: %v\n%s", ref, err, out)
	}
	var img struct {
		Status struct {
			RepoDigests []string `json:"repoDigests"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &img); err != nil || len(img.Status.RepoDigests) == 0 {
		t.Fatalf("crictl inspecti %s: %v\n%s", ref, err, out)
	}
	_, d, _ := strings.Cut(img.Status.RepoDigests[0], "@")
	return d
}

// containerd 2.x pulls through the cache via its CRI image service, as
// kubelet does, with the transfer service's defaults and the one setting
// docs/cluster-mirror.md gives; without that setting the same pull bypasses the
// cache.
func TestContainerd2PullsThroughCRI(t *testing.T) {
	tr := newTwoRegistries(t)
	// A third name for the ghcr upstream, on loopback: a registry that
	// containerd reaches without asking DNS when the cache is bypassed.
	local := "localhost:" + tr.ghcr.front.Addr[strings.LastIndex(tr.ghcr.front.Addr, ":")+1:]
	pushImage(t, tr.ghcr.registry.Addr, tr.repo, "v2", ociImage(t, 1))
	data := t.TempDir()
	base := proxytest.StartBinary(t, "--upstream", "docker.io="+tr.hub.front.URL(), "--upstream", "ghcr.io="+tr.ghcr.front.URL(),
		"--upstream", local+"="+tr.ghcr.front.URL(), "--storage", data).URL
	hostsDir := t.TempDir()
	out, err := exec.Command(proxytest.Binary(t), "hosts", "--endpoint", base, "--registry", "docker.io", "--registry", "ghcr.io", "--registry", local,
		"--server", "docker.io="+tr.hub.front.URL(), "--server", "ghcr.io="+tr.ghcr.front.URL(), "--server", local+"="+tr.ghcr.front.URL(),
		"--dir", hostsDir).CombinedOutput()
	if err != nil {
		t.Fatalf("depproxy hosts: %v\n%s", err, out)
	}
	throughCache := func(registry, tag string) bool {
		_, err := os.Stat(filepath.Join(data, "registries", registry, tr.repo, "_tags", tag))
		return err == nil
	}

	// The setting docs/cluster-mirror.md gives for containerd 2.x.
	setting := fmt.Sprintf("[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = %q\n", hostsDir)
	c := startContainerd2(t, setting)
	for ref, want := range map[string]string{"docker.io/" + tr.repo + ":v1": tr.hubImage, "ghcr.io/" + tr.repo + ":v1": tr.ghcrImage, local + "/" + tr.repo + ":v1": tr.ghcrImage} {
		if out, err := c.Crictl(t, "pull", ref); err != nil {
			t.Fatalf("crictl pull %s: %v\n%s", ref, err, out)
		}
		if got := c.repoDigest(t, ref); got != want {
			t.Fatalf("%s: containerd has %s, the registry %s", ref, got, want)
		}
	}
	for _, registry := range []string{"docker.io", "ghcr.io", local} {
		if !throughCache(registry, "v1") {
			t.Errorf("%s's image did not come through the cache", registry)
		}
	}

	// Without it, containerd 2.x goes to the registry itself.
	bare := startContainerd2(t, "")
	if out, err := bare.Crictl(t, "pull", local+"/"+tr.repo+":v2"); err != nil {
		t.Fatalf("crictl pull without the setting: %v\n%s", err, out)
	}
	if throughCache(local, "v2") {
		t.Fatal("without config_path the pull came through the cache: the setting is not what makes it")
	}
}

// The node commands refuse what would make a broken or too wide node
// configuration: containerd's catch-all unless asked for, and names a
// hosts.toml cannot hold. Nothing is written.
func TestNodeCommandsRefuseBadRegistries(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--registry", "_default"}, "--allow-default"},
		{[]string{"--registry", "docker.io\x01"}, "want a host name"},
		{[]string{"--registry", "ghcr.io", "--ca", "/etc/ca.pem\n[host.\"x\"]"}, "control characters"},
		{[]string{"--registry", "_default", "--allow-default", "--format", "registries.conf"}, "no catch-all"},
	} {
		for _, command := range []string{"hosts", "node"} {
			dir := t.TempDir()
			args := append([]string{command, "--endpoint", "http://127.0.0.1:1", "--dir", dir, "--listen", "127.0.0.1:0"}, c.args...)
			if command == "hosts" {
				args = append([]string{command, "--endpoint", "http://127.0.0.1:1", "--dir", dir}, c.args...)
			}
			cmd := exec.Command(proxytest.Binary(t), args...)
			out, err := runFor(cmd, 10*time.Second)
			if err == nil || !strings.Contains(out, c.want) {
				t.Errorf("depproxy %s %q: %v, want a refusal saying %q:\n%s", command, c.args, err, c.want, out)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("depproxy %s %q wrote %v", command, c.args, entries)
			}
		}
	}
	dir := t.TempDir()
	out, err := exec.Command(proxytest.Binary(t), "hosts", "--endpoint", "http://127.0.0.1:1", "--dir", dir, "--registry", "_default", "--allow-default").CombinedOutput()
	if b, rerr := os.ReadFile(filepath.Join(dir, "_default", "hosts.toml")); err != nil || rerr != nil || strings.Contains(string(b), "server =") {
		t.Errorf("the catch-all, asked for: %v %v\n%s\n%s", err, rerr, out, b)
	}
}

// runFor runs cmd and returns its output; a command still running after
// d is killed, and that is an error.
func runFor(cmd *exec.Cmd, d time.Duration) (string, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("still running after %s", d)
	}
}
