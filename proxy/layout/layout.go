// Package layout is where a cache keeps things in its storage: one place
// that the cache, which writes, and the cleanup, which deletes, share.
//
//	blobs/<alg>/<hex>                          blob bytes, shared by all repositories and registries
//	manifests/<alg>/<hex>                      "<media type>\n" + manifest bytes, likewise
//	registries/<registry>/<repo>/_tags/<tag>   the digest a tag of that registry points at
//	registries/<registry>/<repo>/_referrers/<alg>-<hex>  the upstream's referrers API answer for a digest
//	_lastread/<any of the above>               when it was last pulled (unix seconds)
//	_origin/<alg>/<hex>                        the registry whose manifest named a blob (with several upstreams)
//	_links/<alg>/<hex>/<registry>/<repo>/_link a repository a manifest or blob was served for (with access rules)
//	_verified/<alg>/<hex>/<policy hash>/<rule> a manifest's signatures verified under a --verify-policy's rule
//	_cleanup/last.json                         the last cleanup run's summary
//	_cleanup/budget.json                       the last eviction over the budget (serve --max-size)
//	_pins/set.json                             what the pinned images resolved to (serve --pinned)
//	_journal/<unix nanoseconds>-<random>       what a replica or a cleanup changed, for the summaries
//
// Tags belong to their registry: library/x on docker.io and on another
// registry are two images. Repository path components never start with
// "_", so "_tags" and the "_" prefixes cannot collide with a repository
// name; a registry name has no "/".
package layout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
)

const (
	// BlobsPrefix holds blobs.
	BlobsPrefix = "blobs/"
	// ManifestsPrefix holds manifests.
	ManifestsPrefix = "manifests/"
	// RegistriesPrefix holds tags, by registry.
	RegistriesPrefix = "registries/"
	// OriginsPrefix holds, for a blob, the registry whose manifest
	// named it: where a blob asked for without a registry goes.
	OriginsPrefix = "_origin/"
	// LinksPrefix holds, for a manifest or blob, the repositories it was
	// served for: with access rules in force, content is served only
	// under a repository it is linked to.
	LinksPrefix = "_links/"
	// VerifiedPrefix holds, for a manifest, the verify policies (by
	// their hash) and rules it passed: every replica, and the next
	// start, reads the verdict instead of verifying again.
	VerifiedPrefix = "_verified/"
	// LastReadPrefix holds last-read markers.
	LastReadPrefix = "_lastread/"
	// CleanupSummary is the last cleanup run's JSON summary.
	CleanupSummary = "_cleanup/last.json"
	// BudgetSummary is the summary of the proxy's last eviction over its
	// budget (--max-size).
	BudgetSummary = "_cleanup/budget.json"
	// JournalPrefix holds the summaries' journal.
	JournalPrefix = "_journal/"

	tagsInfix      = "/_tags/"
	referrersInfix = "/_referrers/"
)

// Blob is the key of a blob.
func Blob(d digest.Digest) string { return BlobsPrefix + d.Algorithm().String() + "/" + d.Encoded() }

// Manifest is the key of a manifest.
func Manifest(d digest.Digest) string {
	return ManifestsPrefix + d.Algorithm().String() + "/" + d.Encoded()
}

// Tag is the key of a tag of a registry.
func Tag(registry, repo, tag string) string {
	return RegistriesPrefix + registry + "/" + repo + tagsInfix + tag
}

// Referrers is the key of the referrers API answer a registry gave for
// d: what refers to it, as an OCI index.
func Referrers(registry, repo string, d digest.Digest) string {
	return RegistriesPrefix + registry + "/" + repo + referrersInfix + d.Algorithm().String() + "-" + d.Encoded()
}

// IsReferrers says whether key is a referrers answer's.
func IsReferrers(key string) bool {
	return strings.HasPrefix(key, RegistriesPrefix) && strings.Contains(key, referrersInfix)
}

// Origin is the key of a blob's origin: the registry whose manifest,
// fetched through the cache, named it.
func Origin(d digest.Digest) string {
	return OriginsPrefix + d.Algorithm().String() + "/" + d.Encoded()
}

// Link is the key that records d as content of a registry's repository.
// It ends in "/_link" so that a repository nested in another (a and a/b)
// never makes a key a folder of another key.
func Link(d digest.Digest, registry, repo string) string {
	return LinksOf(d) + registry + "/" + repo + "/_link"
}

