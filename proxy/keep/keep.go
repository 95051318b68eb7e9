// Package keep keeps what a cache must not lose: the images of a pins
// file, warmed before any client pulls them and stored as a set the
// cleanup and every replica see, the images of a warm file, warmed, and
// the storage budget, enforced by evicting what was pulled least
// recently.
package keep

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/cleanup"
	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/pins"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/storage"
	"github.com/depproxy/depproxy/proxy/summary"
	"github.com/depproxy/depproxy/proxy/verify"
)

// Keeper keeps what the pins file names: it re-reads the file when it
// changes, warms every image in it (retrying what failed, with backoff),
// and stores the set they resolved to for the cleanup and the other
// replicas. With a budget, it evicts what is over it. One replica does
// the warming and the evicting (the owner of a fixed key, so that a lost
// one is replaced); every replica reads the file, for the tags it must
// serve when the upstream no longer has them.
type Keeper struct {
	pinnedPath, warmPath string
	// resolve finds the cache of an image's registry (its own name or
	// one it stands in for), the registry's name there and the
	// repository as its upstream names it (library/ on Docker Hub).
	resolve   Resolver
	store     storage.Storage
	platforms []v1.Platform
	maxSize   int64
	summary   *summary.Scanner
	leader    func() bool
	denied    func(pins.Ref) string
	log       logr.Logger
	timing    Timing

	mu     sync.Mutex
	raw    map[string][]byte // by path
	refs   []keptRef
	tags   map[string]bool // registry/repo:tag, pinned
	status map[keptRef]*report.KeptImage
	retry  map[keptRef]time.Time // failed warms: not before then
	// refused are the images the verify policy refused at their last
	// warm, and why: reported as the access rules' refusals are, and
	// checked again with a failure's backoff (signed since?).
	refused map[keptRef]string
	backoff map[keptRef]time.Duration
	evicted *report.CleanupSummary // the last budget run
	used    int64                  // what the summary said was stored, at the last look
}

// keptRef is an image of one of the files: pinned, or only warmed.
type keptRef struct {
	pins.Ref
	pinned bool
}

// Warmer caches an image before any client pulls it: the manifest ref
// names, for an index its children for platforms (all for none), and
// their blobs. A registry's cache is one.
type Warmer interface {
	Warm(ctx context.Context, repo string, ref manifest.Ref, platforms []v1.Platform) (cache.Warmed, error)
}

// Resolver finds the cache of an image's registry (its own name or one
// it stands in for), the registry's name there and the repository as its
// upstream names it (library/ on Docker Hub).
type Resolver func(registry, repo string) (w Warmer, name, upstreamRepo string, ok bool)

// Timing is how often the files and the budget are looked at, and what
// eviction spares: what was written within Grace (an image being cached
// right now: its manifest before its blobs).
type Timing struct {
	Files, Budget, Grace time.Duration
}

// DefaultTiming: the files every 5 s, the budget every minute, a minute's
// grace.
var DefaultTiming = Timing{Files: 5 * time.Second, Budget: time.Minute, Grace: time.Minute}

// Options are a Keeper's files, budget and parts.
type Options struct {
	Pinned, Warm string // the files; "" for none
	MaxSize      int64  // the budget; 0 for none
	Store        storage.Storage
	// Platforms are what an index's children are warmed for; none: all.
	Platforms []v1.Platform
	Summary   *summary.Scanner
	// Leader: this replica warms and evicts.
	Leader func() bool
	// Denied says why the access rules in force refuse an image ("" when
	// they allow it): a refused one is neither fetched nor pinned. The
	// rules are asked at every warm, so a rule added later unpins.
	Denied func(pins.Ref) string
	Log    logr.Logger
	Timing Timing
}

// New returns a Keeper; SetResolver before Reload and Run.
func New(o Options) *Keeper {
	if o.Timing == (Timing{}) {
		o.Timing = DefaultTiming
	}
	if o.Denied == nil {
		o.Denied = func(pins.Ref) string { return "" }
	}
	return &Keeper{pinnedPath: o.Pinned, warmPath: o.Warm, maxSize: o.MaxSize, store: o.Store, platforms: o.Platforms,
		summary: o.Summary, leader: o.Leader, denied: o.Denied, log: o.Log, timing: o.Timing,
		resolve: func(string, string) (Warmer, string, string, bool) { return nil, "", "", false },
		raw:     map[string][]byte{}, tags: map[string]bool{}, status: map[keptRef]*report.KeptImage{},
		retry: map[keptRef]time.Time{}, refused: map[keptRef]string{}, backoff: map[keptRef]time.Duration{}}
}

