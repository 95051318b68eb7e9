package upstream

import "testing"

func TestRepositoryShortNames(t *testing.T) {
	for _, c := range []struct{ upstream, repo, want string }{
		{DockerHub, "nginx", "library/nginx"},
		{"https://docker.io", "nginx", "library/nginx"},
		{DockerHub, "library/nginx", "library/nginx"},
		{DockerHub, "grafana/mimir", "grafana/mimir"},
		{"https://quay.io", "nginx", "nginx"},
		{"http://127.0.0.1:5001", "alpine", "alpine"},
	} {
		c0, err := New(c.upstream)
		if err != nil {
			t.Fatal(err)
		}
		if got := c0.Repository(c.repo); got != c.want {
			t.Errorf("%s %s: got %s, want %s", c.upstream, c.repo, got, c.want)
		}
	}
}

func TestNewRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"registry-1.docker.io", "ftp://x", "", "http://"} {
		if _, err := New(u); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}
