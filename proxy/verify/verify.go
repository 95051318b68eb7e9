package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/storage"
)

// Source is where signatures are read from: the cache, so that they are
// fetched once and served like anything else it holds. Each method says
// "nothing there" with an error matching ErrNotFound.
type Source interface {
	Manifest(ctx context.Context, repo string, ref manifest.Ref) ([]byte, error)
	// Blob is a whole blob, refused past max bytes.
	Blob(ctx context.Context, repo string, d digest.Digest, max int64) ([]byte, error)
	// Referrers is the OCI index of what refers to d.
	Referrers(ctx context.Context, repo string, d digest.Digest) ([]byte, error)
}

// ErrNotFound is what a Source says of what the upstream does not have.
var ErrNotFound = errors.New("not found")

// Verdicts is where a manifest that verified is recorded beside it (the
// cache's storage), so that the other replicas, and this one restarted,
// take the verdict instead of verifying again. Only a pass is recorded:
// a refusal stays in memory for refusalTTL, so that an image signed
// after it passes soon.
type Verdicts interface {
	Stat(ctx context.Context, key string) (storage.Info, error)
	Put(ctx context.Context, key string, r io.Reader, size int64) error
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithVerdicts records passes in s and reads them from it.
func WithVerdicts(s Verdicts) Option { return func(v *Verifier) { v.stored = s } }

// Refusal is an enforced refusal: the manifest may not be served.
type Refusal struct {
	Image  string // registry/repository@digest
	Rule   string
	Reason string
}

func (r *Refusal) Error() string {
	return r.Image + ": refused by the verification policy's " + r.Rule + ": " + r.Reason
}

// The results of a verification, as counted.
const (
	verified = "verified"
	refused  = "refused"
	audited  = "audited" // failed, and served (audit mode)
)

// Verifier checks manifests against the policy in force.
type Verifier struct {
	policy atomic.Pointer[Policy]
	file   string
	every  time.Duration
	log    logr.Logger

	flight singleflight.Group
	mu     sync.Mutex
	// verdicts are those reached under a policy: a manifest whose
	// signature verified, or a child a verified index lists, is kept; a
	// refusal for refusalTTL only, so that an image signed after it
	// passes soon, and a client retrying a refused pull (a kubelet's
	// back-off) does not fetch the signatures each time.
	verdicts map[verdictKey]verdict

	total   *prometheus.CounterVec
	seconds prometheus.Histogram
	failed  failures // the last failures, for the summary (report.go)
	stored  Verdicts // nil: verdicts are this process's only
}

type verdictKey struct {
	d      digest.Digest
	policy string
	rule   int
}

type verdict struct {
	reason string    // "" verified
	until  time.Time // a refusal's expiry
}

// refusalTTL is how long a refusal is kept.
const refusalTTL = time.Minute

// maxVerdicts bounds the verdicts kept; past it they are all dropped,
// and verified again on their next pull.
const maxVerdicts = 100_000

// New checks against p; file, when set, is re-read by Follow and its
// new policy applied. Its metrics are registered on reg.
func New(p *Policy, file string, reg prometheus.Registerer, log logr.Logger, opts ...Option) *Verifier {
	v := &Verifier{file: file, every: 5 * time.Second, log: log, verdicts: map[verdictKey]verdict{},
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depproxy_proxy_verify_total",
			Help: "Signature verifications against --verify-policy (one per manifest digest and policy; a verdict reused, kept in memory or stored by any replica, is not counted again), by result: verified, refused (enforce mode), audited (failed, and served: audit mode).",
		}, []string{"result"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "depproxy_proxy_verify_seconds",
			Help:    "How long verifying a manifest's signatures took, their fetching through the cache included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
	}
	for _, o := range opts {
		o(v)
	}
	reg.MustRegister(v.total, v.seconds)
	v.policy.Store(p)
	return v
}

// Check says whether the manifest d (body, of mediaType) may be served
// as repo's, of a registry known by names: nil, or a *Refusal in enforce
// mode. Signatures are read from src.
func (v *Verifier) Check(ctx context.Context, src Source, names []string, repo string, d digest.Digest, mediaType string, body []byte) error {
	p := v.policy.Load()
	r := p.match(names, repo)
	if r == nil {
		return nil
	}
	image := repo + "@" + d.String()
	if len(names) > 0 {
		image = names[0] + "/" + image
	}
	k := verdictKey{d, p.hash, r.n}
	reason, known := v.known(k)
	if !known {
		if isSignature(body) {
			return nil
		}
		res, _, _ := v.flight.Do(fmt.Sprint(k), func() (any, error) {
			if reason, known := v.known(k); known {
				return reason, nil
			}
			// Shared by every request waiting on it: one client hanging
			// up must not fail the others.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if v.recorded(ctx, k) {
				// Another replica, or this one before a restart,
				// verified it under this very policy.
				v.decided(k, "", mediaType, body, nil)
				return "", nil
			}
			began := time.Now()
			reason := r.verify(ctx, src, names, repo, ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(body))})
			var signed []digest.Digest // nil: the index itself is signed, and covers all it lists
			if reason != "" && !strings.HasPrefix(reason, reasonUnreadable) && manifest.IsIndex(mediaType) {
				if signed = signedChildren(ctx, src, r, names, repo, body); len(signed) > 0 {
					reason = ""
				}
			}
			v.seconds.Observe(time.Since(began).Seconds())
			children := v.decided(k, reason, mediaType, body, signed)
			if reason == "" {
				v.record(ctx, k, r, children)
			}
			if reason != "" {
				v.failed.add(image, r.String(), reason, p.Mode == Audit)
			}
			switch {
			case reason == "":
				v.total.WithLabelValues(verified).Inc()
			case p.Mode == Audit:
				v.total.WithLabelValues(audited).Inc()
				v.log.Info("signature verification failed; served (audit mode)", "image", image, "rule", r.String(), "reason", reason)
			default:
				v.total.WithLabelValues(refused).Inc()
				v.log.Info("signature verification failed; refused", "image", image, "rule", r.String(), "reason", reason)
			}
			return reason, nil
		})
		reason = res.(string)
	}
	if reason == "" || p.Mode == Audit {
		return nil
	}
	return &Refusal{Image: image, Rule: r.String(), Reason: reason}
}