// LinksOf is the prefix of every link of d: what goes with d.
func LinksOf(d digest.Digest) string {
	return LinksPrefix + d.Algorithm().String() + "/" + d.Encoded() + "/"
}

// Verified is the key of d's verdict under a policy's rule. The digest
// comes first so that its verdicts go with it (VerifiedOf) when it is
// deleted; a changed policy's old verdicts go then too.
func Verified(d digest.Digest, policy string, rule int) string {
	return VerifiedOf(d) + policy + "/" + strconv.Itoa(rule)
}

// VerifiedOf is the prefix of every verdict on d.
func VerifiedOf(d digest.Digest) string {
	return VerifiedPrefix + d.Algorithm().String() + "/" + d.Encoded() + "/"
}

// LastRead is the key of an object's last-read marker.
func LastRead(key string) string { return LastReadPrefix + key }

// ParseTag is the inverse of Tag.
func ParseTag(key string) (registry, repo, tag string, ok bool) {
	rest, ok := strings.CutPrefix(key, RegistriesPrefix)
	if !ok {
		return "", "", "", false
	}
	if registry, rest, ok = strings.Cut(rest, "/"); !ok || registry == "" {
		return "", "", "", false
	}
	repo, tag, ok = strings.Cut(rest, tagsInfix)
	return registry, repo, tag, ok && repo != "" && tag != "" && !strings.Contains(tag, "/")
}

// ParseDigest returns the digest of a blob or manifest key.
func ParseDigest(key string) (digest.Digest, bool) {
	for _, p := range []string{BlobsPrefix, ManifestsPrefix} {
		if rest, ok := strings.CutPrefix(key, p); ok {
			alg, hex, ok := strings.Cut(rest, "/")
			d := digest.NewDigestFromEncoded(digest.Algorithm(alg), hex)
			return d, ok && d.Validate() == nil
		}
	}
	return "", false
}

// ManifestRecord is what a manifest key holds: the media type to serve it
// with, a newline, and the manifest's bytes unchanged.
func ManifestRecord(mediaType string, body []byte) []byte {
	// The first newline ends the media type: one inside it would move
	// bytes into the manifest and break its digest.
	mediaType = strings.NewReplacer("\n", "", "\r", "").Replace(mediaType)
	return append([]byte(mediaType+"\n"), body...)
}

// ParseManifestRecord is the inverse of ManifestRecord.
func ParseManifestRecord(rec []byte) (body []byte, mediaType string, err error) {
	mt, body, ok := bytes.Cut(rec, []byte("\n"))
	if !ok {
		return nil, "", errors.New("manifest record without a media type line")
	}
	return body, string(mt), nil
}

// LastReadValue is what a last-read marker holds.
func LastReadValue(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

// ParseLastRead is the inverse of LastReadValue.
func ParseLastRead(b []byte) (time.Time, bool) {
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(n, 0), true
}

// ErrDamaged is returned for a stored manifest or tag that does not read
// back as what was written (a truncated or altered object).
var ErrDamaged = errors.New("damaged cache entry")

// ReadManifest returns a stored manifest's bytes and media type, checked
// against its digest.
func ReadManifest(ctx context.Context, s storage.Storage, d digest.Digest) (body []byte, mediaType string, err error) {
	rec, err := storage.ReadAll(ctx, s, Manifest(d), manifest.MaxSize+1024)
	if err != nil {
		return nil, "", err
	}
	body, mediaType, err = ParseManifestRecord(rec)
	if err != nil || d.Algorithm().FromBytes(body) != d {
		return nil, "", fmt.Errorf("%w: manifest %s", ErrDamaged, d)
	}
	return body, mediaType, nil
}

// ReadTag returns the digest a stored tag points at.
func ReadTag(ctx context.Context, s storage.Storage, registry, repo, tag string) (digest.Digest, error) {
	return ReadDigest(ctx, s, Tag(registry, repo, tag))
}

// ReadDigest returns the digest stored under a tag key.
func ReadDigest(ctx context.Context, s storage.Storage, key string) (digest.Digest, error) {
	raw, err := storage.ReadAll(ctx, s, key, 256)
	if err != nil {
		return "", err
	}
	d, err := digest.Parse(string(raw))
	if err != nil {
		return "", fmt.Errorf("%w: tag %s: %w", ErrDamaged, key, err)
	}
	return d, nil
}
