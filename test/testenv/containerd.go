package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Containerd is a containerd of the caller's own, beside whatever else
// runs on the machine: its own root, state and socket. It needs root.
type Containerd struct {
	Socket string
}

// StartContainerd runs the containerd binary tool (containerd for
// Debian's 1.6, containerd2 for the 2.x that `make tools` builds) with a
// config of this version and these extra lines.
func StartContainerd(t T, tool string, version int, extra string) *Containerd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("containerd needs root: run the tests as root (CI does)")
	}
	dir, err := os.MkdirTemp("", "dpctr-") // short: a socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{Socket: filepath.Join(dir, "c.sock")}
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version = %d\nroot = %q\nstate = %q\n%s\n[grpc]\n  address = %q\n",
		version, filepath.Join(dir, "root"), filepath.Join(dir, "state"), extra, c.Socket)), 0o644)
	var logs strings.Builder
	cmd := exec.Command(Tool(t, tool), "--config", cfg)
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		exec.Command("umount", "-R", filepath.Join(dir, "root")).Run()
		os.RemoveAll(dir)
	})
	for i := 0; ; i++ {
		if conn, err := net.Dial("unix", c.Socket); err == nil {
			conn.Close()
			return c
		}
		if i > 600 {
			t.Fatalf("%s did not start:\n%s", tool, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Ctr runs Debian's ctr against this containerd.
func (c *Containerd) Ctr(t T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(Tool(t, "ctr"), append([]string{"--address", c.Socket}, args...)...).CombinedOutput()
	return string(out), err
}

// Crictl runs crictl against this containerd's CRI image service, as
// kubelet uses it.
func (c *Containerd) Crictl(t T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(Tool(t, "crictl"), append([]string{"--image-endpoint", "unix://" + c.Socket, "--timeout", "60s"}, args...)...).CombinedOutput()
	return string(out), err
}
