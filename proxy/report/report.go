// Package report is what the proxy and the cleanup tell the operator:
// the cache summary the proxy serves and the summary a cleanup run
// leaves, as JSON both sides read with these types.
package report

import "time"

// SummaryPath is where the proxy reports what its cache holds, for the
// operator's status.
const SummaryPath = "/status/summary"

// Summary is what a cache holds: counts and size of everything, and the
// most recently cached tags, an index with its platform images.
type Summary struct {
	Images     []SummaryImage `json:"images"`
	ImageCount int64          `json:"imageCount"`
	Bytes      int64          `json:"bytes"`
	// Hits and Misses count manifest and blob requests since start.
	Hits      int64     `json:"hits"`
	Misses    int64     `json:"misses"`
	ScannedAt time.Time `json:"scannedAt"`
	// Throttled are the upstreams whose rate limit is nearly spent (or
	// that answered 429): cached tags are served without asking them.
	Throttled []ThrottledUpstream `json:"throttled,omitempty"`
	// MaxSize is the storage budget, if any; LastEviction what the last
	// eviction over it did.
	MaxSize      int64           `json:"maxSize,omitempty"`
	LastEviction *CleanupSummary `json:"lastEviction,omitempty"`
	// CredentialErrors are the upstream hosts whose credential provider
	// plugin failed the last time it was asked, and why.
	CredentialErrors map[string]string `json:"credentialErrors,omitempty"`
	// Denied counts requests the access rules refused since start.
	Denied int64 `json:"denied,omitempty"`
	// Kept are the images of the pins and warm files, and how warming
	// them went.
	Kept []KeptImage `json:"kept,omitempty"`
	// Sharing is what the nodes that share through this cache (a
	// NodeMirror's spec.share) last told this replica.
	Sharing *Sharing `json:"sharing,omitempty"`
	// Verification is what --verify-policy decided since start; nil
	// without a policy.
	Verification *VerifySummary `json:"verification,omitempty"`
}

// VerifySummary counts signature verifications by result, one per
// manifest digest and policy, and holds the last failures.
type VerifySummary struct {
	Verified int64 `json:"verified"`
	Refused  int64 `json:"refused"`
	Audited  int64 `json:"audited"`
	// LastRefusals are the last failures (refused, or served in audit
	// mode), the most recent first, at most MaxRefusals.
	LastRefusals []VerifyRefusal `json:"lastRefusals,omitempty"`
}

// MaxRefusals bounds VerifySummary.LastRefusals.
const MaxRefusals = 10

// VerifyRefusal is one image that failed verification.
type VerifyRefusal struct {
	Image  string `json:"image"` // registry/repository@digest
	Rule   string `json:"rule"`
	Reason string `json:"reason"`
	// Audited: served all the same (audit mode).
	Audited bool      `json:"audited,omitempty"`
	At      time.Time `json:"at"`
}

// Sharing adds up the last tallies of the nodes heard from in a day:
// their stores' bytes, and the blob bytes they fetched from peers and
// from the cache since their agents started.
type Sharing struct {
	Nodes      int   `json:"nodes"`
	StoreBytes int64 `json:"storeBytes"`
	PeerBytes  int64 `json:"peerBytes"`
	CacheBytes int64 `json:"cacheBytes"`
}

// KeptImage is an image cached before any client pulled it, and, when
// pinned, kept whatever its last pull.
type KeptImage struct {
	Ref    string `json:"ref"`
	Pinned bool   `json:"pinned"`
	// Digest is the manifest it names; Children the children of an
	// index cached for the nodes' platforms.
	Digest   string    `json:"digest,omitempty"`
	Children []string  `json:"children,omitempty"`
	Warmed   bool      `json:"warmed"`
	WarmedAt time.Time `json:"warmedAt,omitzero"`
	// Error is why the last warm failed; it is retried with backoff.
	Error string `json:"error,omitempty"`
	// Denied is why the access rules, or the verify policy in enforce
	// mode ("verify policy: rule N (…): reason"), refuse it: neither
	// fetched nor pinned.
	Denied string `json:"denied,omitempty"`
}

// ThrottledUpstream is an upstream the proxy spares until a time.
type ThrottledUpstream struct {
	Registry string    `json:"registry"`
	Until    time.Time `json:"until"`
	// Limit and Remaining are its rate-limit headers, when it sent them.
	Limit     int `json:"limit,omitempty"`
	Remaining int `json:"remaining,omitempty"`
}

// SummaryImage is one cached tag.
type SummaryImage struct {
	// Registry is the upstream registry the tag belongs to (docker.io).
	Registry   string            `json:"registry,omitempty"`
	Repository string            `json:"repository"`
	Tag        string            `json:"tag"`
	Digest     string            `json:"digest"`
	MediaType  string            `json:"mediaType"`
	Platforms  []SummaryPlatform `json:"platforms,omitempty"`
	// CachedAt is when the tag was last stored.
	CachedAt time.Time `json:"cachedAt"`
}

// SummaryPlatform is a child of a cached index.
type SummaryPlatform struct {
	Platform string `json:"platform"`
	Digest   string `json:"digest"`
}

// CleanupSummary is what one `depproxy cleanup` run did: the last line of
// its output, its termination message on Kubernetes, and the object it
// leaves in storage for the proxy's metrics.
type CleanupSummary struct {
	DeletedTags      int64   `json:"deletedTags"`
	DeletedManifests int64   `json:"deletedManifests"`
	DeletedBlobs     int64   `json:"deletedBlobs"`
	FreedBytes       int64   `json:"freedBytes"`
	Kept             int64   `json:"kept"`
	DryRun           bool    `json:"dryRun"`
	DurationSeconds  float64 `json:"durationSeconds"`
	FinishedAt       string  `json:"finishedAt"`
	// With a budget (--max-size): the budget, what is stored after the
	// run, the images evicted (the last few named), and whether what is
	// left is still over the budget, pinned.
	MaxSize       int64    `json:"maxSize,omitempty"`
	StoredBytes   int64    `json:"storedBytes,omitempty"`
	EvictedImages int64    `json:"evictedImages,omitempty"`
	Evicted       []string `json:"evicted,omitempty"`
	OverBudget    bool     `json:"overBudget,omitempty"`
	// PinnedManifests is how many manifests pins kept.
	PinnedManifests int `json:"pinnedManifests,omitempty"`
}
