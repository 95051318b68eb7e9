package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/report"
)

// maxSummaryImages and maxKeptImages bound status.cache.images and
// .kept whatever the proxy sends.
const (
	maxSummaryImages = 50
	maxKeptImages    = 100
)

// HTTPSummaries reads a proxy's summary over its Service.
type HTTPSummaries struct {
	Client *http.Client
	// Services, when set, resolves the proxy's Service to its ClusterIP, so
	// that the operator needs no cluster DNS; otherwise the Service's DNS
	// name is dialled.
	Services client.Reader
	// BaseURL, when set, replaces both: tests point it elsewhere.
	BaseURL func(dp *depproxyv1.DependencyProxy) string
}

func (h HTTPSummaries) baseURL(ctx context.Context, dp *depproxyv1.DependencyProxy) (string, error) {
	switch {
	case h.BaseURL != nil:
		return h.BaseURL(dp), nil
	case h.Services != nil:
		var svc corev1.Service
		if err := h.Services.Get(ctx, client.ObjectKey{Namespace: dp.Namespace, Name: proxyName(dp)}, &svc); err != nil {
			return "", fmt.Errorf("proxy summary: %w", err)
		}
		if ip := svc.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
			return "http://" + net.JoinHostPort(ip, strconv.Itoa(MetricsPort)), nil
		}
	}
	return fmt.Sprintf("http://%s.%s.svc:%d", proxyName(dp), dp.Namespace, MetricsPort), nil
}

// Summary asks the proxy.
func (h HTTPSummaries) Summary(ctx context.Context, dp *depproxyv1.DependencyProxy) (*depproxyv1.CacheSummary, error) {
	base, err := h.baseURL(ctx, dp)
	if err != nil {
		return nil, err
	}
	c := h.Client
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+report.SummaryPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("proxy summary: %s", resp.Status)
	}
	var w report.Summary
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&w); err != nil {
		return nil, fmt.Errorf("proxy summary: %w", err)
	}
	return toCacheSummary(w, metav1.Now()), nil
}

// toCacheSummary bounds and shapes the proxy's report for the status.
func toCacheSummary(w report.Summary, at metav1.Time) *depproxyv1.CacheSummary {
	s := &depproxyv1.CacheSummary{
		ImageCount: w.ImageCount,
		Bytes:      w.Bytes,
		Size:       resource.NewQuantity(w.Bytes, resource.BinarySI).String(),
		ReportedAt: at,
	}
	if total := w.Hits + w.Misses; total > 0 {
		s.HitRatio = fmt.Sprintf("%.2f", float64(w.Hits)/float64(total))
	}
	for i, t := range w.Throttled {
		if i == 16 {
			break
		}
		s.Throttled = append(s.Throttled, depproxyv1.ThrottledUpstream{Registry: t.Registry, Until: metav1.NewTime(t.Until), Remaining: int32(t.Remaining)})
	}
	if w.MaxSize > 0 {
		s.BudgetBytes, s.Budget = w.MaxSize, resource.NewQuantity(w.MaxSize, resource.BinarySI).String()
	}
	if e := w.LastEviction; e != nil {
		s.OverBudget = e.OverBudget
		s.LastEvicted = e.Evicted[:min(len(e.Evicted), 20)]
		if t, err := time.Parse(time.RFC3339, e.FinishedAt); err == nil {
			s.LastEvictionTime = &metav1.Time{Time: t}
		}
	}
	s.KeptCount, s.Denied = len(w.Kept), w.Denied
	for host, msg := range w.CredentialErrors {
		if len(s.CredentialErrors) == 16 {
			break
		}
		if s.CredentialErrors == nil {
			s.CredentialErrors = map[string]string{}
		}
		s.CredentialErrors[host] = msg[:min(len(msg), 512)]
	}
	for i, k := range w.Kept {
		if i == maxKeptImages {
			break
		}
		s.Kept = append(s.Kept, depproxyv1.KeptImage{Image: k.Ref, Pinned: k.Pinned, Digest: k.Digest,
			Children: k.Children[:min(len(k.Children), 16)], Warmed: k.Warmed, Error: k.Error, Denied: k.Denied})
	}
	for i, img := range w.Images {
		if i == maxSummaryImages {
			break
		}
		ci := depproxyv1.CachedImage{Registry: img.Registry, Repository: img.Repository, Tag: img.Tag, Digest: img.Digest, MediaType: img.MediaType}
		for j, p := range img.Platforms {
			if j == 64 {
				break
			}
			ci.Platforms = append(ci.Platforms, depproxyv1.PlatformImage{Platform: p.Platform, Digest: p.Digest})
		}
		s.Images = append(s.Images, ci)
	}
	return s
}

// keepConditions say whether the budget holds and what spec.keep names
// is cached; nil where the spec asks for neither.
func keepConditions(dp *depproxyv1.DependencyProxy, s *depproxyv1.CacheSummary) []metav1.Condition {
	var conds []metav1.Condition
	if dp.Spec.Storage.MaxSize != nil {
		c := metav1.Condition{Type: depproxyv1.ConditionOverBudget, Status: metav1.ConditionFalse, Reason: depproxyv1.ReasonWithinBudget,
			Message: fmt.Sprintf("%s stored of a %s budget", s.Size, dp.Spec.Storage.MaxSize.String()), ObservedGeneration: dp.Generation}
		if s.OverBudget {
			c.Status, c.Reason = metav1.ConditionTrue, depproxyv1.ReasonPinnedOverBudget
			c.Message = fmt.Sprintf("%s stored after evicting every image not pinned, over the %s budget: the budget is too small for what is pinned; raise spec.storage.maxSize or pin less",
				s.Size, dp.Spec.Storage.MaxSize.String())
		}
		conds = append(conds, c)
	}
	if k := dp.Spec.Keep; k != nil && (k.InUse || k.Warm || len(k.Images) > 0) {
		c := metav1.Condition{Type: depproxyv1.ConditionWarmed, Status: metav1.ConditionTrue, Reason: depproxyv1.ReasonAllWarmed,
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
		conds = append(conds, c)
	}
	return conds
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