// SetResolver sets how images find their caches: the caches are made
// after the Keeper, which they ask what is pinned.
func (k *Keeper) SetResolver(r Resolver) { k.resolve = r }

// Pinned reports whether a tag of a registry is pinned.
func (k *Keeper) Pinned(registry string) func(repo, tag string) bool {
	return func(repo, tag string) bool {
		k.mu.Lock()
		pinned := k.tags[registry+"/"+repo+":"+tag]
		k.mu.Unlock()
		return pinned && k.denied(pins.Ref{Registry: registry, Repo: repo, Tag: tag}) == ""
	}
}

// read reads one file, when it changed since: its references, whether
// it changed, and what is wrong with it. A file that cannot be read
// keeps its last pins; lines that are not references are left out.
func (k *Keeper) read(path string) ([]pins.Ref, bool, error) {
	if path == "" {
		return nil, false, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, false, err
	}
	k.mu.Lock()
	same := bytes.Equal(raw, k.raw[path])
	k.mu.Unlock()
	if same {
		return nil, false, nil
	}
	refs, err := pins.Parse(raw)
	if err != nil {
		err = fmt.Errorf("%s: %w", path, err)
	}
	for i, r := range refs {
		// As the cache names it: a tag pinned as docker.io/nginx is the
		// tag the cache stores as docker.io library/nginx.
		if _, name, repo, ok := k.resolve(r.Registry, r.Repo); ok {
			refs[i].Registry, refs[i].Repo = name, repo
		}
	}
	k.mu.Lock()
	k.raw[path] = raw
	k.mu.Unlock()
	return refs, true, err
}

// Load reads the files at start. What is wrong with them is an error
// then, so that a typo stops the start rather than lose a pin; each
// file is read once, and Reload reads them again only when they change.
func (k *Keeper) Load() error {
	_, err := k.reload()
	return err
}

// Reload reads the files; true when one changed. What is wrong with them
// is said, and left out: a file that cannot be read keeps its last pins,
// lines that are not references are skipped.
func (k *Keeper) Reload() bool {
	changed, err := k.reload()
	if err != nil {
		k.log.Error(err, "the pinned or warm file: lines that are not image references are left out, a file that cannot be read keeps what it said last")
	}
	return changed
}

