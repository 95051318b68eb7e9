package controllers

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// The status functions are pure: these tables need no API server.

// want is a condition as a person reads it; an empty status: absent.
type want struct {
	status  metav1.ConditionStatus
	reason  string
	message string // a part of it
}

// checkConditions applies c over conditions a resource had, and holds
// the result to wants, every condition at generation gen.
func checkConditions(t *testing.T, c conditions, had []metav1.Condition, gen int64, wants map[string]want) {
	t.Helper()
	conds := append([]metav1.Condition(nil), had...)
	c.applyTo(&conds)
	got := map[string]metav1.Condition{}
	for _, cond := range conds {
		got[cond.Type] = cond
	}
	for typ, w := range wants {
		cond, ok := got[typ]
		if w.status == "" {
			if ok {
				t.Errorf("%s: %+v, want it absent", typ, cond)
			}
			continue
		}
		if !ok || cond.Status != w.status || cond.Reason != w.reason || !strings.Contains(cond.Message, w.message) || cond.ObservedGeneration != gen {
			t.Errorf("%s: %+v, want %s/%s at generation %d saying %q", typ, cond, w.status, w.reason, gen, w.message)
		}
	}
}

// A stale kstatus condition a resource had, to be taken out.
var staleStalled = []metav1.Condition{{Type: depproxyv1.ConditionStalled, Status: metav1.ConditionTrue, Reason: "Old", Message: "old",
	LastTransitionTime: metav1.Now()}}

func TestStatusProxyConditions(t *testing.T) {
	for _, c := range []struct {
		name    string
		outcome *reconcileError
		serving bool
		wants   map[string]want
	}{
		{"serving", nil, true, map[string]want{
			depproxyv1.ConditionReady:       {metav1.ConditionTrue, depproxyv1.ReasonAvailable, "the proxy is serving"},
			depproxyv1.ConditionDegraded:    {metav1.ConditionFalse, depproxyv1.ReasonReconciled, "children match the spec"},
			depproxyv1.ConditionProgressing: {metav1.ConditionFalse, depproxyv1.ReasonAvailable, "rollout complete"},
			depproxyv1.ConditionReconciling: {}, depproxyv1.ConditionStalled: {},
		}},
		{"rolling out", nil, false, map[string]want{
			depproxyv1.ConditionReady:       {metav1.ConditionFalse, depproxyv1.ReasonRollingOut, "waiting for the proxy's pods to become available"},
			depproxyv1.ConditionDegraded:    {metav1.ConditionFalse, depproxyv1.ReasonReconciled, "children match the spec"},
			depproxyv1.ConditionProgressing: {metav1.ConditionTrue, depproxyv1.ReasonRollingOut, "waiting for the proxy's pods"},
			depproxyv1.ConditionReconciling: {metav1.ConditionTrue, depproxyv1.ReasonRollingOut, "waiting for the proxy's pods"},
			depproxyv1.ConditionStalled:     {},
		}},
		{"a Secret not there yet", waiting(depproxyv1.ReasonSecretNotFound, "Secret %q is missing", "creds"), true, map[string]want{
			depproxyv1.ConditionReady:       {metav1.ConditionFalse, depproxyv1.ReasonSecretNotFound, `Secret "creds" is missing`},
			depproxyv1.ConditionDegraded:    {metav1.ConditionTrue, depproxyv1.ReasonSecretNotFound, `Secret "creds" is missing`},
			depproxyv1.ConditionReconciling: {metav1.ConditionTrue, depproxyv1.ReasonSecretNotFound, `Secret "creds" is missing`},
			depproxyv1.ConditionProgressing: {}, depproxyv1.ConditionStalled: {},
		}},
		{"settings the proxy refuses", stalled(depproxyv1.ReasonInvalidSettings, "warm-platforms: too many slashes"), true, map[string]want{
			depproxyv1.ConditionReady:       {metav1.ConditionFalse, depproxyv1.ReasonInvalidSettings, "warm-platforms"},
			depproxyv1.ConditionDegraded:    {metav1.ConditionTrue, depproxyv1.ReasonInvalidSettings, "warm-platforms"},
			depproxyv1.ConditionStalled:     {metav1.ConditionTrue, depproxyv1.ReasonInvalidSettings, "warm-platforms"},
			depproxyv1.ConditionReconciling: {},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			had := staleStalled
			if c.outcome != nil && c.outcome.retry == retryNever {
				had = nil
			}
			checkConditions(t, proxyConditions(4, c.outcome, c.serving), had, 4, c.wants)
		})
	}
}

