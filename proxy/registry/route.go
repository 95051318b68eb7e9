package registry

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/manifest"
)

// kind is what a /v2 path asks for.
type kind int

const (
	kindBase kind = iota
	kindManifest
	kindBlob
	kindTags
	kindReferrers
)

// route is a parsed /v2 path.
type route struct {
	kind kind
	// name is the repository as the client named it; repo is the same
	// as the chosen upstream knows it (library/alpine for alpine).
	name, repo string
	// ref is the manifest asked for; digest the blob, or the subject
	// of referrers.
	ref    manifest.Ref
	digest digest.Digest
	// bound: access rules are in force, and a digest is served only
	// under a repository it is linked to.
	bound bool
}

// parseRoute splits a /v2 path into what it asks for and validates every
// part against the distribution grammar, so that nothing unchecked reaches
// storage keys or upstream URLs.
func parseRoute(path string) (route, *regError) {
	if path == "/v2" || path == "/v2/" {
		return route{kind: kindBase}, nil
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return route{}, errUnknownRoute
	}
	// <name>/<kind>/<ref>: neither kind nor ref holds a slash, while the
	// name may hold anything, "manifests" included.
	head, ref, ok1 := cutLast(rest)
	name, k, ok2 := cutLast(head)
	if !ok1 || !ok2 {
		return route{}, errUnknownRoute
	}
	rt := route{name: name}
	switch {
	case k == "manifests":
		rt.kind = kindManifest
	case k == "blobs":
		rt.kind = kindBlob
	case k == "referrers":
		rt.kind = kindReferrers
	case k == "tags" && ref == "list":
		rt.kind = kindTags
	default:
		return route{}, errUnknownRoute
	}
	if err := checkName(rt.name); err != nil {
		return route{}, err
	}
	if rt.kind == kindTags {
		return rt, nil
	}
	if err := rt.parseRef(ref); err != nil {
		return route{}, err
	}
	return rt, nil
}

func cutLast(s string) (before, after string, ok bool) {
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

func checkName(name string) *regError {
	if len(name) > reference.NameTotalLengthMax {
		return &regError{Status: 400, Code: codeNameInvalid,
			Message: fmt.Sprintf("repository name is %d characters long, the limit is %d", len(name), reference.NameTotalLengthMax)}
	}
	if !anchoredPath.MatchString(name) {
		return &regError{Status: 400, Code: codeNameInvalid, Message: fmt.Sprintf("invalid repository name %q", name)}
	}
	return nil
}

// parseRef takes the path's last element: a tag or a digest for a
// manifest, a digest otherwise.
func (rt *route) parseRef(ref string) *regError {
	if rt.kind == kindManifest && anchoredTag.MatchString(ref) {
		rt.ref = manifest.TagRef(ref)
		return nil
	}
	d, err := digest.Parse(ref)
	switch {
	case err != nil && rt.kind == kindManifest:
		return &regError{Status: 400, Code: codeManifestInvalid, Message: fmt.Sprintf("%q is neither a tag nor a digest", ref)}
	case err != nil:
		return &regError{Status: 400, Code: codeDigestInvalid, Message: fmt.Sprintf("invalid digest %q: %v", ref, err)}
	case rt.kind == kindManifest:
		rt.ref = manifest.DigestRef(d)
	default:
		rt.digest = d
	}
	return nil
}