func (k *Keeper) reload() (bool, error) {
	pinned, pinChanged, pinErr := k.read(k.pinnedPath)
	warm, warmChanged, warmErr := k.read(k.warmPath)
	var errs []error
	if pinErr != nil {
		errs = append(errs, fmt.Errorf("pinned: %w", pinErr))
	}
	if warmErr != nil {
		errs = append(errs, fmt.Errorf("warm: %w", warmErr))
	}
	err := errors.Join(errs...)
	if !pinChanged && !warmChanged {
		return false, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if !pinChanged || !warmChanged {
		// The one that did not change says what it said.
		for _, r := range k.refs {
			switch {
			case r.pinned && !pinChanged:
				pinned = append(pinned, r.Ref)
			case !r.pinned && !warmChanged:
				warm = append(warm, r.Ref)
			}
		}
	}
	var refs []keptRef
	isPinned := map[pins.Ref]bool{}
	for _, r := range pinned {
		isPinned[r] = true
		refs = append(refs, keptRef{r, true})
	}
	for _, r := range warm {
		if !isPinned[r] {
			refs = append(refs, keptRef{r, false})
		}
	}
	k.refs = refs
	k.tags = map[string]bool{}
	status := map[keptRef]*report.KeptImage{}
	for _, r := range refs {
		if r.pinned && r.Tag != "" {
			k.tags[r.Registry+"/"+r.Repo+":"+r.Tag] = true
		}
		if st := k.status[r]; st != nil {
			status[r] = st
		} else {
			status[r] = &report.KeptImage{Ref: r.String(), Pinned: r.pinned}
		}
		delete(k.retry, r) // a changed file retries everything now
	}
	k.status = status
	for r := range k.refused {
		if status[r] == nil {
			delete(k.refused, r) // no longer in the files
		}
	}
	k.log.Info("pinned and warmed images read", "pinned", len(pinned), "warmed", len(refs)-len(pinned))
	return true, err
}

// Run keeps the pins and the budget until ctx ends.
func (k *Keeper) Run(ctx context.Context) {
	if k.pinnedPath == "" && k.warmPath == "" && k.maxSize <= 0 {
		return
	}
	tick := time.NewTicker(k.timing.Files)
	defer tick.Stop()
	warmed := false
	var lastBudget time.Time
	for {
		changed := k.Reload()
		if k.leader() {
			if changed || !warmed || k.due() || k.stale() || k.rulesMoved() {
				k.warm(ctx)
				warmed = true
			}
		}
		if k.maxSize > 0 && time.Since(lastBudget) >= k.timing.Budget {
			if k.leader() {
				k.budget(ctx)
			} else {
				k.lastEviction(ctx)
			}
			lastBudget = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// stale: an image was warmed longer ago than rewarmEvery.
func (k *Keeper) stale() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, st := range k.status {
		if st.Warmed && time.Since(st.WarmedAt) >= rewarmEvery {
			return true
		}
	}
	return false
}

// rulesMoved: the access rules now refuse an image they allowed at the
// last warm, or allow one they refused (a --config file changed).
func (k *Keeper) rulesMoved() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, r := range k.refs {
		if st := k.status[r]; st != nil && (k.denied(r.Ref) == "") != (st.Denied == "" || k.refused[r] != "") {
			return true
		}
	}
	return false
}

// due: a failed warm's retry is due.
func (k *Keeper) due() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, at := range k.retry {
		if !time.Now().Before(at) {
			return true
		}
	}
	return false
}

// warm caches every image of the files not warmed yet, failed and due
// again, or warmed over rewarmEvery ago, and stores the pinned set.
func (k *Keeper) warm(ctx context.Context) {
	k.mu.Lock()
	refs := append([]keptRef(nil), k.refs...)
	k.mu.Unlock()
	var set pinnedSet
	for _, r := range refs {
		k.mu.Lock()
		at, failed := k.retry[r]
		st := k.status[r]
		fresh := st != nil && st.Warmed && time.Since(st.WarmedAt) < rewarmEvery
		k.mu.Unlock()
		if st == nil {
			continue
		}
		if why := k.denied(r.Ref); why != "" {
			// Neither fetched nor pinned: left out of the set, so the
			// cleanup and the budget may delete what was kept before.
			k.mu.Lock()
			if st.Denied == "" {
				k.log.Info("the access rules refuse an image to keep; not warmed, not pinned", "image", r.String(), "reason", why)
			}
			st.Denied, st.Warmed, st.Digest, st.Children, st.Error = why, false, "", nil, ""
			delete(k.refused, r)
			k.mu.Unlock()
			continue
		}
		k.mu.Lock()
		wasRefused := k.refused[r] != ""
		if !wasRefused {
			st.Denied = ""
		}
		k.mu.Unlock()
		if (failed && time.Now().Before(at)) || fresh {
			if !wasRefused {
				set.add(r, st)
			}
			continue
		}
		w, err := k.warmOne(ctx, r.Ref)
		if vr := (*verify.Refusal)(nil); errors.As(err, &vr) {
			// Refused by the verify policy (enforce mode): neither
			// warmed nor pinned, as the access rules' refusals, and
			// asked again later, as failures are.
			why := "verify policy: " + vr.Rule + ": " + vr.Reason
			k.mu.Lock()
			if k.refused[r] != why {
				k.log.Info("the verify policy refuses an image to keep; not warmed, not pinned", "image", r.String(), "reason", why)
			}
			k.refused[r] = why
			st.Denied, st.Warmed, st.Digest, st.Children, st.Error = why, false, "", nil, ""
			next := min(max(2*k.backoff[r], 10*time.Second), 5*time.Minute)
			k.backoff[r], k.retry[r] = next, time.Now().Add(next)
			k.mu.Unlock()
			continue
		}
		k.mu.Lock()
		delete(k.refused, r)
		st.Denied = ""
		st.Digest, st.Children = w.Digest.String(), nil
		for _, c := range w.Children {
			st.Children = append(st.Children, c.String())
		}
		if err != nil {
			st.Warmed, st.Error = false, err.Error()
			next := min(max(2*k.backoff[r], 10*time.Second), 5*time.Minute)
			k.backoff[r], k.retry[r] = next, time.Now().Add(next)
			k.log.Info("warming an image failed; retrying", "image", r.String(), "in", next.String(), "error", err.Error())
		} else {
			st.Warmed, st.Error, st.WarmedAt = true, "", time.Now().UTC()
			delete(k.retry, r)
			delete(k.backoff, r)
		}
		k.mu.Unlock()
		set.add(r, st)
	}
	if err := pins.Store(ctx, k.store, set.Set); err != nil {
		k.log.Error(err, "cannot store the pinned set")
	}
}

// rewarmEvery: a warmed image is warmed again this often, for a pinned
// tag that moved upstream; otherwise only what is new in the files, or
// failed, is warmed.
const rewarmEvery = time.Hour

// warmOne warms one pinned image through its registry's cache.
func (k *Keeper) warmOne(ctx context.Context, r pins.Ref) (cache.Warmed, error) {
	w, _, repo, ok := k.resolve(r.Registry, r.Repo)
	if !ok {
		return cache.Warmed{}, errNoUpstream(r.Registry)
	}
	ref := manifest.TagRef(r.Tag)
	if r.Digest != "" {
		ref = manifest.DigestRef(r.Digest)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	return w.Warm(ctx, repo, ref, k.platforms)
}

type errNoUpstream string

func (e errNoUpstream) Error() string {
	return "no upstream for the registry " + string(e) + ": add one with --upstream " + string(e) + "=URL"
}

// pinnedSet is the pinned set being built.
type pinnedSet struct{ pins.Set }

func (s *pinnedSet) add(r keptRef, st *report.KeptImage) {
	if !r.pinned {
		return
	}
	if r.Tag != "" {
		s.Tags = append(s.Tags, layout.Tag(r.Registry, r.Repo, r.Tag))
	}
	for _, d := range append([]string{st.Digest}, st.Children...) {
		if pd, err := digest.Parse(d); err == nil {
			s.Manifests = append(s.Manifests, pd)
		}
	}
}

// budget evicts what is over the budget, when the summary says the cache
// is over it.
func (k *Keeper) budget(ctx context.Context) {
	sum, err := k.summary.Summary(ctx, 0)
	if err != nil {
		return
	}
	k.mu.Lock()
	k.used = sum.Bytes
	k.mu.Unlock()
	if sum.Bytes <= k.maxSize {
		return
	}
	k.mu.Lock()
	var refs []pins.Ref
	for _, r := range k.refs {
		if r.pinned {
			refs = append(refs, r.Ref)
		}
	}
	k.mu.Unlock()
	run, err := cleanup.Run(ctx, k.store, cleanup.Options{MaxSize: k.maxSize, Pinned: refs, Grace: k.timing.Grace, SummaryKey: layout.BudgetSummary})
	if err != nil {
		k.log.Error(err, "evicting over the budget failed")
		return
	}
	k.log.Info("evicted over the budget", "maxSize", k.maxSize, "stored", run.StoredBytes, "images", run.EvictedImages, "freed", run.FreedBytes,
		"overBudget", run.OverBudget)
	k.mu.Lock()
	k.evicted, k.used = run, run.StoredBytes
	k.mu.Unlock()
}

// Collector reports the budget and what is stored against it, for the
// alert above 95%.
func (k *Keeper) Collector() prometheus.Collector {
	return &budgetCollector{k: k,
		used:   prometheus.NewDesc("depproxy_storage_used_bytes", "With --max-size: manifests and blobs stored, as last looked at (every minute).", nil, nil),
		budget: prometheus.NewDesc("depproxy_storage_budget_bytes", "The storage budget, --max-size.", nil, nil),
	}
}

type budgetCollector struct {
	k            *Keeper
	used, budget *prometheus.Desc
}

func (c *budgetCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.used; ch <- c.budget }

func (c *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	if c.k.maxSize <= 0 {
		return
	}
	c.k.mu.Lock()
	used := c.k.used
	c.k.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(used))
	ch <- prometheus.MustNewConstMetric(c.budget, prometheus.GaugeValue, float64(c.k.maxSize))
}

// lastEviction reads what the replica that evicts last did, for this
// replica's summary.
func (k *Keeper) lastEviction(ctx context.Context) {
	raw, err := storage.ReadAll(ctx, k.store, layout.BudgetSummary, 1<<20)
	if err != nil {
		return
	}
	var run report.CleanupSummary
	if json.Unmarshal(raw, &run) == nil {
		k.mu.Lock()
		k.evicted = &run
		k.mu.Unlock()
	}
}

// Report adds the pins and the budget to a summary.
func (k *Keeper) Report(sum *report.Summary) {
	k.mu.Lock()
	defer k.mu.Unlock()
	sum.MaxSize = k.maxSize
	for _, r := range k.refs {
		if st := k.status[r]; st != nil {
			sum.Kept = append(sum.Kept, *st)
		}
	}
	if k.evicted != nil {
		e := *k.evicted
		sum.LastEviction = &e
	}
}
