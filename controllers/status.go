package controllers

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// Every condition the reconcilers report is computed here, one pure
// function per condition, from what the reconciler observed (the
// reconcile's outcome, the Deployment or the DaemonSet, the cache's
// summary) and the generation it observed. The reconcilers apply what
// these return and set no condition themselves.

// conditions are what one look at a resource concluded: the conditions
// to set, and the types to take out.
type conditions struct {
	set    []metav1.Condition
	remove []string
}

func (c *conditions) add(more conditions) {
	c.set, c.remove = append(c.set, more.set...), append(c.remove, more.remove...)
}

// applyTo takes out, then sets. A condition whose status holds keeps its
// transition time, so an unchanged resource's status is not written
// again.
func (c conditions) applyTo(conds *[]metav1.Condition) {
	for _, t := range c.remove {
		meta.RemoveStatusCondition(conds, t)
	}
	for _, s := range c.set {
		meta.SetStatusCondition(conds, s)
	}
}

func condition(gen int64, t string, s metav1.ConditionStatus, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen}
}

// kstatus is kstatus' pair: at most one of Reconciling and Stalled (t;
// "" for neither), and only while True.
func kstatus(gen int64, t, reason, msg string) conditions {
	var c conditions
	for _, other := range []string{depproxyv1.ConditionReconciling, depproxyv1.ConditionStalled} {
		if other != t {
			c.remove = append(c.remove, other)
		}
	}
	if t != "" {
		c.set = []metav1.Condition{condition(gen, t, metav1.ConditionTrue, reason, msg)}
	}
	return c
}

// failedKstatus: a failed reconcile is Stalled when only a change to the
// spec can help, else Reconciling.
func failedKstatus(gen int64, outcome *reconcileError) conditions {
	if outcome.retry == retryNever {
		return kstatus(gen, depproxyv1.ConditionStalled, outcome.Reason, outcome.Message)
	}
	return kstatus(gen, depproxyv1.ConditionReconciling, outcome.Reason, outcome.Message)
}

// proxyConditions are a DependencyProxy's Degraded, Ready, Progressing
// and kstatus' pair: from the reconcile's outcome (nil: every child
// matches the spec) and whether the spec's pods serve, and only they.
// A failed reconcile leaves Progressing as it was.
func proxyConditions(gen int64, outcome *reconcileError, serving bool) conditions {
	if outcome != nil {
		c := conditions{set: []metav1.Condition{
			condition(gen, depproxyv1.ConditionDegraded, metav1.ConditionTrue, outcome.Reason, outcome.Message),
			condition(gen, depproxyv1.ConditionReady, metav1.ConditionFalse, outcome.Reason, outcome.Message),
		}}
		c.add(failedKstatus(gen, outcome))
		return c
	}
	degraded := condition(gen, depproxyv1.ConditionDegraded, metav1.ConditionFalse, depproxyv1.ReasonReconciled, "children match the spec")
	if serving {
		c := conditions{set: []metav1.Condition{degraded,
			condition(gen, depproxyv1.ConditionReady, metav1.ConditionTrue, depproxyv1.ReasonAvailable, "the proxy is serving"),
			condition(gen, depproxyv1.ConditionProgressing, metav1.ConditionFalse, depproxyv1.ReasonAvailable, "rollout complete"),
		}}
		c.add(kstatus(gen, "", "", ""))
		return c
	}
	msg := "waiting for the proxy's pods to become available"
	c := conditions{set: []metav1.Condition{degraded,
		condition(gen, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonRollingOut, msg),
		condition(gen, depproxyv1.ConditionProgressing, metav1.ConditionTrue, depproxyv1.ReasonRollingOut, msg),
	}}
	c.add(kstatus(gen, depproxyv1.ConditionReconciling, depproxyv1.ReasonRollingOut, msg))
	return c
}

// cacheConditions are what the cache's summary s says (nil: it was not
// read this time, and says nothing): its upstreams' rate limits, the
// budget, what spec.keep names, the credential provider plugins. A
// condition whose feature the spec no longer has is taken out.
func cacheConditions(dp *depproxyv1.DependencyProxy, s *depproxyv1.CacheSummary) conditions {
	var c conditions
	if s != nil {
		c.set = append(c.set, throttledCondition(s, dp.Generation))
		for _, cond := range []*metav1.Condition{budgetCondition(dp, s), warmedCondition(dp, s), credentialsCondition(dp, s)} {
			if cond != nil {
				c.set = append(c.set, *cond)
			}
		}
	}
	if dp.Spec.Storage.MaxSize == nil {
		c.remove = append(c.remove, depproxyv1.ConditionOverBudget)
	}
	if dp.Spec.Keep == nil {
		c.remove = append(c.remove, depproxyv1.ConditionWarmed)
	}
	if !usesCredentialProviders(dp) {
		c.remove = append(c.remove, depproxyv1.ConditionUpstreamCredentials)
	}
	return c
}

