package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// shape is one kind of image a cache must pull unchanged; push writes it
// to the upstream registry under repo:tag.
type shape struct {
	name string
	push func(t *testing.T, registry, repo, tag string)
}

var shapes = []shape{
	{"oci index", func(t *testing.T, reg, repo, tag string) {
		pushIndex(t, reg, repo, tag, ociIndex(t, ociImage(t, 2), ociImage(t, 2)))
	}},
	{"docker manifest list", func(t *testing.T, reg, repo, tag string) {
		idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
		idx = mutate.AppendManifests(idx,
			mutate.IndexAddendum{Add: dockerImage(t, 2), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
			mutate.IndexAddendum{Add: dockerImage(t, 2), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}})
		pushIndex(t, reg, repo, tag, idx)
	}},
	{"oci index mixing oci and docker children", func(t *testing.T, reg, repo, tag string) {
		pushIndex(t, reg, repo, tag, ociIndex(t, ociImage(t, 1), dockerImage(t, 1)))
	}},
	{"oci index without mediaType", func(t *testing.T, reg, repo, tag string) {
		// Seed 001: buildah writes indexes without the optional field.
		a, b := ociImage(t, 1), ociImage(t, 1)
		for _, img := range []v1.Image{a, b} {
			pushImage(t, reg, repo, "", img)
		}
		raw := fmt.Sprintf(`{"schemaVersion":2,"manifests":[%s,%s]}`,
			descriptorJSON(t, a, &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}),
			descriptorJSON(t, b, &v1.Platform{OS: "linux", Architecture: "amd64"}))
		pushRaw(t, reg, repo, tag, types.OCIImageIndex, []byte(raw))
	}},
	{"nested index", func(t *testing.T, reg, repo, tag string) {
		inner := ociIndex(t, ociImage(t, 1), ociImage(t, 1))
		outer := mutate.AppendManifests(ociIndex(t, ociImage(t, 1)), mutate.IndexAddendum{Add: inner})
		pushIndex(t, reg, repo, tag, outer)
	}},
	{"index with attestations", func(t *testing.T, reg, repo, tag string) {
		img := ociImage(t, 1)
		att := attestation(t)
		idx := mutate.AppendManifests(ociIndex(t, img), mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{
			Platform:    &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": digestOf(t, img).String()},
		}})
		pushIndex(t, reg, repo, tag, idx)
	}},
	{"docker image", func(t *testing.T, reg, repo, tag string) { pushImage(t, reg, repo, tag, dockerImage(t, 3)) }},
	{"oci image", func(t *testing.T, reg, repo, tag string) { pushImage(t, reg, repo, tag, ociImage(t, 3)) }},
	{"image with 40 layers", func(t *testing.T, reg, repo, tag string) { pushImage(t, reg, repo, tag, ociImage(t, 40)) }},
}

func ociImage(t *testing.T, layers int) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for i := 0; i < layers; i++ {
		l, err := random.Layer(2048, types.OCILayer)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

func dockerImage(t *testing.T, layers int) v1.Image {
	t.Helper()
	img, err := random.Image(2048, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func ociIndex(t *testing.T, imgs ...v1.Image) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for i, img := range imgs {
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: []string{"amd64", "arm64", "s390x", "ppc64le"}[i%4]},
		}})
	}
	return idx
}

// attestation is an in-toto attestation manifest as BuildKit attaches.
func attestation(t *testing.T) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	l := static.NewLayer([]byte(`{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://slsa.dev/provenance/v0.2"}`), "application/vnd.in-toto+json")
	img, err := mutate.AppendLayers(img, l)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func descriptorJSON(t *testing.T, img v1.Image, p *v1.Platform) string {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, _ := img.MediaType()
	b, _ := json.Marshal(v1.Descriptor{MediaType: mt, Digest: digestOf(t, img), Size: int64(len(raw)), Platform: p})
	return string(b)
}

func ref(t *testing.T, reg, repo, tagOrDigest string) name.Reference {
	t.Helper()
	sep := ":"
	if len(tagOrDigest) > 7 && tagOrDigest[:7] == "sha256:" {
		sep = "@"
	}
	if tagOrDigest == "" {
		tagOrDigest, sep = "latest", ":"
	}
	r, err := name.ParseReference(reg+"/"+repo+sep+tagOrDigest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func pushImage(t *testing.T, reg, repo, tag string, img v1.Image) {
	t.Helper()
	if tag == "" {
		tag = digestOf(t, img).String()
	}
	if err := remote.Write(ref(t, reg, repo, tag), img); err != nil {
		t.Fatalf("pushing %s: %v", repo, err)
	}
}

func pushIndex(t *testing.T, reg, repo, tag string, idx v1.ImageIndex) {
	t.Helper()
	if err := remote.WriteIndex(ref(t, reg, repo, tag), idx); err != nil {
		t.Fatalf("pushing %s: %v", repo, err)
	}
}

// pushRaw puts manifest bytes as they are, for shapes no library writes.
func pushRaw(t *testing.T, reg, repo, tag string, mt types.MediaType, body []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, "http://"+reg+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(body))
	req.Header.Set("Content-Type", string(mt))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("pushing raw manifest %s: %s", repo, resp.Status)
	}
}

func pushAuthed(t *testing.T, reg, repo, tag string, img v1.Image, user, pass string) {
	t.Helper()
	if err := remote.Write(ref(t, reg, repo, tag), img, remote.WithAuth(&authn.Basic{Username: user, Password: pass})); err != nil {
		t.Fatalf("pushing %s: %v", repo, err)
	}
}