// A condition whose status holds keeps its transition time: an
// unchanged resource's status is not written again.
func TestStatusKeepsTransitionTimes(t *testing.T) {
	conds := []metav1.Condition{}
	proxyConditions(1, nil, true).applyTo(&conds)
	then := metav1.NewTime(time.Now().Add(-time.Hour).Truncate(time.Second))
	for i := range conds {
		conds[i].LastTransitionTime = then
	}
	proxyConditions(2, nil, true).applyTo(&conds)
	for _, c := range conds {
		if !c.LastTransitionTime.Equal(&then) || c.ObservedGeneration != 2 {
			t.Errorf("%s: moved to %s at generation %d", c.Type, c.LastTransitionTime, c.ObservedGeneration)
		}
	}
}

func TestStatusCacheConditions(t *testing.T) {
	budget := resource.MustParse("10Gi")
	until := metav1.NewTime(time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC))
	full := func() *depproxyv1.DependencyProxy {
		dp := testProxy()
		dp.Generation = 7
		dp.Spec.Storage.MaxSize = &budget
		dp.Spec.Keep = &depproxyv1.KeepSpec{InUse: true}
		dp.Spec.Upstream.CredentialProvider = &depproxyv1.CredentialProviderSpec{Name: "ecr-credential-provider"}
		return dp
	}
	// What the status had from an earlier look, with every feature on.
	had := []metav1.Condition{}
	cacheConditions(full(), &depproxyv1.CacheSummary{Size: "1Gi"}).applyTo(&had)
	for _, c := range []struct {
		name    string
		dp      func() *depproxyv1.DependencyProxy
		summary *depproxyv1.CacheSummary
		wants   map[string]want
	}{
		{"all well", full, &depproxyv1.CacheSummary{Size: "1Gi", KeptCount: 2, Kept: []depproxyv1.KeptImage{{Image: "a", Warmed: true}, {Image: "b", Warmed: true}}}, map[string]want{
			depproxyv1.ConditionUpstreamThrottled:   {metav1.ConditionFalse, depproxyv1.ReasonWithinRateLimit, "no upstream's rate limit is nearly spent"},
			depproxyv1.ConditionOverBudget:          {metav1.ConditionFalse, depproxyv1.ReasonWithinBudget, "1Gi stored of a 10Gi budget"},
			depproxyv1.ConditionWarmed:              {metav1.ConditionTrue, depproxyv1.ReasonAllWarmed, "2 images pinned or warmed, all cached"},
			depproxyv1.ConditionUpstreamCredentials: {metav1.ConditionTrue, depproxyv1.ReasonCredentialsProvided, "every credential provider plugin gave credentials"},
		}},
		{"all wrong", full, &depproxyv1.CacheSummary{Size: "12Gi", OverBudget: true, KeptCount: 3,
			Kept:             []depproxyv1.KeptImage{{Image: "a", Warmed: true}, {Image: "b", Error: "manifest unknown"}, {Image: "c", Denied: "deny docker.io/c"}},
			Throttled:        []depproxyv1.ThrottledUpstream{{Registry: "docker.io", Until: until, Remaining: 3}},
			CredentialErrors: map[string]string{"b.example": "expired", "a.example": "no role"}}, map[string]want{
			depproxyv1.ConditionUpstreamThrottled:   {metav1.ConditionTrue, depproxyv1.ReasonRateLimited, "rate limit is nearly spent or who answered 429: docker.io until 2026-12-07T06:00:00Z (3 left)"},
			depproxyv1.ConditionOverBudget:          {metav1.ConditionTrue, depproxyv1.ReasonPinnedOverBudget, "12Gi stored after evicting every image not pinned, over the 10Gi budget"},
			depproxyv1.ConditionWarmed:              {metav1.ConditionFalse, depproxyv1.ReasonWarmFailed, "1 of 3 images not cached yet (tried again with backoff): b: manifest unknown; 1 refused by spec.access, neither cached nor pinned: c: deny docker.io/c"},
			depproxyv1.ConditionUpstreamCredentials: {metav1.ConditionFalse, depproxyv1.ReasonCredentialProviderFailed, "nothing new is pulled from: a.example: no role; b.example: expired"},
		}},
		{"the summary not read: what was there stays", full, nil, map[string]want{
			depproxyv1.ConditionOverBudget: {metav1.ConditionFalse, depproxyv1.ReasonWithinBudget, "1Gi stored of a 10Gi budget"},
			depproxyv1.ConditionWarmed:     {metav1.ConditionTrue, depproxyv1.ReasonAllWarmed, "0 images"},
		}},
		{"features gone: their conditions go, summary or not", func() *depproxyv1.DependencyProxy {
			dp := full()
			dp.Spec.Storage.MaxSize, dp.Spec.Keep, dp.Spec.Upstream.CredentialProvider = nil, nil, nil
			return dp
		}, nil, map[string]want{
			depproxyv1.ConditionOverBudget: {}, depproxyv1.ConditionWarmed: {}, depproxyv1.ConditionUpstreamCredentials: {},
			depproxyv1.ConditionUpstreamThrottled: {metav1.ConditionFalse, depproxyv1.ReasonWithinRateLimit, ""},
		}},
		{"keep naming nothing: Warmed neither set nor taken out", func() *depproxyv1.DependencyProxy {
			dp := full()
			dp.Spec.Keep = &depproxyv1.KeepSpec{}
			return dp
		}, &depproxyv1.CacheSummary{Size: "1Gi", KeptCount: 5}, map[string]want{
			depproxyv1.ConditionWarmed: {metav1.ConditionTrue, depproxyv1.ReasonAllWarmed, "0 images pinned or warmed"},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			had := append([]metav1.Condition(nil), had...)
			for i := range had {
				had[i].ObservedGeneration = 7
			}
			checkConditions(t, cacheConditions(c.dp(), c.summary), had, 7, c.wants)
		})
	}
}

