package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/wire"
)

const (
	// nodeMirrorFinalizer holds a resource with spec.nodeMirror until
	// every node's files are removed and what was there restored.
	nodeMirrorFinalizer = "depproxy.dev/node-mirror"
	// DefaultNodeNamespace runs the node agents: it must admit hostPath
	// volumes (the privileged Pod Security Standard), which a tenant's
	// namespace should not.
	DefaultNodeNamespace = "depproxy-nodes"
	nodeAgentPort        = 9092
	ownerNamespaceLabel  = "depproxy.dev/namespace"
	ownerNameLabel       = "depproxy.dev/name"
)

// nodeAgentName names a resource's node agent DaemonSet.
func nodeAgentName(dp *depproxyv1.DependencyProxy) string {
	return dp.Namespace + "-" + dp.Name + "-node"
}

func nodeAgentLabels(dp *depproxyv1.DependencyProxy) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name": "depproxy-node",
		ownerNamespaceLabel:      dp.Namespace,
		ownerNameLabel:           dp.Name,
		managedByLabel:           managedBy,
	}
}

// nodeRegistries are the registries whose node configuration a resource
// writes, each with where the nodes fall back to.
func nodeRegistries(dp *depproxyv1.DependencyProxy) []wire.Keyed {
	var out []wire.Keyed
	for _, u := range upstreams(dp) {
		reg := u.Registry
		if reg == "" {
			reg = wire.RegistryOf(u.URL)
		}
		names := append([]string{reg}, u.MirrorOf...)
		for _, name := range names {
			if nm := dp.Spec.NodeMirror; nm != nil && len(nm.Registries) > 0 && !slices.Contains(nm.Registries, name) {
				continue
			}
			server := u.URL
			if name != reg {
				server = "" // the registry it stands in for: its default
			}
			out = append(out, wire.Keyed{Registry: name, Value: server})
		}
	}
	return out
}

// desiredNodeAgent runs `depproxy node` on every selected node: it writes
// the node's files once the cache answers at the node's address and the
// Service's nodePort, and removes them when it stops.
func desiredNodeAgent(dp *depproxyv1.DependencyProxy, defaultImage, namespace string) *appsv1.DaemonSet {
	nm := dp.Spec.NodeMirror
	scheme := "http"
	if dp.Spec.TLS != nil {
		scheme = "https"
	}
	dialTimeout := time.Second
	if nm.DialTimeout != nil {
		dialTimeout = nm.DialTimeout.Duration
	}
	args := []string{"node", "--endpoint", fmt.Sprintf("%s://$(NODE_IP):%d", scheme, ptr.Deref(dp.Spec.NodePort, 0)),
		"--dir", nm.ConfigPath, "--format", string(nm.Format), "--dial-timeout", dialTimeout.String(),
		"--listen", fmt.Sprintf(":%d", nodeAgentPort)}
	for _, r := range nodeRegistries(dp) {
		args = append(args, "--registry", r.Registry)
		if r.Value != "" {
			args = append(args, "--server", r.Registry+"="+r.Value)
		}
	}
	labels := nodeAgentLabels(dp)
	return &appsv1.DaemonSet{
		ObjectMeta: objectMeta(nodeAgentName(dp), namespace, labels),
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector:                  nm.NodeSelector,
					Tolerations:                   nm.Tolerations,
					AutomountServiceAccountToken:  ptr.To(false),
					TerminationGracePeriodSeconds: ptr.To[int64](30),
					SecurityContext:               &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
						Path: nm.ConfigPath, Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}}},
					Containers: []corev1.Container{{
						Name:  "node",
						Image: proxyImage(dp, defaultImage),
						Args:  args,
						Env: []corev1.EnvVar{{Name: "NODE_IP", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}}},
						Ports: []corev1.ContainerPort{{Name: "ready", ContainerPort: nodeAgentPort}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/readyz", Port: intstr.FromString("ready")}}, PeriodSeconds: 2},
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU: resource.MustParse("5m"), corev1.ResourceMemory: resource.MustParse("16Mi")}},
						// Root, to write the node's root-owned directory;
						// nothing more.
						SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](0), RunAsNonRoot: ptr.To(false),
							AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
						VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: nm.ConfigPath}},
					}},
				},
			},
		},
	}
}

// checkNodeClaims refuses node configuration for a registry that an older
// resource's nodeMirror already writes: two caches cannot both be a
// node's mirror of one registry.
func (r *DependencyProxyReconciler) checkNodeClaims(ctx context.Context, dp *depproxyv1.DependencyProxy) error {
	all := &depproxyv1.DependencyProxyList{}
	if err := r.List(ctx, all); err != nil {
		return err
	}
	mine := nodeRegistries(dp)
	for i := range all.Items {
		other := &all.Items[i]
		if other.UID == dp.UID || other.Spec.NodeMirror == nil || !other.DeletionTimestamp.IsZero() || !older(other, dp) {
			continue
		}
		for _, theirs := range nodeRegistries(other) {
			for _, m := range mine {
				if m.Registry == theirs.Registry {
					return waiting(depproxyv1.ReasonNodeMirrorConflict,
						"the nodes' configuration for %s is written by DependencyProxy %s/%s, created earlier: leave %s out of spec.nodeMirror.registries",
						m.Registry, other.Namespace, other.Name, m.Registry)
				}
			}
		}
	}
	return nil
}

