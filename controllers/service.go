package controllers

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// The proxy's Service, ServiceAccount and ServiceMonitor.

func desiredService(dp *depproxyv1.DependencyProxy) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: objectMeta(proxyName(dp), dp.Namespace, proxyLabels(dp)),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: proxyLabels(dp),
			Ports: []corev1.ServicePort{
				{Name: "http", Port: ProxyPort, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "metrics", Port: MetricsPort, TargetPort: intstr.FromString("metrics"), Protocol: corev1.ProtocolTCP},
			},
		},
	}
	return svc
}

func desiredServiceAccount(dp *depproxyv1.DependencyProxy) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: objectMeta(proxyName(dp), dp.Namespace, proxyLabels(dp)),
		AutomountServiceAccountToken: ptr.To(false)}
}

// desiredServiceMonitor scrapes the proxy's /metrics, for clusters running
// the Prometheus operator. Unstructured, so that the operator needs no
// dependency on its Go types.
func desiredServiceMonitor(dp *depproxyv1.DependencyProxy) *unstructured.Unstructured {
	sm := &unstructured.Unstructured{Object: map[string]any{
		"spec": map[string]any{
			"selector":  map[string]any{"matchLabels": toAny(proxyLabels(dp))},
			"endpoints": []any{map[string]any{"port": "metrics", "path": "/metrics"}},
		},
	}}
	sm.SetAPIVersion("monitoring.coreos.com/v1")
	sm.SetKind("ServiceMonitor")
	sm.SetName(proxyName(dp))
	sm.SetNamespace(dp.Namespace)
	sm.SetLabels(proxyLabels(dp))
	return sm
}

// serviceAccountChild applies the ServiceAccount: whether it mounts a
// token (annotations are the cluster admin's).
func serviceAccountChild(sa *corev1.ServiceAccount) child {
	return child{obj: sa, update: func(e, d client.Object) {
		e.(*corev1.ServiceAccount).AutomountServiceAccountToken = d.(*corev1.ServiceAccount).AutomountServiceAccountToken
	}}
}

// serviceChild applies a Service's type, selector and ports; the rest
// (its cluster IP) is the API server's.
func serviceChild(svc *corev1.Service) child {
	return child{obj: svc, update: func(e, d client.Object) {
		es, ds := e.(*corev1.Service), d.(*corev1.Service)
		es.Spec.Type, es.Spec.Selector, es.Spec.Ports = ds.Spec.Type, ds.Spec.Selector, ds.Spec.Ports
	}, same: func(e, d client.Object) bool {
		es, ds := e.(*corev1.Service), d.(*corev1.Service)
		return es.Spec.Type == ds.Spec.Type && equality.Semantic.DeepEqual(es.Spec.Selector, ds.Spec.Selector) &&
			equality.Semantic.DeepEqual(es.Spec.Ports, ds.Spec.Ports)
	}}
}

// serviceMonitorChild applies a ServiceMonitor's spec.
func serviceMonitorChild(sm *unstructured.Unstructured) child {
	return child{obj: sm, update: func(e, d client.Object) {
		e.(*unstructured.Unstructured).Object["spec"] = d.(*unstructured.Unstructured).Object["spec"]
	}}
}
