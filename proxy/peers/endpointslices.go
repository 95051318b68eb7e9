package peers

import (
	"context"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// namespaceFile is where a pod finds its own namespace.
const namespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// PodNamespace is the namespace the process runs in, on Kubernetes.
func PodNamespace() (string, error) {
	b, err := os.ReadFile(namespaceFile)
	return strings.TrimSpace(string(b)), err
}

// WatchEndpointSlices keeps ring's members the ready endpoints of a
// headless Service, until ctx ends: Kubernetes already knows which
// replicas are ready, and tells it without DNS. Each endpoint is reached
// with the scheme and port of the ring's own URL. It needs list and
// watch of EndpointSlices in namespace, nothing else.
func WatchEndpointSlices(ctx context.Context, client kubernetes.Interface, namespace, service string, ring *Ring, log logr.Logger) {
	self, err := url.Parse(ring.Self())
	if err != nil {
		return // wire.Settings checked it
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 10*time.Minute,
		informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = discoveryv1.LabelServiceName + "=" + service }))
	informer := factory.Discovery().V1().EndpointSlices()
	lister := informer.Lister()
	update := func() {
		all, err := lister.List(labels.Everything())
		if err != nil {
			return
		}
		var members []string
		for _, s := range all {
			members = append(members, readyURLs(s, self.Scheme, self.Port())...)
		}
		if ring.Set(members) {
			log.Info("replicas changed", "replicas", ring.Members())
		}
	}
	informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { update() },
		UpdateFunc: func(any, any) { update() },
		DeleteFunc: func(any) { update() },
	})
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	update()
	<-ctx.Done()
	factory.Shutdown()
}

// readyURLs are the replicas an EndpointSlice names as ready. A missing
// ready condition means ready, as the API documents.
func readyURLs(s *discoveryv1.EndpointSlice, scheme, port string) []string {
	var out []string
	for _, e := range s.Endpoints {
		if e.Conditions.Ready != nil && !*e.Conditions.Ready {
			continue
		}
		for _, addr := range e.Addresses {
			out = append(out, scheme+"://"+net.JoinHostPort(addr, port))
		}
	}
	return out
}
