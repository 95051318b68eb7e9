package manifest

import "github.com/opencontainers/go-digest"

// Ref is what a manifest request names: a tag, or a digest. The /v2
// router parses it once, against the distribution grammar; everything
// after it (the cache, the upstream, the replicas) takes it as it is.
type Ref struct {
	tag    string
	digest digest.Digest
}

// TagRef names a manifest by tag.
func TagRef(tag string) Ref { return Ref{tag: tag} }

// DigestRef names a manifest by digest.
func DigestRef(d digest.Digest) Ref { return Ref{digest: d} }

// Digest is the digest named, if the ref is one.
func (r Ref) Digest() (digest.Digest, bool) { return r.digest, r.digest != "" }

// Tag is the tag named, "" for a digest.
func (r Ref) Tag() string { return r.tag }

// String is the ref as a /v2 path ends with it.
func (r Ref) String() string {
	if r.digest != "" {
		return r.digest.String()
	}
	return r.tag
}
