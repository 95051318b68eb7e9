package controllers

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

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
