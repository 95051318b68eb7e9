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
	refuseLinks(t, ".",
		"github.com/minio/minio-go/",
		"github.com/google/go-containerregistry/pkg/v1/remote",
		"github.com/depproxy/depproxy/proxy/cache",
		"github.com/depproxy/depproxy/proxy/storage",
		"github.com/depproxy/depproxy/proxy/upstream",
		"github.com/depproxy/depproxy/proxy/server",
		"github.com/depproxy/depproxy/proxy/registry",
		"github.com/depproxy/depproxy/proxy/verify",
		"github.com/sigstore/",
	)
}

// The proxy serves Helm repositories without Helm's chart package: it
// registers every Kubernetes API type of client-go at start (10 MiB more
// in every replica). Its tests hold proxy/helmrepo to it instead.
func TestProxyLinksNoHelm(t *testing.T) {
	refuseLinks(t, "./proxy/cmd/depproxy", "helm.sh/helm/", "k8s.io/client-go/kubernetes/scheme")
}

// refuseLinks fails for each package pkg links under one of forbidden.
func refuseLinks(t *testing.T, pkg string, forbidden ...string) {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps %s listed %d packages: not a binary's", pkg, len(deps))
	}
	for _, dep := range deps {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, strings.TrimSuffix(f, "/")+"/") {
				t.Errorf("%s links %s", pkg, dep)
			}
		}
	}
}
