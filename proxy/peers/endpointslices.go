package peers

import (
	"context"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/go-logr/logr"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
)

// namespaceFile is where a pod finds its own namespace.
const namespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// PodNamespace is the namespace the process runs in, on Kubernetes.
func PodNamespace() (string, error) {
	b, err := os.ReadFile(namespaceFile)
	return strings.TrimSpace(string(b)), err
}

// endpointSlices is the resource read, with the dynamic client and a
// plain informer: the typed clientset and its informer factories bring
// every Kubernetes API type along, which tripled the binary and added
// 20 MiB to every replica's memory.
var endpointSlices = discoveryv1.SchemeGroupVersion.WithResource("endpointslices")

// WatchEndpointSlices keeps ring's members the ready endpoints of a
// headless Service that are pods of deployment, until ctx ends:
// Kubernetes already knows which replicas are ready, and tells it without
// DNS. Only slices the EndpointSlice controller made count (anyone may
// label a slice with a Service's name), and of their endpoints only pods
// named as deployment's are (a pod that merely carries the proxy's
// labels is not a replica). Each endpoint is reached with the scheme and
// port of the ring's own URL. It needs list and watch of EndpointSlices
// in namespace, nothing else. synced is called once the first list is
// in: until then the replica does not know the others.
func WatchEndpointSlices(ctx context.Context, client dynamic.Interface, namespace, service, deployment string, ring *Ring, synced func(), log logr.Logger) {
	self, err := url.Parse(ring.Self())
	if err != nil {
		return // settings.Settings checked it
	}
	slices := client.Resource(endpointSlices).Namespace(namespace)
	selector := discoveryv1.LabelServiceName + "=" + service + "," + discoveryv1.LabelManagedBy + "=" + endpointSliceController
	informer := cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return slices.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return slices.Watch(ctx, o)
		},
	}, &unstructured.Unstructured{}, 10*time.Minute, cache.Indexers{})
	update := func() {
		var members []string
		for _, obj := range informer.GetStore().List() {
			u, ok := obj.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			var s discoveryv1.EndpointSlice
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &s); err != nil {
				log.Error(err, "an EndpointSlice does not read", "name", u.GetName())
				continue
			}
			members = append(members, readyURLs(&s, deployment, self.Scheme, self.Port())...)
		}
		if ring.Set(members) {
			log.Info("replicas changed", "replicas", ring.Members())
		}
	}
	informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { update() },
		UpdateFunc: func(any, any) { update() },
		DeleteFunc: func(any) { update() },
	})
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
			update()
			synced()
		}
	}()
	informer.RunWithContext(ctx)
}

// endpointSliceController is the managed-by label of the slices
// Kubernetes makes for a Service.
const endpointSliceController = "endpointslice-controller.k8s.io"

// readyURLs are the replicas an EndpointSlice names as ready: pods of
// deployment. A missing ready condition means ready, as the API
// documents.
func readyURLs(s *discoveryv1.EndpointSlice, deployment, scheme, port string) []string {
	var out []string
	for _, e := range s.Endpoints {
		if e.Conditions.Ready != nil && !*e.Conditions.Ready {
			continue
		}
		if e.TargetRef == nil || e.TargetRef.Kind != "Pod" || !podOf(e.TargetRef.Name, deployment) {
			continue
		}
		for _, addr := range e.Addresses {
			out = append(out, scheme+"://"+net.JoinHostPort(addr, port))
		}
	}
	return out
}

// podOf reports whether pod is named as deployment's ReplicaSets name
// their pods: <deployment>-<pod-template-hash>-<5 random characters>,
// where the part before the random ones is cut at 58 characters.
func podOf(pod, deployment string) bool {
	const random, maxBase = 5, 58
	if deployment == "" || len(pod) <= random {
		return false
	}
	base, want := pod[:len(pod)-random], deployment+"-"
	if rest, ok := strings.CutPrefix(base, want); ok {
		return templateHash.MatchString(rest) || (len(base) == maxBase && cutTemplateHash.MatchString(rest))
	}
	return len(base) == maxBase && strings.HasPrefix(want, base)
}

var (
	templateHash    = regexp.MustCompile(`^[a-z0-9]{1,10}-$`)
	cutTemplateHash = regexp.MustCompile(`^[a-z0-9]{0,10}-?$`)
)
