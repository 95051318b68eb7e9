package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/peers"
)

// Several replicas get what finding each other takes (a headless
// Service, a Role to read its endpoints, their own address), a
// PodDisruptionBudget and a spread over nodes; with autoscaling, a
// HorizontalPodAutoscaler that alone sets the replica count; and all of
// it goes when one replica is asked for again.
func TestReplicasChildren(t *testing.T) {
	ns := namespace(t)
	dp := sampleProxy(t, ns)
	ctx := context.Background()
	r, _ := newProxyReconciler(k8sClient)
	name := client.ObjectKey{Namespace: ns, Name: "team-a-depproxy"}
	peersKey := client.ObjectKey{Namespace: ns, Name: "team-a-depproxy-peers"}
	replicatedOnly := []client.Object{&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: peersKey.Name}}, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: peersKey.Name}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: peersKey.Name}}, &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: name.Name}}}
	exists := func(obj client.Object) bool {
		err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: obj.GetName()}, obj.DeepCopyObject().(client.Object))
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return err == nil
	}

	reconcileProxy(t, r, dp)
	for _, obj := range replicatedOnly {
		if exists(obj) {
			t.Errorf("one replica, and a %T %s exists", obj, obj.GetName())
		}
	}

	update(t, dp, func() { dp.Spec.Replicas = ptr.To(int32(3)) })
	reconcileProxy(t, r, dp)
	for _, obj := range replicatedOnly {
		if !exists(obj) {
			t.Errorf("three replicas, and no %T %s", obj, obj.GetName())
		}
	}
	svc := &corev1.Service{}
	k8sClient.Get(ctx, peersKey, svc)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || svc.Spec.Selector["app.kubernetes.io/instance"] == "" {
		t.Errorf("the peers Service is not headless over the proxy's pods: %+v", svc.Spec)
	}
	role := &rbacv1.Role{}
	k8sClient.Get(ctx, peersKey, role)
	want := []rbacv1.PolicyRule{{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}}}
	if fmt.Sprint(role.Rules) != fmt.Sprint(want) {
		t.Errorf("the Role grants %+v, want only list and watch of EndpointSlices", role.Rules)
	}
	pdb := &policyv1.PodDisruptionBudget{}
	k8sClient.Get(ctx, name, pdb)
	if pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PDB: %+v", pdb.Spec)
	}
	d := &appsv1.Deployment{}
	k8sClient.Get(ctx, name, d)
	pod := d.Spec.Template.Spec
	args := strings.Join(pod.Containers[0].Args, " ")
	if *d.Spec.Replicas != 3 || !strings.Contains(args, "--advertise http://$(POD_IP):5000") || !ptr.Deref(pod.AutomountServiceAccountToken, false) ||
		len(pod.TopologySpreadConstraints) != 1 || pod.TopologySpreadConstraints[0].TopologyKey != corev1.LabelHostname {
		t.Errorf("deployment: replicas %d, args %q, automount %v, spread %+v", *d.Spec.Replicas, args, pod.AutomountServiceAccountToken, pod.TopologySpreadConstraints)
	}
	if grace, stop := *pod.TerminationGracePeriodSeconds, pod.Containers[0].Lifecycle.PreStop.Sleep.Seconds; grace < stop+40 {
		t.Errorf("grace %ds leaves no time after a %ds preStop delay for the shutdown delay and the drain", grace, stop)
	}
	cm := &corev1.ConfigMap{}
	k8sClient.Get(ctx, name, cm)
	if !strings.Contains(cm.Data["config.yaml"], "peer-service: team-a-depproxy-peers") {
		t.Errorf("config.yaml lacks peer-service:\n%s", cm.Data["config.yaml"])
	}

	// Autoscaling: the HPA sets the replicas, the operator leaves them.
	update(t, dp, func() { dp.Spec.Autoscaling = &depproxyv1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 5} })
	reconcileProxy(t, r, dp)
	hpa := &autoscalingv2.HorizontalPodAutoscaler{}
	if err := k8sClient.Get(ctx, name, hpa); err != nil {
		t.Fatalf("no HPA: %v", err)
	}
	if *hpa.Spec.MinReplicas != 2 || hpa.Spec.MaxReplicas != 5 || hpa.Spec.ScaleTargetRef.Name != name.Name ||
		*hpa.Spec.Metrics[0].Resource.Target.AverageUtilization != 70 {
		t.Errorf("HPA: %+v", hpa.Spec)
	}
	k8sClient.Get(ctx, name, d)
	d.Spec.Replicas = ptr.To(int32(4)) // what the autoscaler does
	if err := k8sClient.Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	update(t, dp, func() { dp.Spec.PrefetchPlatforms = []string{"linux/amd64"} }) // and a change that rolls the pods
	reconcileProxy(t, r, dp)
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, name, d)
	if *d.Spec.Replicas != 4 {
		t.Errorf("the operator set the replicas to %d over the autoscaler's 4", *d.Spec.Replicas)
	}

	update(t, dp, func() { dp.Spec.Autoscaling, dp.Spec.Replicas = nil, ptr.To(int32(1)) })
	reconcileProxy(t, r, dp)
	for _, obj := range append(replicatedOnly, &autoscalingv2.HorizontalPodAutoscaler{ObjectMeta: metav1.ObjectMeta{Name: name.Name}}) {
		if exists(obj) {
			t.Errorf("back to one replica, and the %T %s is still there", obj, obj.GetName())
		}
	}
	k8sClient.Get(ctx, name, d)
	if *d.Spec.Replicas != 1 || strings.Contains(strings.Join(d.Spec.Template.Spec.Containers[0].Args, " "), "--advertise") {
		t.Errorf("back to one replica: replicas %d, args %v", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Args)
	}
}