// throttledCondition says whether an upstream is being spared for its
// rate limit, and until when.
func throttledCondition(s *depproxyv1.CacheSummary, generation int64) metav1.Condition {
	c := metav1.Condition{Type: depproxyv1.ConditionUpstreamThrottled, Status: metav1.ConditionFalse,
		Reason: depproxyv1.ReasonWithinRateLimit, Message: "no upstream's rate limit is nearly spent", ObservedGeneration: generation}
	if len(s.Throttled) == 0 {
		return c
	}
	var parts []string
	for _, t := range s.Throttled {
		parts = append(parts, fmt.Sprintf("%s until %s (%d left)", t.Registry, t.Until.UTC().Format(time.RFC3339), t.Remaining))
	}
	c.Status, c.Reason = metav1.ConditionTrue, depproxyv1.ReasonRateLimited
	c.Message = "serving cached tags without asking the upstream, whose rate limit is nearly spent or who answered 429: " + strings.Join(parts, "; ")
	return c
}

// budgetCondition says whether the budget holds; nil without one.
func budgetCondition(dp *depproxyv1.DependencyProxy, s *depproxyv1.CacheSummary) *metav1.Condition {
	if dp.Spec.Storage.MaxSize == nil {
		return nil
	}
	c := &metav1.Condition{Type: depproxyv1.ConditionOverBudget, Status: metav1.ConditionFalse, Reason: depproxyv1.ReasonWithinBudget,
		Message: fmt.Sprintf("%s stored of a %s budget", s.Size, dp.Spec.Storage.MaxSize.String()), ObservedGeneration: dp.Generation}
	if s.OverBudget {
		c.Status, c.Reason = metav1.ConditionTrue, depproxyv1.ReasonPinnedOverBudget
		c.Message = fmt.Sprintf("%s stored after evicting every image not pinned, over the %s budget: the budget is too small for what is pinned; raise spec.storage.maxSize or pin less",
			s.Size, dp.Spec.Storage.MaxSize.String())
	}
	return c
}

// warmedCondition says whether what spec.keep names is cached; nil
// where it names nothing.
func warmedCondition(dp *depproxyv1.DependencyProxy, s *depproxyv1.CacheSummary) *metav1.Condition {
	k := dp.Spec.Keep
	if k == nil || (!k.InUse && !k.Warm && len(k.Images) == 0) {
		return nil
	}
	c := &metav1.Condition{Type: depproxyv1.ConditionWarmed, Status: metav1.ConditionTrue, Reason: depproxyv1.ReasonAllWarmed,
		Message: fmt.Sprintf("%d images pinned or warmed, all cached", s.KeptCount), ObservedGeneration: dp.Generation}
	var failed, denied []string
	for _, img := range s.Kept {
		if img.Denied != "" {
			denied = append(denied, img.Image+": "+img.Denied)
			continue
		}
		if !img.Warmed {
			msg := img.Image
			if img.Error != "" {
				msg += ": " + img.Error
			}
			failed = append(failed, msg)
		}
	}
	if len(failed) > 0 {
		c.Status, c.Reason = metav1.ConditionFalse, depproxyv1.ReasonWarmFailed
		c.Message = fmt.Sprintf("%d of %d images not cached yet (tried again with backoff): %s", len(failed), s.KeptCount, strings.Join(failed[:min(len(failed), 5)], "; "))
	}
	if len(denied) > 0 {
		c.Message += fmt.Sprintf("; %d refused by spec.access, neither cached nor pinned: %s", len(denied), strings.Join(denied[:min(len(denied), 5)], "; "))
	}
	return c
}

// credentialsCondition says whether the credential provider plugins gave
// credentials; nil without any.
func credentialsCondition(dp *depproxyv1.DependencyProxy, s *depproxyv1.CacheSummary) *metav1.Condition {
	if !usesCredentialProviders(dp) {
		return nil
	}
	c := &metav1.Condition{Type: depproxyv1.ConditionUpstreamCredentials, Status: metav1.ConditionTrue, Reason: depproxyv1.ReasonCredentialsProvided,
		Message: "every credential provider plugin gave credentials the last time it was asked", ObservedGeneration: dp.Generation}
	if len(s.CredentialErrors) == 0 {
		return c
	}
	var parts []string
	for host, msg := range s.CredentialErrors {
		parts = append(parts, host+": "+msg)
	}
	sort.Strings(parts)
	c.Status, c.Reason = metav1.ConditionFalse, depproxyv1.ReasonCredentialProviderFailed
	c.Message = "cached tags are served, nothing new is pulled from: " + strings.Join(parts, "; ")
	return c
}

