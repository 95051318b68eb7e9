package registry

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
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
	// ref is a tag or a digest for manifests, a digest for blobs and
	// referrers.
	ref string
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
	rt := route{name: name, ref: ref}
	switch {
	case k == "manifests":
		rt.kind = kindManifest
	case k == "blobs":
		rt.kind = kindBlob
	case k == "referrers":
		rt.kind = kindReferrers
	case k == "tags" && ref == "list":
		rt.kind, rt.ref = kindTags, ""
	default:
		return route{}, errUnknownRoute
	}
	if err := checkName(rt.name); err != nil {
		return route{}, err
	}
	if rt.kind == kindTags {
		return rt, nil
	}
	if err := checkRef(rt); err != nil {
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
		return &regError{Status: 400, Code: "NAME_INVALID",
			Message: fmt.Sprintf("repository name is %d characters long, the limit is %d", len(name), reference.NameTotalLengthMax)}
	}
	if !anchoredPath.MatchString(name) {
		return &regError{Status: 400, Code: "NAME_INVALID", Message: fmt.Sprintf("invalid repository name %q", name)}
	}
	return nil
}

func checkRef(rt route) *regError {
	if rt.kind == kindManifest && anchoredTag.MatchString(rt.ref) {
		return nil
	}
	if _, err := digest.Parse(rt.ref); err != nil {
		if rt.kind == kindManifest {
			return &regError{Status: 400, Code: "MANIFEST_INVALID", Message: fmt.Sprintf("%q is neither a tag nor a digest", rt.ref)}
		}
		return &regError{Status: 400, Code: "DIGEST_INVALID", Message: fmt.Sprintf("invalid digest %q: %v", rt.ref, err)}
	}
	return nil
}
