package layout

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestRoundTrips(t *testing.T) {
	d := digest.FromString("x")
	for _, key := range []string{Blob(d), Manifest(d)} {
		if got, ok := ParseDigest(key); !ok || got != d {
			t.Errorf("ParseDigest(%s) = %s, %v", key, got, ok)
		}
	}
	for _, registry := range []string{"docker.io", "localhost:5000"} {
		if reg, repo, tag, ok := ParseTag(Tag(registry, "library/alpine", "3.20")); !ok || reg != registry || repo != "library/alpine" || tag != "3.20" {
			t.Errorf("ParseTag of %q: %s %s %s %v", registry, reg, repo, tag, ok)
		}
	}
	if Tag("docker.io", "x", "1") == Tag("ghcr.io", "x", "1") {
		t.Error("two registries' tags share a key")
	}
	for _, bad := range []string{"blobs/sha256/zz", "blobs/sha256", LastRead(Blob(d)), "repositories/x/_tags/v1", "registries/docker.io/x/_tags/", "registries/docker.io/_tags/v1", "registries//x/_tags/v1", "registries/docker.io"} {
		if _, ok := ParseDigest(bad); ok && strings.HasPrefix(bad, "blobs/sha256/zz") {
			t.Errorf("ParseDigest accepted %s", bad)
		}
		if _, _, _, ok := ParseTag(bad); ok {
			t.Errorf("ParseTag accepted %s", bad)
		}
	}
}
