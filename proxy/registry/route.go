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
	name string
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
	for _, r := range []struct {
		sep  string
		kind kind
	}{
		{"/manifests/", kindManifest},
		{"/blobs/", kindBlob},
		{"/referrers/", kindReferrers},
	} {
		i := strings.LastIndex(rest, r.sep)
		if i < 0 {
			continue
		}
		rt := route{kind: r.kind, name: rest[:i], ref: rest[i+len(r.sep):]}
		if err := checkName(rt.name); err != nil {
			return route{}, err
		}
		return rt, checkRef(rt)
	}
	if name, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		return route{kind: kindTags, name: name}, checkName(name)
	}
	return route{}, errUnknownRoute
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
