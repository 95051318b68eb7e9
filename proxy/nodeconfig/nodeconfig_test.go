package nodeconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRender(t *testing.T) {
	o := Options{Endpoint: "http://10.0.0.5:30500", DialTimeout: time.Second}
	path, hosts, err := Render(Containerd, "/etc/containerd/certs.d", Mirror{Registry: "docker.io"}, o)
	if err != nil || path != "/etc/containerd/certs.d/docker.io/hosts.toml" {
		t.Fatalf("%s %v", path, err)
	}
	for _, line := range []string{`server = "https://registry-1.docker.io"`, `[host."http://10.0.0.5:30500"]`,
		`capabilities = ["pull", "resolve"]`, `dial_timeout = "1s"`} {
		if !strings.Contains(string(hosts), line) {
			t.Errorf("hosts.toml lacks %s:\n%s", line, hosts)
		}
	}
	path, conf, err := Render(Containers, "/etc/containers/registries.conf.d", Mirror{Registry: "ghcr.io"}, o)
	if err != nil || path != "/etc/containers/registries.conf.d/depproxy-ghcr.io.conf" {
		t.Fatalf("%s %v", path, err)
	}
	for _, line := range []string{`prefix = "ghcr.io"`, `location = "10.0.0.5:30500/ghcr.io"`, "insecure = true"} {
		if !strings.Contains(string(conf), line) {
			t.Errorf("registries.conf lacks %s:\n%s", line, conf)
		}
	}
	for _, bad := range []struct {
		registry, endpoint string
	}{{"docker.io", "cache:5000"}, {"docker.io", "http://cache:5000/v2"}, {"../etc", "http://c:1"}, {"a\"b", "http://c:1"}} {
		if _, _, err := Render(Containerd, "/d", Mirror{Registry: bad.registry}, Options{Endpoint: bad.endpoint}); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// A file that is not depproxy's is kept aside, never overwritten or
// removed, and comes back when depproxy's goes.
func TestWriteKeepsAsideAndRemoveRestores(t *testing.T) {
	path := filepath.Join(t.TempDir(), "docker.io", "hosts.toml")
	os.MkdirAll(filepath.Dir(path), 0o755)
	os.WriteFile(path, []byte("server = \"https://mirror.corp\"\n"), 0o644)
	_, content, _ := Render(Containerd, "", Mirror{Registry: "docker.io"}, Options{Endpoint: "http://c:1"})
	for i := 0; i < 2; i++ { // writing again keeps the original aside, not ours
		if err := Write(path, content); err != nil {
			t.Fatal(err)
		}
	}
	if !Present(path) {
		t.Fatal("depproxy's file is not in place")
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "server = \"https://mirror.corp\"\n" {
		t.Fatalf("restored %q", got)
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "server = \"https://mirror.corp\"\n" {
		t.Fatalf("a second remove touched a file not depproxy's: %q", got)
	}
}