// applyNodeMirror runs the node agents for spec.nodeMirror, or stops them
// without it; it reports how many nodes are configured.
func (r *DependencyProxyReconciler) applyNodeMirror(ctx context.Context, dp *depproxyv1.DependencyProxy) error {
	if dp.Spec.NodeMirror == nil {
		dp.Status.NodeMirror = nil
		return r.removeNodeMirror(ctx, dp)
	}
	if err := r.checkNodeClaims(ctx, dp); err != nil {
		return err
	}
	if controllerutil.AddFinalizer(dp, nodeMirrorFinalizer) {
		if err := r.Update(ctx, dp); err != nil {
			return err
		}
	}
	if err := r.ensureNodeNamespace(ctx); err != nil {
		return err
	}
	ds := desiredNodeAgent(dp, r.ProxyImage, r.nodeNamespace())
	a := applier{client: r.Client, scheme: r.Scheme}
	op, err := a.apply(ctx, dp, child{obj: ds, elsewhere: true, update: func(e, d client.Object) {
		e.(*appsv1.DaemonSet).Spec = d.(*appsv1.DaemonSet).Spec
	}})
	if err != nil {
		return err
	}
	r.recordChange(dp, ds, op)
	got := &appsv1.DaemonSet{}
	if err := r.Get(ctx, client.ObjectKeyFromObject(ds), got); err != nil {
		return err
	}
	st := &depproxyv1.NodeMirrorStatus{Configured: got.Status.NumberReady, Nodes: got.Status.DesiredNumberScheduled,
		HostsToml: nodeFilePreview(dp)}
	st.Summary = fmt.Sprintf("%d/%d", st.Configured, st.Nodes)
	dp.Status.NodeMirror = st
	return nil
}

// nodeFilePreview is the file the agents write for the first registry,
// with "<node>" for each node's own address.
func nodeFilePreview(dp *depproxyv1.DependencyProxy) string {
	regs := nodeRegistries(dp)
	if len(regs) == 0 {
		return ""
	}
	const placeholder = "node.invalid"
	scheme := "http"
	if dp.Spec.TLS != nil {
		scheme = "https"
	}
	o := wire.NodeOptions{Endpoint: fmt.Sprintf("%s://%s:%d", scheme, placeholder, ptr.Deref(dp.Spec.NodePort, 0)), DialTimeout: time.Second}
	if d := dp.Spec.NodeMirror.DialTimeout; d != nil {
		o.DialTimeout = d.Duration
	}
	_, content, err := wire.RenderNodeFile(wire.NodeFormat(dp.Spec.NodeMirror.Format), "", wire.NodeMirror{Registry: regs[0].Registry, Server: regs[0].Value}, o)
	if err != nil {
		return ""
	}
	return strings.ReplaceAll(string(content), placeholder, "<node>")
}

// removeNodeMirror stops the node agents, which take their files out as
// they stop, and lets the resource go once none runs.
func (r *DependencyProxyReconciler) removeNodeMirror(ctx context.Context, dp *depproxyv1.DependencyProxy) error {
	if !controllerutil.ContainsFinalizer(dp, nodeMirrorFinalizer) {
		return nil
	}
	ds := &appsv1.DaemonSet{}
	getErr := r.Get(ctx, client.ObjectKey{Namespace: r.nodeNamespace(), Name: nodeAgentName(dp)}, ds)
	switch {
	case getErr == nil && ds.DeletionTimestamp.IsZero():
		if err := r.Delete(ctx, ds, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
			return err
		}
	case getErr != nil && !apierrors.IsNotFound(getErr):
		return getErr
	}
	pods := &corev1.PodList{}
	if err := r.List(ctx, pods, client.InNamespace(r.nodeNamespace()), client.MatchingLabels(nodeAgentLabels(dp))); err != nil {
		return err
	}
	if len(pods.Items) > 0 || getErr == nil {
		e := waiting(depproxyv1.ReasonNodesUnconfiguring, "taking the nodes' configuration out: %d node agents still stopping", len(pods.Items))
		e.after = 2 * time.Second
		return e
	}
	controllerutil.RemoveFinalizer(dp, nodeMirrorFinalizer)
	return r.Update(ctx, dp)
}

// ensureNodeNamespace makes the node agents' namespace where it is
// missing, admitting the hostPath volume they need; an existing one is
// left as the cluster admin has it.
func (r *DependencyProxyReconciler) ensureNodeNamespace(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.nodeNamespace(), Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "privileged", managedByLabel: managedBy}}}
	if err := r.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s for the node agents: %w", ns.Name, err)
	}
	return nil
}

func (r *DependencyProxyReconciler) nodeNamespace() string {
	if r.NodeNamespace != "" {
		return r.NodeNamespace
	}
	return DefaultNodeNamespace
}

// nodeAgentOwner maps a node agent DaemonSet to its resource.
func nodeAgentOwner(o client.Object) (client.ObjectKey, bool) {
	l := o.GetLabels()
	ns, name := l[ownerNamespaceLabel], l[ownerNameLabel]
	return client.ObjectKey{Namespace: ns, Name: name}, ns != "" && name != "" && strings.HasSuffix(o.GetName(), "-node")
}
