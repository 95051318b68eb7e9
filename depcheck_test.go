package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The operator renders the proxy's settings and nothing more of it: it
// links none of the proxy's engine (storage clients, the cache, the
// upstream client, the HTTP surface), which DESIGN.md's boundary draws
// and which would otherwise creep back in through a default or a helper.
func TestManagerLinksNoProxyEngine(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"github.com/minio/minio-go/",
		"github.com/google/go-containerregistry/pkg/v1/remote",
		"github.com/depproxy/depproxy/proxy/cache",
		"github.com/depproxy/depproxy/proxy/storage",
		"github.com/depproxy/depproxy/proxy/upstream",
		"github.com/depproxy/depproxy/proxy/server",
		"github.com/depproxy/depproxy/proxy/registry",
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps listed %d packages: not the manager's", len(deps))
	}
	for _, dep := range deps {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, strings.TrimSuffix(f, "/")+"/") {
				t.Errorf("the manager links %s", dep)
			}
		}
	}
}