// known is the verdict kept for k, if one is.
func (v *Verifier) known(k verdictKey) (reason string, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	vd, ok := v.verdicts[k]
	if ok && vd.reason != "" && time.Now().After(vd.until) {
		delete(v.verdicts, k)
		return "", false
	}
	return vd.reason, ok
}

// recorded says whether a pass on k is in the storage.
func (v *Verifier) recorded(ctx context.Context, k verdictKey) bool {
	if v.stored == nil {
		return false
	}
	_, err := v.stored.Stat(ctx, layout.Verified(k.d, k.policy, k.rule))
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		// Verified again, as with no record: a storage that fails to
		// answer must not turn into a pass.
		v.log.Error(err, "cannot read a stored verdict; verifying", "digest", k.d)
	}
	return err == nil
}

// verdictRecord is what a stored pass holds: for whoever reads the
// storage; its presence is the verdict.
type verdictRecord struct {
	Verified time.Time     `json:"verified"`
	Rule     string        `json:"rule"`
	Index    digest.Digest `json:"index,omitempty"` // verified as a child of this index
}

// record stores a pass on k, and on the children of a verified index,
// before the manifest is served: a client pulling the index through one
// replica may ask another for a child next. A record that fails to be
// written costs a verification elsewhere, not the pull.
func (v *Verifier) record(ctx context.Context, k verdictKey, r *rule, children []digest.Digest) {
	if v.stored == nil {
		return
	}
	now := time.Now().UTC()
	put := func(d digest.Digest, rec verdictRecord) {
		raw, _ := json.Marshal(rec)
		if err := v.stored.Put(ctx, layout.Verified(d, k.policy, k.rule), bytes.NewReader(raw), int64(len(raw))); err != nil {
			v.log.Error(err, "cannot store a verdict; other replicas will verify it again", "digest", d)
		}
	}
	put(k.d, verdictRecord{Verified: now, Rule: r.String()})
	for _, c := range children {
		put(c, verdictRecord{Verified: now, Rule: r.String(), Index: k.d})
	}
}

// decided keeps a verdict, and, for a verified index, the children it
// lists (returned): a child pulled by digest is the index's signed
// content.
func (v *Verifier) decided(k verdictKey, reason, mediaType string, body []byte, signed []digest.Digest) []digest.Digest {
	children := signed
	if reason == "" && signed == nil && manifest.IsIndex(mediaType) {
		children = indexChildren(body)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.verdicts)+1+len(children) > maxVerdicts {
		clear(v.verdicts)
	}
	if strings.HasPrefix(reason, reasonUnreadable) {
		return nil // the upstream's trouble, not the image's: asked again
	}
	if reason != "" {
		v.verdicts[k] = verdict{reason: reason, until: time.Now().Add(refusalTTL)}
		return nil
	}
	v.verdicts[k] = verdict{}
	for _, c := range children {
		v.verdicts[verdictKey{c, k.policy, k.rule}] = verdict{}
	}
	return children
}

// signedChildren are the images an unsigned index lists that are signed
// per r on their own: an index counts as verified when the child asked
// for is signed, so it is served when one of them is, and those (not
// the others) are allowed by digest as its content. Attestations and
// signatures an index lists are not images to run.
func signedChildren(ctx context.Context, src Source, r *rule, names []string, repo string, body []byte) []digest.Digest {
	var index ocispec.Index
	if json.Unmarshal(body, &index) != nil {
		return nil
	}
	var signed []digest.Digest
	for i, m := range index.Manifests {
		if i == maxChildrenChecked {
			break
		}
		if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" || manifest.IsIndex(m.MediaType) {
			continue
		}
		if r.verify(ctx, src, names, repo, m) == "" {
			signed = append(signed, m.Digest)
		}
	}
	return signed
}

// maxChildrenChecked bounds the signature lookups an unsigned index
// costs.
const maxChildrenChecked = 64

// Follow re-reads the policy file, and the key files it names, until ctx
// ends: a key replaced in place (a Secret the kubelet updates) is a
// changed policy too. A policy that does not load leaves the one in
// force as it is.
func (v *Verifier) Follow(ctx context.Context) {
	if v.file == "" {
		return
	}
	tick := time.NewTicker(v.every)
	defer tick.Stop()
	var failed []byte // the file as it was when it last failed to load
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p, err := Load(v.file)
		if err != nil {
			if raw, _ := os.ReadFile(v.file); !bytes.Equal(raw, failed) {
				failed = raw
				v.log.Error(err, "the verify policy changed and does not load; the policy in force stays", "file", v.file)
			}
			continue
		}
		failed = nil
		if p.hash == v.policy.Load().hash {
			continue
		}
		v.policy.Store(p)
		v.log.Info("verify policy applied from the changed file", "mode", p.Mode, "rules", len(p.rules), "hash", p.hash)
	}
}