func update(t *testing.T, dp *depproxyv1.DependencyProxy, change func()) {
	t.Helper()
	if err := k8sClient.Get(context.Background(), client.ObjectKeyFromObject(dp), dp); err != nil {
		t.Fatal(err)
	}
	change()
	if err := k8sClient.Update(context.Background(), dp); err != nil {
		t.Fatal(err)
	}
}

// A replica follows the ready endpoints of the peers Service, with
// nothing but the Role the operator gives its ServiceAccount: endpoints
// added, turned unready and removed change who owns what.
func TestReplicasFollowEndpointSlices(t *testing.T) {
	ns := namespace(t)
	dp := sampleProxy(t, ns)
	ctx := context.Background()
	r, _ := newProxyReconciler(k8sClient)
	update(t, dp, func() { dp.Spec.Replicas = ptr.To(int32(3)) })
	reconcileProxy(t, r, dp)

	sa := "system:serviceaccount:" + ns + ":team-a-depproxy"
	can := func(verb, resource, group, namespace string) bool {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: sa, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Resource: resource, Group: group, Namespace: namespace}}}
		if err := k8sClient.Create(ctx, sar); err != nil {
			t.Fatal(err)
		}
		return sar.Status.Allowed
	}
	for _, c := range []struct {
		verb, resource, group, namespace string
		allowed                          bool
	}{
		{"list", "endpointslices", "discovery.k8s.io", ns, true},
		{"watch", "endpointslices", "discovery.k8s.io", ns, true},
		{"get", "endpointslices", "discovery.k8s.io", ns, false},
		{"create", "endpointslices", "discovery.k8s.io", ns, false},
		{"list", "endpointslices", "discovery.k8s.io", "default", false},
		{"list", "endpointslices", "discovery.k8s.io", "", false},
		{"list", "secrets", "", ns, false},
		{"list", "pods", "", ns, false},
	} {
		if got := can(c.verb, c.resource, c.group, c.namespace); got != c.allowed {
			t.Errorf("the proxy's ServiceAccount may %s %s in %q: %v, want %v", c.verb, c.resource, c.namespace, got, c.allowed)
		}
	}

	// The watch runs as the ServiceAccount, as in the pod.
	asProxy := rest.CopyConfig(restConfig)
	asProxy.Impersonate = rest.ImpersonationConfig{UserName: sa, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}
	clientset, err := dynamic.NewForConfig(asProxy)
	if err != nil {
		t.Fatal(err)
	}
	self := "http://10.0.0.1:5000"
	ring := peers.NewRing(self, nil)
	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	var synced atomic.Bool
	go peers.WatchEndpointSlices(watchCtx, clientset, ns, "team-a-depproxy-peers", "team-a-depproxy", ring, func() { synced.Store(true) }, logr.Discard())

	managed := func(service string) map[string]string {
		return map[string]string{discoveryv1.LabelServiceName: service, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}
	}
	pod := func(name string) *corev1.ObjectReference {
		return &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name}
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "team-a-depproxy-peers-abc", Namespace: ns, Labels: managed("team-a-depproxy-peers")},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, TargetRef: pod("team-a-depproxy-6b7c9d8f5-a1b2c")},
			{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, TargetRef: pod("team-a-depproxy-6b7c9d8f5-d3e4f")},
			{Addresses: []string{"10.0.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}, TargetRef: pod("team-a-depproxy-6b7c9d8f5-g5h6i")},
			// A pod that only carries the proxy's labels, and an
			// endpoint that is no pod.
			{Addresses: []string{"10.6.6.6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, TargetRef: pod("rogue")},
			{Addresses: []string{"10.6.6.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
		},
	}
	other := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "someone-else", Namespace: ns, Labels: managed("another-service")},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.9.9.9"}, TargetRef: pod("team-a-depproxy-6b7c9d8f5-zzzzz")}},
	}
	// A slice made by hand, labelled with the peers Service's name.
	forged := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "forged", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "team-a-depproxy-peers"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.6.6.8"}, TargetRef: pod("team-a-depproxy-6b7c9d8f5-yyyyy")}},
	}
	for _, s := range []*discoveryv1.EndpointSlice{slice, other, forged} {
		if err := k8sClient.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	members := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !slices.Equal(ring.Members(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("replicas %v, want %v", ring.Members(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	members("http://10.0.0.1:5000", "http://10.0.0.2:5000")
	for deadline := time.Now().Add(10 * time.Second); !synced.Load(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the replicas are known, and the watch never said it synced (the replica would stay unready)")
		}
	}
	keys := make([]string, 300)
	for i := range keys {
		keys[i] = peers.BlobKey("docker.io", digest.Digest(fmt.Sprintf("sha256:%064d", i)))
	}
	owners := func() map[string]int {
		n := map[string]int{}
		for _, k := range keys {
			n[ring.Owner(k)]++
		}
		return n
	}
	if got := owners(); len(got) != 2 || got["http://10.0.0.3:5000"] != 0 {
		t.Errorf("owners with two ready replicas: %v", got)
	}

	slice.Endpoints[2].Conditions.Ready = ptr.To(true)
	if err := k8sClient.Update(ctx, slice); err != nil {
		t.Fatal(err)
	}
	members("http://10.0.0.1:5000", "http://10.0.0.2:5000", "http://10.0.0.3:5000")
	if got := owners(); got["http://10.0.0.3:5000"] < 50 {
		t.Errorf("a third ready replica owns %d of %d keys: %v", got["http://10.0.0.3:5000"], len(keys), got)
	}

	slice.Endpoints = slice.Endpoints[:1]
	if err := k8sClient.Update(ctx, slice); err != nil {
		t.Fatal(err)
	}
	members(self)
	if got := owners(); got[self] != len(keys) {
		t.Errorf("alone, this replica owns %d of %d keys", got[self], len(keys))
	}
	if err := k8sClient.Delete(ctx, slice); err != nil {
		t.Fatal(err)
	}
	members()
}
