package manifest

import (
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Child is one entry of an index, kept as the index states it.
type Child struct {
	MediaType string       `json:"mediaType"`
	Digest    string       `json:"digest"`
	Size      int64        `json:"size"`
	Platform  *v1.Platform `json:"platform,omitempty"`
}

// Children lists the entries of an index. Entries of any media type are
// returned, known or not: attestations and artifacts are children too.
func Children(body []byte) ([]Child, error) {
	var idx struct {
		Manifests []Child `json:"manifests"`
	}
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return idx.Manifests, nil
}

// Blobs lists the blobs an image manifest points at, as it states them:
// its config and its layers.
func Blobs(body []byte) ([]v1.Descriptor, error) {
	var m struct {
		Config v1.Descriptor   `json:"config"`
		Layers []v1.Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	blobs := make([]v1.Descriptor, 0, len(m.Layers)+1)
	if m.Config.Digest.Hex != "" {
		blobs = append(blobs, m.Config)
	}
	return append(blobs, m.Layers...), nil
}

// References lists the blob digests an image manifest points at: its
// config and its layers.
func References(body []byte) ([]string, error) {
	blobs, err := Blobs(body)
	if err != nil {
		return nil, err
	}
	refs := make([]string, 0, len(blobs))
	for _, b := range blobs {
		refs = append(refs, b.Digest.String())
	}
	return refs, nil
}
