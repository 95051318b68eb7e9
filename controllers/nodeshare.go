package controllers

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/settings"
)

// Nodes that share (spec.share), the pure parts: each agent becomes its
// node's own mirror on the node's loopback, keeps what the node pulled in
// a store on the node, and serves it to the peers of its zone that the
// cache sends with a ticket. The agents and the cache share a key.

const (
	// storeMountPath is where an agent sees the node's store directory.
	storeMountPath = "/var/lib/depproxy-store"
	// localMirrorPort is the agent's own mirror, on the node's loopback,
	// which the node's files name first.
	localMirrorPort = 5050
	// nodeKeyDir and nodeKeyFile are where the agents and the cache read
	// the nodes' key.
	nodeKeyDir  = "/etc/depproxy/node-key"
	nodeKeyFile = "key"
	// nodeKeySize is the key's length: random bytes, far over the 16
	// the agents and the cache ask for.
	nodeKeySize = 32
	// zoneLabel, on an agent pod, is the zone its DaemonSet runs in: one
	// DaemonSet per zone, since a pod cannot read its Node's labels.
	zoneLabel = "depproxy.dev/zone"
)

// sharing: nm's agents share (spec.share), and the cache is told their
// key. Of the NodeMirrors naming one cache, one shares: the first by
// name (sharer), as the cache takes a single key.
func sharing(nm *depproxyv1.NodeMirror) bool {
	return nm.Spec.Share != nil && nm.DeletionTimestamp.IsZero()
}

// sharer is the NodeMirror of mirrors whose agents share through dp,
// the first by name of those asking to; nil when none does.
func sharer(dp *depproxyv1.DependencyProxy, mirrors []depproxyv1.NodeMirror) *depproxyv1.NodeMirror {
	var first *depproxyv1.NodeMirror
	for i := range mirrors {
		nm := &mirrors[i]
		if !sharing(nm) || nm.Spec.Cache.Namespace != dp.Namespace || nm.Spec.Cache.Name != dp.Name {
			continue
		}
		if first == nil || nm.Name < first.Name {
			first = nm
		}
	}
	return first
}

// nodeKeyName names the nodes' key Secret of nm: in the node namespace
// (the original, made once by the operator) and in the cache's (its copy,
// which the cache's pods mount).
func nodeKeyName(nm string) string { return "nodemirror-" + nm + "-node-key" }

// desiredNodeKey is a new random key for nm's nodes, in namespace.
func desiredNodeKey(nm *depproxyv1.NodeMirror, namespace string) (*corev1.Secret, error) {
	key := make([]byte, nodeKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("making the nodes' key: %w", err)
	}
	return &corev1.Secret{
		ObjectMeta: objectMeta(nodeKeyName(nm.Name), namespace, nodeKeyLabels(nm)),
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{nodeKeyFile: key},
	}, nil
}

// desiredNodeKeyCopy is the key, copied into the cache's namespace.
func desiredNodeKeyCopy(nm *depproxyv1.NodeMirror, dp *depproxyv1.DependencyProxy, key []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: objectMeta(nodeKeyName(nm.Name), dp.Namespace, nodeKeyLabels(nm)),
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{nodeKeyFile: key},
	}
}

func nodeKeyLabels(nm *depproxyv1.NodeMirror) map[string]string {
	return map[string]string{nodeMirrorLabel: nm.Name, nodeMirrorUIDLabel: string(nm.UID), managedByLabel: managedBy}
}

// validNodeKey: a key Secret holds a key the agents and the cache accept.
func validNodeKey(s *corev1.Secret) bool { return len(s.Data[nodeKeyFile]) >= 16 }

// secretChild applies a Secret's data.
func secretChild(s *corev1.Secret) child {
	return child{obj: s, update: func(e, d client.Object) { e.(*corev1.Secret).Data = d.(*corev1.Secret).Data },
		same: func(e, d client.Object) bool {
			return equality.Semantic.DeepEqual(e.(*corev1.Secret).Data, d.(*corev1.Secret).Data)
		}}
}

// selectedZones are the zones (topology.kubernetes.io/zone) of the
// nodes nm selects, sorted, each once; nodes without one are the base
// DaemonSet's.
func selectedZones(nm *depproxyv1.NodeMirror, nodes []corev1.Node) []string {
	sel := labels.SelectorFromSet(nm.Spec.NodeSelector)
	var zones []string
	for _, n := range nodes {
		z := n.Labels[corev1.LabelTopologyZone]
		if z == "" || !sel.Matches(labels.Set(n.Labels)) || slices.Contains(zones, z) {
			continue
		}
		zones = append(zones, z)
	}
	sort.Strings(zones)
	return zones
}

// zoneAgentName names the agents' DaemonSet of one zone: the NodeMirror's
// name and a hash of both (a zone's name may not fit in an object's name).
func zoneAgentName(nm *depproxyv1.NodeMirror, zone string) string {
	sum := sha256.Sum256([]byte(nm.Name + "\x00" + zone))
	base := nodeMirrorName(nm)
	if max := 63 - 9; len(base) > max {
		base = base[:max]
	}
	return base + "-" + hex.EncodeToString(sum[:])[:8]
}

