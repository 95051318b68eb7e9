// Package manifest knows the manifest media types a pull-through cache must
// accept, detects a manifest's type from its body when the upstream's
// Content-Type is missing or generic, and lists an index's children.
//
// Everything here is pure: it never changes a byte of a manifest, it only
// reads them.
package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// MaxSize bounds a manifest body. Distribution and the OCI spec both use
// 4 MiB; anything larger is refused rather than buffered.
const MaxSize = 4 << 20

// Accepted lists the manifest types asked for upstream, in addition to
// whatever the client asked for. Schema 1 is deliberately absent.
var Accepted = []string{
	string(types.OCIImageIndex),
	string(types.OCIManifestSchema1),
	string(types.DockerManifestList),
	string(types.DockerManifestSchema2),
}

// ErrSchema1 is returned for Docker schema 1 manifests, which depproxy does
// not serve: they are unsigned-content legacy and cannot be verified.
var ErrSchema1 = errors.New("docker schema 1 manifests are not supported")

// ErrInvalid is returned for a body that is not a manifest at all.
var ErrInvalid = errors.New("invalid manifest")

// probe holds the fields that tell manifest kinds apart. Pointers and raw
// messages distinguish "absent" from "empty".
type probe struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Manifests     json.RawMessage `json:"manifests"`
	Config        json.RawMessage `json:"config"`
	Layers        json.RawMessage `json:"layers"`
	FSLayers      json.RawMessage `json:"fsLayers"`
	Signatures    json.RawMessage `json:"signatures"`
}

// served are the media types a manifest is ever served with. Whatever
// else an upstream or a manifest's author names (text/html, image/svg+xml)
// would let a browser take the bytes for a page: it is replaced by what
// the body's structure says.
var served = map[string]bool{
	string(types.OCIImageIndex):                     true,
	string(types.OCIManifestSchema1):                true,
	string(types.DockerManifestList):                true,
	string(types.DockerManifestSchema2):             true,
	"application/vnd.oci.artifact.manifest.v1+json": true,
}

// MediaType returns the media type to serve a manifest with: the
// upstream's Content-Type as sent when it is a manifest type, else the
// body's mediaType when that is one, else what the body's structure says.
// The body must be a JSON object.
func MediaType(contentType string, body []byte) (string, error) {
	var p probe
	if err := json.Unmarshal(body, &p); err != nil {
		return "", fmt.Errorf("%w: body is not a JSON object: %v", ErrInvalid, err)
	}
	if p.SchemaVersion == 1 || p.FSLayers != nil || isSchema1(p.MediaType) || isSchema1(baseType(contentType)) {
		return "", ErrSchema1
	}
	if served[baseType(contentType)] && printable(contentType) {
		return contentType, nil
	}
	if served[p.MediaType] {
		return p.MediaType, nil
	}
	switch {
	case p.Manifests != nil:
		// An index without mediaType is still an index (seed 001), and OCI
		// is the only index format that may omit it.
		return string(types.OCIImageIndex), nil
	case p.Config != nil && p.Layers != nil:
		return string(types.OCIManifestSchema1), nil
	}
	return "", fmt.Errorf("%w: neither an index (manifests) nor an image (config and layers)", ErrInvalid)
}

// Servable reports whether a stored media type may be served as it is
// (a cache written by an older release may hold others).
func Servable(mediaType string) bool { return served[baseType(mediaType)] && printable(mediaType) }

// IsIndex reports whether a media type names a list of manifests.
func IsIndex(mediaType string) bool {
	switch types.MediaType(baseType(mediaType)) {
	case types.OCIImageIndex, types.DockerManifestList:
		return true
	}
	return false
}

func baseType(contentType string) string {
	if contentType == "" {
		return ""
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return strings.ToLower(strings.TrimSpace(contentType))
	}
	return mt
}

// printable: no control characters (a header or a stored record must not
// be split by one).
func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func isSchema1(mt string) bool {
	return mt == string(types.DockerManifestSchema1) || mt == string(types.DockerManifestSchema1Signed) ||
		mt == "application/vnd.docker.distribution.manifest.v1+prettyjws"
}
