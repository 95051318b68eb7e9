package nodeconfig

import (
	"strings"
	"testing"
	"time"
)

func TestRenderNodeFile(t *testing.T) {
	o := NodeOptions{Endpoint: "http://10.0.0.5:30500", DialTimeout: time.Second}
	path, hosts, err := RenderNodeFile(ContainerdHosts, "/etc/containerd/certs.d", NodeMirror{Registry: "docker.io"}, o)
	if err != nil || path != "/etc/containerd/certs.d/docker.io/hosts.toml" {
		t.Fatalf("%s %v", path, err)
	}
	for _, line := range []string{`server = "https://registry-1.docker.io"`, `[host."http://10.0.0.5:30500"]`,
		`capabilities = ["pull", "resolve"]`, `dial_timeout = "1s"`} {
		if !strings.Contains(string(hosts), line) {
			t.Errorf("hosts.toml lacks %s:\n%s", line, hosts)
		}
	}
	_, tlsHosts, err := RenderNodeFile(ContainerdHosts, "/d", NodeMirror{Registry: "ghcr.io", Server: "https://ghcr.internal"},
		NodeOptions{Endpoint: "https://cache.example:5000", CA: "/etc/containerd/certs.d/ca.crt"})
	if err != nil || !strings.Contains(string(tlsHosts), `ca = "/etc/containerd/certs.d/ca.crt"`) || !strings.Contains(string(tlsHosts), `server = "https://ghcr.internal"`) ||
		strings.Contains(string(tlsHosts), "dial_timeout") {
		t.Errorf("an https cache with a CA, no dial timeout: %v\n%s", err, tlsHosts)
	}
	path, conf, err := RenderNodeFile(ContainersConf, "/etc/containers/registries.conf.d", NodeMirror{Registry: "ghcr.io"}, o)
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
	}{{"docker.io", "cache:5000"}, {"docker.io", "http://cache:5000/v2"}, {"../etc", "http://c:1"}, {"a\"b", "http://c:1"},
		{"_default", "http://c:1"}, {"docker.io\x01", "http://c:1"}, {"docker.io\n[host.\"x\"]", "http://c:1"}, {"a_b.io", "http://c:1"},
		{"docker.io", "http://c:1/\x7f"}} {
		if _, _, err := RenderNodeFile(ContainerdHosts, "/d", NodeMirror{Registry: bad.registry}, NodeOptions{Endpoint: bad.endpoint}); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	// The catch-all, when asked for: no server of its own.
	_, all, err := RenderNodeFile(ContainerdHosts, "/d", NodeMirror{Registry: DefaultRegistry}, NodeOptions{Endpoint: "http://c:1", AllowDefault: true})
	if err != nil || strings.Contains(string(all), "server =") || !strings.Contains(string(all), `[host."http://c:1"]`) {
		t.Errorf("_default: %v\n%s", err, all)
	}
	if _, _, err := RenderNodeFile(ContainersConf, "/d", NodeMirror{Registry: DefaultRegistry}, NodeOptions{Endpoint: "http://c:1", AllowDefault: true}); err == nil {
		t.Error("a registries.conf catch-all was rendered")
	}
}

// With the node's own mirror, the runtime asks it first, then the cache,
// then the registry.
func TestRenderNodeFileLocalFirst(t *testing.T) {
	o := NodeOptions{Endpoint: "http://10.0.0.5:30500", DialTimeout: time.Second, Local: "http://127.0.0.1:5050"}
	_, hosts, err := RenderNodeFile(ContainerdHosts, "/d", NodeMirror{Registry: "docker.io"}, o)
	if err != nil {
		t.Fatal(err)
	}
	h := string(hosts)
	server, local, cache := strings.Index(h, "server = "), strings.Index(h, `[host."http://127.0.0.1:5050"]`), strings.Index(h, `[host."http://10.0.0.5:30500"]`)
	if server < 0 || local < 0 || cache < 0 || !(server < local && local < cache) || strings.Count(h, `dial_timeout = "1s"`) != 2 {
		t.Errorf("hosts.toml does not name the registry, then the local mirror, then the cache, each with the dial timeout:\n%s", h)
	}
	_, conf, err := RenderNodeFile(ContainersConf, "/d", NodeMirror{Registry: "ghcr.io"}, o)
	c := string(conf)
	if err != nil || strings.Index(c, `location = "127.0.0.1:5050/ghcr.io"`) < 0 || strings.Index(c, `location = "127.0.0.1:5050/ghcr.io"`) > strings.Index(c, `location = "10.0.0.5:30500/ghcr.io"`) {
		t.Errorf("registries.conf does not list the local mirror before the cache: %v\n%s", err, c)
	}
	for _, bad := range []string{"127.0.0.1:5050", "http://127.0.0.1:5050/v2", "http://127.0.0.1:5050/\"x"} {
		if _, _, err := RenderNodeFile(ContainerdHosts, "/d", NodeMirror{Registry: "docker.io"}, NodeOptions{Endpoint: "http://c:1", Local: bad}); err == nil {
			t.Errorf("local mirror %q accepted", bad)
		}
	}
}
