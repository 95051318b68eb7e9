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
	if repo, tag, ok := ParseTag(Tag("library/alpine", "3.20")); !ok || repo != "library/alpine" || tag != "3.20" {
		t.Errorf("ParseTag: %s %s %v", repo, tag, ok)
	}
	for _, bad := range []string{"blobs/sha256/zz", "blobs/sha256", LastRead(Blob(d)), "repositories/x/_tags/", "repositories/_tags/v1"} {
		if _, ok := ParseDigest(bad); ok && strings.HasPrefix(bad, "blobs/sha256/zz") {
			t.Errorf("ParseDigest accepted %s", bad)
		}
		if _, _, ok := ParseTag(bad); ok {
			t.Errorf("ParseTag accepted %s", bad)
		}
	}
}
