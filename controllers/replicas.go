package controllers

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// replicated: more than one replica may run, so they find each other
// and share the downloads, and a disruption takes one at a time.
func replicated(dp *depproxyv1.DependencyProxy) bool {
	return dp.Spec.Autoscaling != nil || (dp.Spec.Replicas != nil && *dp.Spec.Replicas > 1)
}

// peersName names the headless Service the replicas find each other by,
// and the Role that lets them read its endpoints.
func peersName(dp *depproxyv1.DependencyProxy) string { return proxyName(dp) + "-peers" }

// podIPEnv is the pod's own address, for --advertise.
const podIPEnv = "POD_IP"

// desiredPeerService lists the replicas, ready or not, by pod IP: its
// EndpointSlices are how each replica knows the others (no DNS).
func desiredPeerService(dp *depproxyv1.DependencyProxy) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: objectMeta(peersName(dp), dp.Namespace, proxyLabels(dp)),
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone,
			Selector:  proxyLabels(dp),
			Ports:     []corev1.ServicePort{{Name: "http", Port: ProxyPort, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}},
		},
	}
}

// desiredPeerRole grants reading the namespace's EndpointSlices: all a
// replica asks of the API server.
func desiredPeerRole(dp *depproxyv1.DependencyProxy) *rbacv1.Role {
	return &rbacv1.Role{
		ObjectMeta: objectMeta(peersName(dp), dp.Namespace, proxyLabels(dp)),
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{discoveryv1.GroupName},
			Resources: []string{"endpointslices"},
			Verbs:     []string{"list", "watch"},
		}},
	}
}

func desiredPeerRoleBinding(dp *depproxyv1.DependencyProxy) *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{
		ObjectMeta: objectMeta(peersName(dp), dp.Namespace, proxyLabels(dp)),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: peersName(dp)},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: proxyName(dp), Namespace: dp.Namespace}},
	}
}

// desiredPDB lets a drain take one replica at a time.
func desiredPDB(dp *depproxyv1.DependencyProxy) *policyv1.PodDisruptionBudget {
	return &policyv1.PodDisruptionBudget{
		ObjectMeta: objectMeta(proxyName(dp), dp.Namespace, proxyLabels(dp)),
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: ptr.To(intstr.FromInt32(1)),
			Selector:       &metav1.LabelSelector{MatchLabels: proxyLabels(dp)},
		},
	}
}

// desiredHPA scales the Deployment on CPU. Without spec.autoscaling it
// only names the one to remove.
func desiredHPA(dp *depproxyv1.DependencyProxy) *autoscalingv2.HorizontalPodAutoscaler {
	a := dp.Spec.Autoscaling
	if a == nil {
		a = &depproxyv1.AutoscalingSpec{}
	}
	target := a.TargetCPUUtilizationPercentage
	if target == 0 {
		target = 70
	}
	return &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: objectMeta(proxyName(dp), dp.Namespace, proxyLabels(dp)),
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: proxyName(dp)},
			MinReplicas:    ptr.To(a.MinReplicas),
			MaxReplicas:    a.MaxReplicas,
			Metrics: []autoscalingv2.MetricSpec{{
				Type: autoscalingv2.ResourceMetricSourceType,
				Resource: &autoscalingv2.ResourceMetricSource{Name: corev1.ResourceCPU,
					Target: autoscalingv2.MetricTarget{Type: autoscalingv2.UtilizationMetricType, AverageUtilization: ptr.To(target)}},
			}},
		},
	}
}

// replicate adds to the proxy's pods what running several takes: their
// own address to advertise, a token to read the endpoints with, and a
// spread over nodes, so that one node going does not take them all.
func replicate(dp *depproxyv1.DependencyProxy, d *appsv1.Deployment) {
	pod := &d.Spec.Template.Spec
	c := &pod.Containers[0]
	scheme := "http"
	if tlsSecret(dp) != "" {
		scheme = "https"
	}
	c.Env = append(c.Env, corev1.EnvVar{Name: podIPEnv, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}})
	c.Args = append(c.Args, "--advertise", fmt.Sprintf("%s://$(%s):%d", scheme, podIPEnv, ProxyPort))
	pod.AutomountServiceAccountToken = ptr.To(true)
	pod.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
		MaxSkew:           1,
		TopologyKey:       corev1.LabelHostname,
		WhenUnsatisfiable: corev1.ScheduleAnyway, // one node still runs them all
		LabelSelector:     &metav1.LabelSelector{MatchLabels: proxyLabels(dp)},
		MatchLabelKeys:    []string{appsv1.DefaultDeploymentUniqueLabelKey},
	}}
	if dp.Spec.Autoscaling != nil {
		d.Spec.Replicas = nil // the autoscaler's
	}
}

// peerServiceChild applies the headless peer Service's selector and
// ports.
func peerServiceChild(svc *corev1.Service) child {
	return child{obj: svc, update: func(e, d client.Object) {
		e.(*corev1.Service).Spec.Selector, e.(*corev1.Service).Spec.Ports = d.(*corev1.Service).Spec.Selector, d.(*corev1.Service).Spec.Ports
	}}
}

// peerRoleChild applies the peers' Role's rules.
func peerRoleChild(role *rbacv1.Role) child {
	return child{obj: role, update: func(e, d client.Object) { e.(*rbacv1.Role).Rules = d.(*rbacv1.Role).Rules }}
}

// peerRoleBindingChild applies the peers' RoleBinding's subjects.
func peerRoleBindingChild(rb *rbacv1.RoleBinding) child {
	return child{obj: rb, update: func(e, d client.Object) {
		e.(*rbacv1.RoleBinding).Subjects = d.(*rbacv1.RoleBinding).Subjects
	}}
}

// pdbChild applies the PodDisruptionBudget's spec.
func pdbChild(pdb *policyv1.PodDisruptionBudget) child {
	return child{obj: pdb, update: func(e, d client.Object) {
		e.(*policyv1.PodDisruptionBudget).Spec = d.(*policyv1.PodDisruptionBudget).Spec
	}}
}

// hpaChild applies the HorizontalPodAutoscaler's spec.
func hpaChild(hpa *autoscalingv2.HorizontalPodAutoscaler) child {
	return child{obj: hpa, update: func(e, d client.Object) {
		e.(*autoscalingv2.HorizontalPodAutoscaler).Spec = d.(*autoscalingv2.HorizontalPodAutoscaler).Spec
	}}
}