func TestStatusMirrorConditions(t *testing.T) {
	mirror := func(configured, nodes int32, regs ...depproxyv1.RegistryMirrorStatus) *depproxyv1.NodeMirror {
		nm := &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: "nodes", Generation: 2},
			Spec: depproxyv1.NodeMirrorSpec{Registries: []string{"docker.io", "ghcr.io"}}}
		nm.Status.Configured, nm.Status.Nodes, nm.Status.Registries = configured, nodes, regs
		return nm
	}
	for _, c := range []struct {
		name    string
		nm      *depproxyv1.NodeMirror
		outcome *reconcileError
		settled bool
		wants   map[string]want
	}{
		{"every node configured", mirror(3, 3), nil, true, map[string]want{
			depproxyv1.ConditionReady:       {metav1.ConditionTrue, depproxyv1.ReasonNodesConfigured, "3 of 3 nodes pull docker.io, ghcr.io through the cache"},
			depproxyv1.ConditionDegraded:    {metav1.ConditionFalse, depproxyv1.ReasonNodesConfigured, "3 of 3 nodes pull docker.io, ghcr.io through the cache"},
			depproxyv1.ConditionReconciling: {}, depproxyv1.ConditionStalled: {},
		}},
		{"nodes on their way", mirror(1, 3), nil, false, map[string]want{
			depproxyv1.ConditionReady:       {metav1.ConditionFalse, depproxyv1.ReasonNodesConfiguring, "1 of 3 nodes pull through the cache; a node is configured once the cache answers at its address"},
			depproxyv1.ConditionDegraded:    {metav1.ConditionFalse, depproxyv1.ReasonNodesConfiguring, "1 of 3 nodes"},
			depproxyv1.ConditionReconciling: {metav1.ConditionTrue, depproxyv1.ReasonNodesConfiguring, "1 of 3 nodes"},
			depproxyv1.ConditionStalled:     {},
		}},
		{"a registry held by another", mirror(3, 3, depproxyv1.RegistryMirrorStatus{Registry: "ghcr.io", HeldBy: "other", Reason: depproxyv1.ReasonNodeMirrorConflict, Message: "held by other"}), nil, true, map[string]want{
			depproxyv1.ConditionReady:       {metav1.ConditionFalse, depproxyv1.ReasonNodeMirrorConflict, "held by other"},
			depproxyv1.ConditionDegraded:    {metav1.ConditionTrue, depproxyv1.ReasonNodeMirrorConflict, "held by other"},
			depproxyv1.ConditionReconciling: {metav1.ConditionTrue, depproxyv1.ReasonNodeMirrorConflict, "held by other"},
		}},
		{"a registry refused without a reason", mirror(3, 3, depproxyv1.RegistryMirrorStatus{Registry: "quay.io", Message: "not served"}), nil, true, map[string]want{
			depproxyv1.ConditionReady: {metav1.ConditionFalse, depproxyv1.ReasonRegistryNotServed, "not served"},
		}},
		{"the reconcile's outcome first", mirror(3, 3, depproxyv1.RegistryMirrorStatus{Registry: "quay.io", Message: "not served"}),
			stalled(depproxyv1.ReasonMirrorsAgentImage, "the agents' own registry"), true, map[string]want{
				depproxyv1.ConditionReady:       {metav1.ConditionFalse, depproxyv1.ReasonMirrorsAgentImage, "the agents' own registry"},
				depproxyv1.ConditionDegraded:    {metav1.ConditionTrue, depproxyv1.ReasonMirrorsAgentImage, "the agents' own registry"},
				depproxyv1.ConditionStalled:     {metav1.ConditionTrue, depproxyv1.ReasonMirrorsAgentImage, "the agents' own registry"},
				depproxyv1.ConditionReconciling: {},
			}},
		{"taking the nodes' files out", mirror(0, 3), waiting(depproxyv1.ReasonNodesUnconfiguring, "2 node agents still stopping"), false, map[string]want{
			depproxyv1.ConditionDegraded: {metav1.ConditionFalse, depproxyv1.ReasonNodesUnconfiguring, "2 node agents still stopping"},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			checkConditions(t, mirrorConditions(c.nm, c.outcome, c.settled), staleStalled, 2, c.wants)
		})
	}
}

