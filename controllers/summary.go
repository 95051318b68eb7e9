package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
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
	s.Verification = toVerificationSummary(w.Verification)
	if sh := w.Sharing; sh != nil {
		s.Sharing = &depproxyv1.SharingSummary{Nodes: int32(min(sh.Nodes, math.MaxInt32)), StoreBytes: sh.StoreBytes,
			Store:          resource.NewQuantity(sh.StoreBytes, resource.BinarySI).String(),
			FromPeersBytes: sh.PeerBytes, FromCacheBytes: sh.CacheBytes, ReportedAt: at}
	}
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
