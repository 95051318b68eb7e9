package controllers

import (
	"context"
	"strings"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// storagePlace is where a cache keeps its objects: the endpoint, the
// bucket and the prefix, normalised so that overlaps can be compared.
func storagePlace(dp *depproxyv1.DependencyProxy) (endpoint, bucket, prefix string) {
	s := dp.Spec.Storage
	prefix = strings.Trim(s.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return strings.ToLower(s.Endpoint), s.Bucket, prefix
}

// overlaps: one cache's objects would lie inside the other's prefix.
func overlaps(a, b *depproxyv1.DependencyProxy) bool {
	ea, ba, pa := storagePlace(a)
	eb, bb, pb := storagePlace(b)
	return ea == eb && ba == bb && (strings.HasPrefix(pa, pb) || strings.HasPrefix(pb, pa))
}

// older says whether a came before b: the earlier resource keeps its
// storage, and the later one is refused.
func older(a, b *depproxyv1.DependencyProxy) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
}

// checkStorage refuses a cache whose storage overlaps that of an older
// one, in any namespace: two caches in one place would serve each other's
// tags across tenants and delete each other's objects in cleanup.
func (r *DependencyProxyReconciler) checkStorage(ctx context.Context, dp *depproxyv1.DependencyProxy) error {
	all := &depproxyv1.DependencyProxyList{}
	if err := r.List(ctx, all); err != nil {
		return err
	}
	for i := range all.Items {
		other := &all.Items[i]
		if other.UID == dp.UID || !other.DeletionTimestamp.IsZero() || !overlaps(dp, other) || !older(other, dp) {
			continue
		}
		return waiting(depproxyv1.ReasonStorageConflict,
			"spec.storage (bucket %q, prefix %q) overlaps the storage of DependencyProxy %s/%s (prefix %q), created earlier: give this cache a prefix of its own",
			dp.Spec.Storage.Bucket, dp.Spec.Storage.Prefix, other.Namespace, other.Name, other.Spec.Storage.Prefix)
	}
	return nil
}
