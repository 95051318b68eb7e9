package manifest

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestMediaType(t *testing.T) {
	const (
		ociIndex    = "application/vnd.oci.image.index.v1+json"
		ociManifest = "application/vnd.oci.image.manifest.v1+json"
		dockerList  = "application/vnd.docker.distribution.manifest.list.v2+json"
		docker2     = "application/vnd.docker.distribution.manifest.v2+json"
	)
	// seed 001: an index pushed by buildah, without mediaType.
	seed001 := `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3c941fdcdaf20de3e7482b593fd09e8275c366a6bfe43f0f45334d858cc4703e","size":123,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}`
	cases := []struct {
		name        string
		contentType string
		body        string
		want        string
		wantErr     error
	}{
		{"index without mediaType, no content type", "", seed001, ociIndex, nil},
		{"index without mediaType, generic json", "application/json", seed001, ociIndex, nil},
		{"index without mediaType, text/plain", "text/plain; charset=utf-8", seed001, ociIndex, nil},
		{"index without mediaType, served as index", ociIndex, seed001, ociIndex, nil},
		{"docker list by body", "", `{"schemaVersion":2,"mediaType":"` + dockerList + `","manifests":[]}`, dockerList, nil},
		{"oci manifest by fields", "application/octet-stream", `{"schemaVersion":2,"config":{},"layers":[]}`, ociManifest, nil},
		{"docker manifest by body", "", `{"schemaVersion":2,"mediaType":"` + docker2 + `","config":{},"layers":[]}`, docker2, nil},
		{"upstream type is kept as sent", docker2 + "; charset=utf-8", `{"schemaVersion":2,"config":{},"layers":[]}`, docker2 + "; charset=utf-8", nil},
		{"a type that is no manifest type is replaced", "application/vnd.example.thing+json", `{"schemaVersion":2,"config":{},"layers":[]}`, ociManifest, nil},
		{"an upstream's text/html is never served", "image/svg+xml", `{"schemaVersion":2,"mediaType":"text/html","config":{},"layers":[]}`, ociManifest, nil},
		{"an author's text/html is never served", "", `{"schemaVersion":2,"mediaType":"text/html","manifests":[]}`, ociIndex, nil},
		{"a media type with a newline is never served", "", `{"schemaVersion":2,"mediaType":"` + docker2 + `\nX-Evil: 1","config":{},"layers":[]}`, ociManifest, nil},
		{"a content type with a control character", docker2 + "\x01", `{"schemaVersion":2,"mediaType":"` + docker2 + `","config":{},"layers":[]}`, docker2, nil},
		{"index with unknown child types", "", `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.example+json","digest":"sha256:00","size":1}]}`, ociIndex, nil},
		{"schema 1 by body", "application/json", `{"schemaVersion":1,"name":"x","fsLayers":[]}`, "", ErrSchema1},
		{"schema 1 signed by type", "application/vnd.docker.distribution.manifest.v1+prettyjws", `{"schemaVersion":1}`, "", ErrSchema1},
		{"not json", "", `<!DOCTYPE html><html>`, "", ErrInvalid},
		{"json but not a manifest", "application/json", `{"hello":"world"}`, "", ErrInvalid},
		{"json array", "", `[]`, "", ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := MediaType(c.contentType, []byte(c.body))
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("error %v, want %v", err, c.wantErr)
			}
			if got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestChildrenKeepsEveryEntry(t *testing.T) {
	body := `{"schemaVersion":2,"manifests":[
		{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"amd64"}},
		{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:bb","size":2,"platform":{"os":"linux","architecture":"arm64"}},
		{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":3,"platform":{"os":"unknown","architecture":"unknown"}},
		{"mediaType":"application/vnd.example.sbom+json","digest":"sha256:dd","size":4}]}`
	children, err := Children([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(children) != 4 || children[3].MediaType != "application/vnd.example.sbom+json" || children[2].Platform.OS != "unknown" {
		t.Fatalf("children: %+v", children)
	}
}

// FuzzMediaType: detection never panics, never calls an index anything
// but an index, and only answers for JSON objects.
func FuzzMediaType(f *testing.F) {
	f.Add("", `{"schemaVersion":2,"manifests":[]}`)
	f.Add("application/json", `{"schemaVersion":2,"config":{},"layers":[]}`)
	f.Add("application/vnd.docker.distribution.manifest.v1+prettyjws", `{"schemaVersion":1}`)
	f.Add("text/html", `<html>`)
	f.Add(";;;=", `{"mediaType":""}`)
	f.Fuzz(func(t *testing.T, contentType, body string) {
		mt, err := MediaType(contentType, []byte(body))
		if err != nil {
			return
		}
		if mt == "" {
			t.Fatal("no error and no media type")
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal([]byte(body), &obj) != nil {
			t.Fatalf("accepted a body that is not a JSON object: %q", body)
		}
		if _, isList := obj["manifests"]; isList && contentType == "" && obj["mediaType"] == nil && !IsIndex(mt) {
			t.Fatalf("an index without mediaType detected as %q", mt)
		}
	})
}