// desiredNodeAgents are nm's agents' DaemonSets. Without spec.share, the
// one of desiredNodeAgent. With it, that one runs on the selected nodes
// without a zone, and one more per zone in zones on that zone's nodes,
// each told its zone.
func desiredNodeAgents(nm *depproxyv1.NodeMirror, dp *depproxyv1.DependencyProxy, held []settings.Keyed, image, namespace string, zones []string) []*appsv1.DaemonSet {
	base := desiredNodeAgent(nm, dp, held, image, namespace)
	if !sharing(nm) {
		return []*appsv1.DaemonSet{base}
	}
	out := []*appsv1.DaemonSet{shareAgent(base.DeepCopy(), nm, "")}
	for _, z := range zones {
		ds := base.DeepCopy()
		ds.Name = zoneAgentName(nm, z)
		for _, l := range []map[string]string{ds.Labels, ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels} {
			l[zoneLabel] = z
		}
		out = append(out, shareAgent(ds, nm, z))
	}
	return out
}

// shareAgent makes ds's agents their nodes' mirrors, on the nodes of
// zone ("": those without one): on the host network (the runtime reaches
// them on its loopback, peers at the node's address), with the store's
// hostPath (spec.share.store.path, nothing else) and the nodes' key.
func shareAgent(ds *appsv1.DaemonSet, nm *depproxyv1.NodeMirror, zone string) *appsv1.DaemonSet {
	sh := nm.Spec.Share
	pod := &ds.Spec.Template.Spec
	pod.HostNetwork = true
	pod.DNSPolicy = corev1.DNSClusterFirstWithHostNet
	term := corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{
		Key: corev1.LabelTopologyZone, Operator: corev1.NodeSelectorOpIn, Values: []string{zone}}}}
	terms := []corev1.NodeSelectorTerm{term}
	if zone == "" {
		terms = append(terms, corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{
			Key: corev1.LabelTopologyZone, Operator: corev1.NodeSelectorOpDoesNotExist}}})
	}
	pod.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms}}}
	pod.Volumes = append(pod.Volumes,
		corev1.Volume{Name: "store", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: sh.Store.Path, Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}},
		corev1.Volume{Name: "node-key", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: nodeKeyName(nm.Name), DefaultMode: ptr.To[int32](0o400)}}})
	c := &pod.Containers[0]
	c.VolumeMounts = append(c.VolumeMounts,
		corev1.VolumeMount{Name: "store", MountPath: storeMountPath},
		corev1.VolumeMount{Name: "node-key", MountPath: nodeKeyDir, ReadOnly: true})
	c.Args = append(c.Args, "--store", storeMountPath, "--store-size", fmt.Sprint(sh.Store.Size.Value()),
		"--local-listen", fmt.Sprintf("127.0.0.1:%d", localMirrorPort),
		"--share-listen", fmt.Sprintf(":%d", sh.PeerPort), "--advertise", fmt.Sprintf("http://$(NODE_IP):%d", sh.PeerPort),
		"--node-name", "$(NODE_NAME)", "--node-key", nodeKeyDir+"/"+nodeKeyFile)
	if zone != "" {
		c.Args = append(c.Args, "--zone", zone)
	}
	c.Env = append(c.Env, corev1.EnvVar{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}})
	// On the host network these are the node's ports: declared, so that
	// the scheduler never puts two agents wanting one on a node.
	c.Ports = append(c.Ports, corev1.ContainerPort{Name: "peer", ContainerPort: sh.PeerPort},
		corev1.ContainerPort{Name: "local", ContainerPort: localMirrorPort})
	return ds
}

// nodeKeyHashKey, on the agents' pod template, rolls them onto a new key
// (they read it when they start).
const nodeKeyHashKey = "depproxy.dev/node-key-hash"

// withNodeKeyHash rolls the agents when the key changes.
func withNodeKeyHash(dss []*appsv1.DaemonSet, key *corev1.Secret) {
	if key == nil {
		return
	}
	for _, ds := range dss {
		ds.Spec.Template.Annotations[nodeKeyHashKey] = secretsHash(key)
	}
}

// usableNodeKey is the copy of the nodes' key in dp's namespace that
// dp's pods may read: made by the NodeMirror that shares through dp (by
// its controller reference, so a Secret of that name made by anyone else
// is never taken for it), holding a key. Nil when there is none.
func usableNodeKey(s *corev1.Secret, nm *depproxyv1.NodeMirror) *corev1.Secret {
	if s == nil || nm == nil || !metav1.IsControlledBy(s, nm) || !validNodeKey(s) {
		return nil
	}
	return s
}

// withNodeKey tells the cache the nodes' key (settings node-key): it
// records which node holds what from the agents' signed requests and
// sends them to each other. cm is the proxy's ConfigMap.
func withNodeKey(cm *corev1.ConfigMap) (*corev1.ConfigMap, error) {
	conf, err := settings.Parse([]byte(cm.Data[configKey]))
	if err != nil {
		return nil, err
	}
	conf.NodeKey = nodeKeyDir + "/" + nodeKeyFile
	raw, err := conf.Marshal()
	if err != nil {
		return nil, err
	}
	cm.Data[configKey] = string(raw)
	return cm, nil
}

// mountNodeKey mounts the key's copy (secret) into the cache's pods,
// where withNodeKey's setting names it.
func mountNodeKey(d *appsv1.Deployment, secret string) {
	pod := &d.Spec.Template.Spec
	pod.Volumes = append(pod.Volumes, corev1.Volume{Name: "node-key", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
		SecretName: secret, DefaultMode: ptr.To[int32](0o440)}}})
	c := &pod.Containers[0]
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "node-key", MountPath: nodeKeyDir, ReadOnly: true})
}
