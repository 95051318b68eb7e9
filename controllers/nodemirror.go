package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/nodeconfig"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/settings"
)

// The node agents' pure parts: what a NodeMirror's children are, from the
// NodeMirror, the cache it names and the registries it holds.

const (
	// nodeMirrorFinalizer holds a NodeMirror until every node's files
	// are removed, what was there restored, and its claims released.
	nodeMirrorFinalizer = "depproxy.dev/node-mirror"
	// DefaultNodeNamespace runs the node agents: it must admit hostPath
	// volumes (the privileged Pod Security Standard), which a tenant's
	// namespace should not.
	DefaultNodeNamespace = "depproxy-nodes"
	nodeAgentPort        = 9092
	// nodeMirrorLabel names the NodeMirror an object belongs to, and
	// nodeMirrorUIDLabel which one of that name: a NodeMirror deleted
	// and made again never acts on its predecessor's objects.
	nodeMirrorLabel    = "depproxy.dev/nodemirror"
	nodeMirrorUIDLabel = "depproxy.dev/nodemirror-uid"
	// claimLabel marks the ConfigMaps that record which NodeMirror
	// configures a registry on the nodes.
	claimLabel = "depproxy.dev/registry-claim"
	// registriesAnnotation, on an agent pod, lists the registries whose
	// files it writes: a registry leaves a NodeMirror only once no pod
	// of it still might write or remove them.
	registriesAnnotation = "depproxy.dev/registries"
)

// nodeMirrorName names a NodeMirror's children: its node agent
// DaemonSet, and its NodePort Service in the cache's namespace.
// NodeMirror names are unique in the cluster, so these are too.
func nodeMirrorName(nm *depproxyv1.NodeMirror) string { return "nodemirror-" + nm.Name }

func nodeAgentLabels(nm *depproxyv1.NodeMirror) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name": "depproxy-node",
		nodeMirrorLabel:          nm.Name,
		nodeMirrorUIDLabel:       string(nm.UID),
		managedByLabel:           managedBy,
	}
}

// servingUpstream is the index of the upstream of dp that serves
// registry, by the routing rule of the settings the operator renders for
// the proxy (its name, its URL's host, its mirrorOf, Docker Hub's
// aliases); false when none does, or a Helm repository does.
func servingUpstream(dp *depproxyv1.DependencyProxy, registry string) (int, bool) {
	conf := proxySettings(dp)
	routes, err := conf.Routes()
	if err != nil {
		return 0, false
	}
	i, ok := routes.Serving(registry)
	// A Helm repository is no registry a node could fall back to.
	return i, ok && upstreams(dp)[i].Kind != depproxyv1.UpstreamKindHelm
}

// servedRegistry is registry, when dp serves it, with where a node falls
// back to without the cache: the upstream's own URL for its own name,
// the registry's default otherwise (what it stands in for).
func servedRegistry(dp *depproxyv1.DependencyProxy, registry string) (settings.Keyed, bool) {
	i, ok := servingUpstream(dp, registry)
	if !ok {
		return settings.Keyed{}, false
	}
	k := settings.Keyed{Registry: registry}
	u := upstreams(dp)[i]
	if reg := u.Registry; reg == registry || (reg == "" && registryname.Of(u.URL) == registry) {
		k.Value = u.URL
	}
	return k, true
}

// privateUpstream says how the upstream serving registry (its own or
// through mirrorOf) pulls with credentials: "" when it pulls anonymously.
func privateUpstream(dp *depproxyv1.DependencyProxy, registry string) string {
	i, ok := servingUpstream(dp, registry)
	if !ok {
		return ""
	}
	u := upstreams(dp)[i]
	field := "spec.upstream"
	if len(dp.Spec.Upstreams) > 0 {
		field = fmt.Sprintf("spec.upstreams[%d]", i)
	}
	switch {
	case secretName(u.CredentialsSecretRef) != "":
		return field + ".credentialsSecretRef"
	case u.CredentialProvider != nil:
		return field + ".credentialProvider"
	}
	return ""
}

// nodeEndpoint is the cache as a node reaches it, with host for the
// node's address.
func nodeEndpoint(nm *depproxyv1.NodeMirror, dp *depproxyv1.DependencyProxy, host string) string {
	scheme := "http"
	if dp.Spec.TLS != nil {
		scheme = "https"
	}
	return fmt.Sprintf("%s://%s:%d", scheme, host, nm.Spec.NodePort)
}

func dialTimeout(nm *depproxyv1.NodeMirror) time.Duration {
	if d := nm.Spec.DialTimeout; d != nil {
		return d.Duration
	}
	return time.Second
}

func nodeFormat(nm *depproxyv1.NodeMirror) nodeconfig.NodeFormat {
	if nm.Spec.Runtime == depproxyv1.RuntimeCRIO {
		return nodeconfig.ContainersConf
	}
	return nodeconfig.ContainerdHosts
}

// desiredNodePortService serves the cache's pods on the NodeMirror's
// port of every node. It lives in the cache's namespace (a Service
// selects pods of its own) and belongs to the NodeMirror.
func desiredNodePortService(nm *depproxyv1.NodeMirror, dp *depproxyv1.DependencyProxy) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: objectMeta(nodeMirrorName(nm), dp.Namespace, nodeAgentLabels(nm)),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: proxyLabels(dp),
			Ports: []corev1.ServicePort{{Name: "http", Port: ProxyPort, TargetPort: intstr.FromString("http"),
				Protocol: corev1.ProtocolTCP, NodePort: nm.Spec.NodePort}},
		},
	}
}

