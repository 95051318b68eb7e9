package controllers

import (
	"context"
	"net"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// place is where a cache keeps its objects: the S3 endpoint as a
// network place (a Service by its ClusterIP, whatever it is called), the
// bucket and the prefix, so that overlaps can be compared.
type place struct{ endpoint, bucket, prefix string }

// overlaps: one cache's objects would lie inside the other's prefix.
func (a place) overlaps(b place) bool {
	return a.endpoint == b.endpoint && a.bucket == b.bucket && (strings.HasPrefix(a.prefix, b.prefix) || strings.HasPrefix(b.prefix, a.prefix))
}

// serviceName reads host as cluster DNS would for a pod in namespace:
// name, name.ns, name.ns.svc and name.ns.svc.<cluster domain> are the
// Service name in ns (the bare name in the pod's own namespace).
func serviceName(host, namespace string) (client.ObjectKey, bool) {
	if net.ParseIP(host) != nil {
		return client.ObjectKey{}, false
	}
	labels := strings.Split(host, ".")
	switch {
	case len(labels) == 1:
		return client.ObjectKey{Namespace: namespace, Name: labels[0]}, true
	case len(labels) == 2 || labels[2] == "svc":
		return client.ObjectKey{Namespace: labels[1], Name: labels[0]}, true
	}
	return client.ObjectKey{}, false
}

// storagePlace normalises dp's storage: the host lowercased without a
// trailing dot, the port made explicit, a Service name read as cluster
// DNS reads it and replaced by the Service's ClusterIP where it has one
// (its canonical name where it is headless), so that every spelling of
// one endpoint is one place.
func storagePlace(ctx context.Context, c client.Reader, dp *depproxyv1.DependencyProxy) place {
	s := dp.Spec.Storage
	prefix := strings.Trim(s.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	host, port, err := net.SplitHostPort(s.Endpoint)
	if err != nil {
		host, port = s.Endpoint, "443"
		if s.Insecure {
			port = "80"
		}
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if key, ok := serviceName(host, dp.Namespace); ok {
		svc := &corev1.Service{}
		switch err := c.Get(ctx, key, svc); {
		case err == nil && svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone:
			host = svc.Spec.ClusterIP
		case err == nil || strings.Count(host, ".") != 1:
			// A headless Service, or one that does not exist yet: its
			// full name (a two-label host may be a real DNS name).
			host = key.Name + "." + key.Namespace + ".svc"
		}
	}
	if ip := net.ParseIP(host); ip != nil {
		host = ip.String()
	}
	return place{endpoint: net.JoinHostPort(host, port), bucket: s.Bucket, prefix: prefix}
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
	mine := storagePlace(ctx, r.Client, dp)
	// The oldest of those in the same place holds it: name that one,
	// not another that was refused too.
	var holder *depproxyv1.DependencyProxy
	for i := range all.Items {
		other := &all.Items[i]
		if other.UID == dp.UID || !other.DeletionTimestamp.IsZero() || other.Spec.Storage.Bucket != dp.Spec.Storage.Bucket ||
			!older(other, dp) || (holder != nil && !older(other, holder)) || !mine.overlaps(storagePlace(ctx, r.Client, other)) {
			continue
		}
		holder = other
	}
	if holder != nil {
		return waiting(depproxyv1.ReasonStorageConflict,
			"spec.storage (endpoint %q, bucket %q, prefix %q) is the storage of DependencyProxy %s/%s (endpoint %q, prefix %q), created earlier: give this cache a prefix of its own",
			dp.Spec.Storage.Endpoint, dp.Spec.Storage.Bucket, dp.Spec.Storage.Prefix, holder.Namespace, holder.Name, holder.Spec.Storage.Endpoint, holder.Spec.Storage.Prefix)
	}
	return nil
}
