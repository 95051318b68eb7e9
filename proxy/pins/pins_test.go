package pins

import (
	"context"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/storage"
)

func TestParse(t *testing.T) {
	d := digest.Digest("sha256:" + strings.Repeat("a", 64))
	refs, err := Parse([]byte(`# what the cluster runs
nginx
docker.io/library/postgres:16
index.docker.io/library/postgres:16
  ghcr.io/org/tool@` + d.String() + `

registry-1.docker.io/grafana/mimir:2.14
not a reference
UPPER/case:1
`))
	want := []string{
		"docker.io/library/nginx:latest",
		"docker.io/library/postgres:16", // the alias: the same image, once
		"ghcr.io/org/tool@" + d.String(),
		"docker.io/grafana/mimir:2.14",
	}
	var got []string
	for _, r := range refs {
		got = append(got, r.String())
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("refs:\n%q\nwant\n%q", got, want)
	}
	// The lines that are not references are each named, by number.
	if err == nil || !strings.Contains(err.Error(), "line 8") || !strings.Contains(err.Error(), "line 9") {
		t.Errorf("the bad lines: %v", err)
	}
}

func TestSetRoundTrip(t *testing.T) {
	store := storage.NewMemory()
	ctx := context.Background()
	if s, err := Load(ctx, store); err != nil || len(s.Manifests)+len(s.Tags) != 0 {
		t.Fatalf("no set stored yet: %+v %v", s, err)
	}
	d := digest.Digest("sha256:" + strings.Repeat("b", 64))
	want := Set{Tags: []string{"registries/docker.io/library/nginx/_tags/1.27"}, Manifests: []digest.Digest{d}}
	if err := Store(ctx, store, want); err != nil {
		t.Fatal(err)
	}
	got, err := Load(ctx, store)
	if err != nil || len(got.Tags) != 1 || got.Tags[0] != want.Tags[0] || len(got.Manifests) != 1 || got.Manifests[0] != d {
		t.Errorf("loaded %+v %v, want %+v", got, err, want)
	}
}