// desiredNodeAgent runs `depproxy node` on every selected node, for the
// registries the NodeMirror holds: it writes the node's files once the
// cache answers at the node's address and the node port, and removes
// them when it stops. Its image is the operator's own, and it mounts the
// runtime's directory (and the stargz snapshotter's, when asked) and
// nothing else.
func desiredNodeAgent(nm *depproxyv1.NodeMirror, dp *depproxyv1.DependencyProxy, held []settings.Keyed, image, namespace string) *appsv1.DaemonSet {
	dir := nm.Spec.ConfigDir()
	args := []string{"node", "--endpoint", nodeEndpoint(nm, dp, "$(NODE_IP)"),
		"--dir", dir, "--format", string(nodeFormat(nm)), "--dial-timeout", dialTimeout(nm).String(),
		"--listen", fmt.Sprintf(":%d", nodeAgentPort)}
	names := make([]string, 0, len(held))
	for _, r := range held {
		names = append(names, r.Registry)
		args = append(args, "--registry", r.Registry)
		if r.Value != "" {
			args = append(args, "--server", r.Registry+"="+r.Value)
		}
	}
	volumes := []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
		Path: dir, Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}}}
	mounts := []corev1.VolumeMount{{Name: "config", MountPath: dir}}
	if cfg := nm.Spec.StargzConfigPath(); cfg != "" {
		// The snapshotter's directory, which its installation made.
		args = append(args, "--stargz-config", cfg)
		volumes = append(volumes, corev1.Volume{Name: "stargz", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: path.Dir(cfg), Type: ptr.To(corev1.HostPathDirectory)}}})
		mounts = append(mounts, corev1.VolumeMount{Name: "stargz", MountPath: path.Dir(cfg)})
	}
	labels := nodeAgentLabels(nm)
	return &appsv1.DaemonSet{
		ObjectMeta: objectMeta(nodeMirrorName(nm), namespace, labels),
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{registriesAnnotation: strings.Join(names, ",")}},
				Spec: corev1.PodSpec{
					NodeSelector:                  nm.Spec.NodeSelector,
					Tolerations:                   nm.Spec.Tolerations,
					AutomountServiceAccountToken:  ptr.To(false),
					EnableServiceLinks:            ptr.To(false),
					TerminationGracePeriodSeconds: ptr.To[int64](30),
					SecurityContext:               &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
					Volumes:                       volumes,
					Containers: []corev1.Container{{
						Name:  "node",
						Image: image,
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
						VolumeMounts: mounts,
					}},
				},
			},
		},
	}
}

// nodeFilePreview is the file the agents write for registry, with
// "<node>" for each node's own address.
// local: the agents are their nodes' mirrors (spec.share), named first.
func nodeFilePreview(nm *depproxyv1.NodeMirror, dp *depproxyv1.DependencyProxy, registry settings.Keyed, local bool) string {
	const placeholder = "node.invalid"
	o := nodeconfig.NodeOptions{Endpoint: nodeEndpoint(nm, dp, placeholder), DialTimeout: dialTimeout(nm)}
	if local {
		o.Local = fmt.Sprintf("http://127.0.0.1:%d", localMirrorPort)
	}
	_, content, err := nodeconfig.RenderNodeFile(nodeFormat(nm), "", nodeconfig.NodeMirror{Registry: registry.Registry, Server: registry.Value}, o)
	if err != nil {
		return ""
	}
	return strings.ReplaceAll(string(content), placeholder, "<node>")
}

// claimName names the ConfigMap recording who configures registry on
// the nodes: one per registry, so that creating it is the claim, and two
// NodeMirrors can never both hold one.
func claimName(registry string) string {
	sum := sha256.Sum256([]byte(registry))
	return "registry-" + hex.EncodeToString(sum[:])[:20]
}

const (
	claimRegistryKey = "registry"
	claimHolderKey   = "nodeMirror"
	claimUIDKey      = "uid"
)

// desiredClaim records that nm configures registry on the nodes.
func desiredClaim(nm *depproxyv1.NodeMirror, registry, namespace string) *corev1.ConfigMap {
	labels := map[string]string{claimLabel: "true", nodeMirrorLabel: nm.Name, nodeMirrorUIDLabel: string(nm.UID), managedByLabel: managedBy}
	return &corev1.ConfigMap{
		ObjectMeta: objectMeta(claimName(registry), namespace, labels),
		Data:       map[string]string{claimRegistryKey: registry, claimHolderKey: nm.Name, claimUIDKey: string(nm.UID)},
	}
}

// nodePortServiceChild applies the NodePort Service's type, selector and
// ports (the API server fills in their defaults, so they are not
// compared).
func nodePortServiceChild(svc *corev1.Service) child {
	return child{obj: svc, update: func(e, d client.Object) {
		es, ds := e.(*corev1.Service), d.(*corev1.Service)
		es.Spec.Type, es.Spec.Selector, es.Spec.Ports = ds.Spec.Type, ds.Spec.Selector, ds.Spec.Ports
	}}
}

// daemonSetChild applies the node agents' DaemonSet's spec.
func daemonSetChild(ds *appsv1.DaemonSet) child {
	return child{obj: ds, update: func(e, d client.Object) { e.(*appsv1.DaemonSet).Spec = d.(*appsv1.DaemonSet).Spec }}
}
