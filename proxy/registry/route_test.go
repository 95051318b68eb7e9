package registry

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/manifest"
)

func TestParseRoute(t *testing.T) {
	d := "sha256:" + strings.Repeat("a", 64)
	cases := []struct {
		path     string
		want     route
		wantCode string
	}{
		{"/v2/", route{kind: kindBase}, ""},
		{"/v2", route{kind: kindBase}, ""},
		{"/v2/alpine/manifests/3.20", route{kind: kindManifest, name: "alpine", ref: manifest.TagRef("3.20")}, ""},
		{"/v2/grafana/mimir/manifests/" + d, route{kind: kindManifest, name: "grafana/mimir", ref: manifest.DigestRef(digest.Digest(d))}, ""},
		{"/v2/a/b/c/blobs/" + d, route{kind: kindBlob, name: "a/b/c", digest: digest.Digest(d)}, ""},
		{"/v2/a/manifests/x/blobs/" + d, route{kind: kindBlob, name: "a/manifests/x", digest: digest.Digest(d)}, ""},
		{"/v2/library/alpine/tags/list", route{kind: kindTags, name: "library/alpine"}, ""},
		{"/v2/library/alpine/referrers/" + d, route{kind: kindReferrers, name: "library/alpine", digest: digest.Digest(d)}, ""},
		{"/v2/foo__bar/manifests/latest", route{kind: kindManifest, name: "foo__bar", ref: manifest.TagRef("latest")}, ""},
		{"/v2/../x/manifests/latest", route{}, "NAME_INVALID"},
		{"/v2/x/../../y/manifests/latest", route{}, "NAME_INVALID"},
		{"/v2/.x/manifests/latest", route{}, "NAME_INVALID"},
		{"/v2/x/blobs/latest", route{}, "DIGEST_INVALID"},
		{"/v2/x/manifests/-bad", route{}, "MANIFEST_INVALID"},
		{"/v2/x/unknown", route{}, "NOT_FOUND"},
		{"/x", route{}, "NOT_FOUND"},
	}
	for _, c := range cases {
		got, err := parseRoute(c.path)
		switch {
		case c.wantCode != "" && (err == nil || string(err.Code) != c.wantCode):
			t.Errorf("%s: got %+v, %v; want %s", c.path, got, err, c.wantCode)
		case c.wantCode == "" && err != nil:
			t.Errorf("%s: %v", c.path, err)
		case c.wantCode == "" && got != c.want:
			t.Errorf("%s: got %+v, want %+v", c.path, got, c.want)
		}
	}
}

// FuzzParseRoute: whatever the path, parsing never panics, and a name it
// accepts can never walk out of a storage prefix or an upstream path.
func FuzzParseRoute(f *testing.F) {
	f.Add("/v2/library/alpine/manifests/latest")
	f.Add("/v2/a/blobs/sha256:" + strings.Repeat("0", 64))
	f.Add("/v2/../../etc/passwd/tags/list")
	f.Add("/v2/a//b/referrers/sha512:00")
	f.Fuzz(func(t *testing.T, path string) {
		rt, err := parseRoute(path)
		if err != nil {
			if err.Status < 400 || err.Status >= 500 || err.Code == "" {
				t.Fatalf("%q: error %+v is not a 4xx OCI error", path, err)
			}
			return
		}
		if rt.kind == kindBase {
			return
		}
		for _, part := range strings.Split(rt.name, "/") {
			if part == "" || part == "." || part == ".." || strings.HasPrefix(part, "_") {
				t.Fatalf("%q: accepted name %q with component %q", path, rt.name, part)
			}
		}
		if len(rt.name) > 255 || strings.ContainsAny(rt.name+rt.ref.String()+rt.digest.String(), "?#%\\ \x00") {
			t.Fatalf("%q: accepted %+v", path, rt)
		}
	})
}
