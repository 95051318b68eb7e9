package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// podman (Debian's) pulls docker.io and ghcr.io images through the cache
// by the registries.conf.d drop-ins `depproxy hosts` writes: the path form
// of the mirror.
func TestPodmanPullsThroughTheMirror(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("podman with its own storage needs root here: run the tests as root (CI does)")
	}
	tr := newTwoRegistries(t)
	data := t.TempDir()
	base := proxytest.StartBinary(t, "--upstream", "docker.io="+tr.hub.front.URL(), "--upstream", "ghcr.io="+tr.ghcr.front.URL(), "--storage", data).URL

	home := t.TempDir()
	dropins := filepath.Join(home, ".config", "containers", "registries.conf.d")
	out, err := exec.Command(proxytest.Binary(t), "hosts", "--endpoint", base, "--registry", "docker.io", "--registry", "ghcr.io",
		"--format", "registries.conf", "--dir", dropins).CombinedOutput()
	if err != nil {
		t.Fatalf("depproxy hosts: %v\n%s", err, out)
	}
	mainConf := filepath.Join(home, "registries.conf")
	os.WriteFile(mainConf, []byte("# nothing but the drop-ins\n"), 0o644)
	podman := podmanRunner(t, "HOME="+home, "CONTAINERS_REGISTRIES_CONF="+mainConf, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"))
	for ref, want := range map[string]string{"docker.io/" + tr.repo + ":v1": tr.hubImage, "ghcr.io/" + tr.repo + ":v1": tr.ghcrImage} {
		if out, err := podman("pull", ref); err != nil {
			t.Fatalf("podman pull %s: %v\n%s", ref, err, out)
		}
		out, err := podman("image", "inspect", "--format", "{{.Digest}}", ref)
		if err != nil || strings.TrimSpace(out) != want {
			t.Fatalf("%s: podman has %q (%v), the registry %s", ref, out, err, want)
		}
	}
	for _, registry := range []string{"docker.io", "ghcr.io"} {
		if _, err := os.Stat(filepath.Join(data, "registries", registry, tr.repo, "_tags", "v1")); err != nil {
			t.Errorf("podman's %s image did not come through the cache: %v", registry, err)
		}
	}
}

// podmanRunner runs Debian's podman with storage of its own, and env.
func podmanRunner(t *testing.T, env ...string) func(args ...string) (string, error) {
	t.Helper()
	root, err := os.MkdirTemp("", "dppm-") // podman wants a short runroot
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	return func(args ...string) (string, error) {
		cmd := exec.Command(testenv.Tool(t, "podman"), append([]string{"--root", filepath.Join(root, "storage"), "--runroot", filepath.Join(root, "run"),
			"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
}