func TestStatusCleanupCondition(t *testing.T) {
	for _, c := range []struct {
		name    string
		suspend bool
		outcome *reconcileError
		want    want
	}{
		{"scheduled", false, nil, want{metav1.ConditionTrue, depproxyv1.ReasonScheduled, "cleanup runs on schedule 0 3 * * *"}},
		{"suspended", true, nil, want{metav1.ConditionTrue, depproxyv1.ReasonSuspended, "suspended: no new runs are scheduled"}},
		{"no target", true, waiting(depproxyv1.ReasonTargetNotFound, "no DependencyProxy %q", "cache"), want{metav1.ConditionFalse, depproxyv1.ReasonTargetNotFound, `no DependencyProxy "cache"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cp := &depproxyv1.CleanupPolicy{ObjectMeta: metav1.ObjectMeta{Generation: 5},
				Spec: depproxyv1.CleanupPolicySpec{Schedule: "0 3 * * *", Suspend: c.suspend}}
			checkConditions(t, conditions{set: []metav1.Condition{cleanupCondition(cp, c.outcome)}}, nil, 5,
				map[string]want{depproxyv1.ConditionReady: c.want})
		})
	}
}

// The NodeMirror that shares through a cache shows what its nodes told
// the cache; another that asks for spec.share, or one whose reconcile
// failed, shows none of it.
func TestStatusShared(t *testing.T) {
	shared := &depproxyv1.SharingSummary{Nodes: 3, StoreBytes: 3 << 30, FromPeersBytes: 8 << 30, FromCacheBytes: 1 << 30}
	sharing := func() *depproxyv1.NodeMirror {
		nm := &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: "nodes", Generation: 2},
			Spec: depproxyv1.NodeMirrorSpec{Cache: depproxyv1.CacheReference{Namespace: "ci", Name: "hub"},
				Share: &depproxyv1.NodeShare{Store: depproxyv1.NodeStore{Path: "/var/lib/depproxy"}, PeerPort: 30601}}}
		nm.Status.Configured, nm.Status.Nodes = 3, 3
		return nm
	}
	for _, c := range []struct {
		name    string
		holder  string
		outcome *reconcileError
		want    *depproxyv1.SharingSummary
	}{
		{"sharing", "nodes", nil, shared},
		{"another NodeMirror shares through the cache", "others", nil, nil},
		{"the reconcile failed", "nodes", waiting(depproxyv1.ReasonNodesConfiguring, "not yet"), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			nm := sharing()
			nm.Status.Shared = &depproxyv1.SharingSummary{Nodes: 99} // from before
			shareConditions(nm, c.holder, shared, c.outcome)
			if !equality.Semantic.DeepEqual(nm.Status.Shared, c.want) {
				t.Errorf("status.shared %+v, want %+v", nm.Status.Shared, c.want)
			}
		})
	}
}
