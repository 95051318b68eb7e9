package registry

import (
	"regexp"

	"github.com/distribution/reference"
)

// The distribution grammar, anchored: a repository path (no domain, since
// the proxy is the domain) and a tag.
var (
	anchoredPath = regexp.MustCompile(`^` + pathComponent + `(?:/` + pathComponent + `)*$`)
	anchoredTag  = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)
)

// pathComponent is reference's path-component (lowercase alphanumerics
// joined by separators), which the package does not export on its own.
const pathComponent = `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