// mirrorConditions are a NodeMirror's Ready, Degraded and kstatus' pair:
// from the reconcile's outcome, else the registries' fate, else whether
// every selected node pulls through the cache (settled). Nodes on their
// way are not Degraded: nothing is wrong.
func mirrorConditions(nm *depproxyv1.NodeMirror, outcome *reconcileError, settled bool) conditions {
	gen, st := nm.Generation, &nm.Status
	if outcome == nil {
		outcome = registriesOutcome(st.Registries)
	}
	if outcome == nil && !settled {
		outcome = waiting(depproxyv1.ReasonNodesConfiguring, "%d of %d nodes pull through the cache; a node is configured once the cache answers at its address", st.Configured, st.Nodes)
	}
	if outcome == nil {
		msg := fmt.Sprintf("%d of %d nodes pull %s through the cache", st.Configured, st.Nodes, strings.Join(nm.Spec.Registries, ", "))
		c := conditions{set: []metav1.Condition{
			condition(gen, depproxyv1.ConditionReady, metav1.ConditionTrue, depproxyv1.ReasonNodesConfigured, msg),
			condition(gen, depproxyv1.ConditionDegraded, metav1.ConditionFalse, depproxyv1.ReasonNodesConfigured, msg),
		}}
		c.add(kstatus(gen, "", "", ""))
		return c
	}
	degraded := metav1.ConditionTrue
	if outcome.Reason == depproxyv1.ReasonNodesConfiguring || outcome.Reason == depproxyv1.ReasonNodesUnconfiguring {
		degraded = metav1.ConditionFalse
	}
	c := conditions{set: []metav1.Condition{
		condition(gen, depproxyv1.ConditionReady, metav1.ConditionFalse, outcome.Reason, outcome.Message),
		condition(gen, depproxyv1.ConditionDegraded, degraded, outcome.Reason, outcome.Message),
	}}
	c.add(failedKstatus(gen, outcome))
	return c
}

// registriesOutcome: a registry refused makes the NodeMirror Degraded,
// whatever the others do; the spec must change for it to work.
func registriesOutcome(regs []depproxyv1.RegistryMirrorStatus) *reconcileError {
	for _, r := range regs {
		if r.HeldBy != "" || r.Message != "" {
			reason := r.Reason
			if reason == "" {
				reason = depproxyv1.ReasonRegistryNotServed
			}
			return &reconcileError{Reason: reason, Message: r.Message, retry: retryAfter}
		}
	}
	return nil
}

// cleanupCondition is a CleanupPolicy's Ready: scheduled, suspended, or
// the reconcile's outcome.
func cleanupCondition(cp *depproxyv1.CleanupPolicy, outcome *reconcileError) metav1.Condition {
	c := condition(cp.Generation, depproxyv1.ConditionReady, metav1.ConditionTrue, depproxyv1.ReasonScheduled, "cleanup runs on schedule "+cp.Spec.Schedule)
	switch {
	case outcome != nil:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, outcome.Reason, outcome.Message
	case cp.Spec.Suspend:
		c.Reason, c.Message = depproxyv1.ReasonSuspended, "suspended: no new runs are scheduled"
	}
	return c
}

// shareConditions are a NodeMirror's Sharing condition, count and what
// its nodes told the cache (shared, from the cache's status): none
// without spec.share; True while its agents share (holder is nm's own
// name, and the reconcile went through), False with why not: another
// NodeMirror (holder) shares through the cache, or the reconcile failed.
func shareConditions(nm *depproxyv1.NodeMirror, holder string, shared *depproxyv1.SharingSummary, outcome *reconcileError) conditions {
	gen, st := nm.Generation, &nm.Status
	st.Sharing, st.Shared = 0, nil
	switch {
	case nm.Spec.Share == nil:
		return conditions{remove: []string{depproxyv1.ConditionSharing}}
	case holder != "" && holder != nm.Name:
		return conditions{set: []metav1.Condition{condition(gen, depproxyv1.ConditionSharing, metav1.ConditionFalse, depproxyv1.ReasonShareConflict,
			fmt.Sprintf("NodeMirror %s's nodes share through DependencyProxy %s/%s, which takes one key: this one's agents do not share; remove spec.share here, or from %s",
				holder, nm.Spec.Cache.Namespace, nm.Spec.Cache.Name, holder))}}
	case outcome != nil:
		return conditions{set: []metav1.Condition{condition(gen, depproxyv1.ConditionSharing, metav1.ConditionFalse, outcome.Reason, outcome.Message)}}
	case holder == nm.Name:
		st.Sharing, st.Shared = st.Configured, shared
		return conditions{set: []metav1.Condition{condition(gen, depproxyv1.ConditionSharing, metav1.ConditionTrue, depproxyv1.ReasonNodesSharing,
			fmt.Sprintf("%d of %d nodes' agents serve their stores (%s) to the peers the cache sends them, on port %d",
				st.Configured, st.Nodes, nm.Spec.Share.Store.Path, nm.Spec.Share.PeerPort))}}
	}
	return conditions{set: []metav1.Condition{condition(gen, depproxyv1.ConditionSharing, metav1.ConditionFalse, depproxyv1.ReasonNodesConfiguring,
		"no node agent runs: no registry is configured")}}
}
