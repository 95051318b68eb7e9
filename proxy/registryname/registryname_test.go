package registryname

import "testing"

func TestDockerHubsNames(t *testing.T) {
	for _, host := range []string{"docker.io", "index.docker.io", "registry-1.docker.io"} {
		if !IsDockerHub(host) || Of("https://"+host) != DockerHub || Server(host) != DockerHubURL {
			t.Errorf("%s is not taken for Docker Hub", host)
		}
	}
	if IsDockerHub("ghcr.io") || Of("https://ghcr.io") != "ghcr.io" || Server("ghcr.io") != "https://ghcr.io" {
		t.Error("ghcr.io is taken for Docker Hub")
	}
	for _, c := range []struct {
		hub        bool
		repo, want string
	}{{true, "nginx", "library/nginx"}, {true, "grafana/mimir", "grafana/mimir"}, {false, "nginx", "nginx"}} {
		if got := Repository(c.hub, c.repo); got != c.want {
			t.Errorf("Repository(%v, %s) = %s, want %s", c.hub, c.repo, got, c.want)
		}
	}
}

func TestNames(t *testing.T) {
	for _, ok := range []string{"docker.io", "registry.internal:5000", "localhost", "a-b.example"} {
		if !Valid(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "a_b.io", "../etc", "a b", "-a.io", "a.io:", "a.io:x", "a..io", "docker.io/library"} {
		if Valid(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, ok := range []string{"https://ghcr.io", "http://10.0.0.1:5000/"} {
		if _, valid := ServerURL(ok); !valid {
			t.Errorf("ServerURL(%q) refused", ok)
		}
	}
	for _, bad := range []string{"ghcr.io", "ftp://ghcr.io", "https://ghcr.io/v2", "https://ghcr.io?x=1", "https://u:p@ghcr.io", "https://"} {
		if _, valid := ServerURL(bad); valid {
			t.Errorf("ServerURL(%q) accepted", bad)
		}
	}
}
