package controllers

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/settings"
)

func sharingMirror(dp *depproxyv1.DependencyProxy) *depproxyv1.NodeMirror {
	return &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: "fleet", UID: "u1"}, Spec: depproxyv1.NodeMirrorSpec{
		Cache: depproxyv1.CacheReference{Namespace: dp.Namespace, Name: dp.Name}, Registries: []string{"docker.io"},
		NodePort: 30500, NodeSelector: map[string]string{"pool": "web"},
		Share: &depproxyv1.NodeShare{Store: depproxyv1.NodeStore{Path: "/var/lib/depproxy", Size: resource.MustParse("50Gi")}, PeerPort: 5051}}}
}

func envFrom(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath
		}
	}
	return ""
}

// With spec.share the agents are their nodes' mirrors: on the host
// network, with the store's hostPath (the admin's path, nothing else of
// the node but the runtime's directory), both listeners, the node's name
// and address from the downward API, the key's Secret, and one DaemonSet
// per zone (a pod cannot read its Node's labels), told its zone. Nothing
// of it comes from the cache's spec, which a tenant may edit.
func TestNodeShareAgents(t *testing.T) {
	dp := testProxy()
	dp.Spec.Image = "attacker.example/rootkit:1"
	nm := sharingMirror(dp)
	held := []settings.Keyed{{Registry: "docker.io"}}
	dss := desiredNodeAgents(nm, dp, held, "operator.example/depproxy:v1", "nodes", []string{"eu-1a", "eu-1b"})
	if len(dss) != 3 {
		t.Fatalf("%d DaemonSets, want the unzoned one and one per zone", len(dss))
	}
	names := map[string]bool{}
	for i, ds := range dss {
		zone := []string{"", "eu-1a", "eu-1b"}[i]
		names[ds.Name] = true
		pod := ds.Spec.Template.Spec
		c := pod.Containers[0]
		args := strings.Join(c.Args, " ")
		for _, want := range []string{"--store /var/lib/depproxy-store", "--store-size 53687091200", "--local-listen 127.0.0.1:5050",
			"--share-listen :5051", "--advertise http://$(NODE_IP):5051", "--node-name $(NODE_NAME)", "--node-key /etc/depproxy/node-key/key",
			"--endpoint http://$(NODE_IP):30500"} {
			if !strings.Contains(args, want) {
				t.Errorf("%s: args %q lack %q", ds.Name, args, want)
			}
		}
		if hasZone := strings.Contains(args, "--zone "+zone); zone != "" && !hasZone || zone == "" && strings.Contains(args, "--zone") {
			t.Errorf("%s (zone %q): args %q", ds.Name, zone, args)
		}
		if envFrom(c, "NODE_NAME") != "spec.nodeName" || envFrom(c, "NODE_IP") != "status.hostIP" {
			t.Errorf("%s: env %+v", ds.Name, c.Env)
		}
		if !pod.HostNetwork || c.Image != "operator.example/depproxy:v1" || pod.NodeSelector["pool"] != "web" {
			t.Errorf("%s: hostNetwork %v image %s selector %v", ds.Name, pod.HostNetwork, c.Image, pod.NodeSelector)
		}
		var hostPaths []string
		var secrets []string
		for _, v := range pod.Volumes {
			switch {
			case v.HostPath != nil:
				hostPaths = append(hostPaths, v.HostPath.Path)
				if v.Name == "store" && *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
					t.Errorf("%s: store type %v", ds.Name, *v.HostPath.Type)
				}
			case v.Secret != nil:
				secrets = append(secrets, v.Secret.SecretName)
			}
		}
		if !slices.Equal(hostPaths, []string{"/etc/containerd/certs.d", "/var/lib/depproxy"}) || !slices.Equal(secrets, []string{"nodemirror-fleet-node-key"}) {
			t.Errorf("%s: hostPaths %v secrets %v", ds.Name, hostPaths, secrets)
		}
		terms := pod.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		first := terms[0].MatchExpressions[0]
		if first.Key != corev1.LabelTopologyZone || first.Operator != corev1.NodeSelectorOpIn || !slices.Equal(first.Values, []string{zone}) ||
			(zone == "") != (len(terms) == 2) {
			t.Errorf("%s: affinity %+v", ds.Name, terms)
		}
		if zone != "" && (ds.Spec.Selector.MatchLabels[zoneLabel] != zone || ds.Spec.Template.Labels[zoneLabel] != zone) {
			t.Errorf("%s: selector %v", ds.Name, ds.Spec.Selector.MatchLabels)
		}
		if len(ds.Name) > 63 {
			t.Errorf("name %s is too long", ds.Name)
		}
	}
	if !names["nodemirror-fleet"] || len(names) != 3 {
		t.Errorf("names %v", names)
	}

	// Without spec.share: the one DaemonSet, as before.
	nm.Spec.Share = nil
	dss = desiredNodeAgents(nm, dp, held, "operator.example/depproxy:v1", "nodes", []string{"eu-1a"})
	pod := dss[0].Spec.Template.Spec
	if args := strings.Join(pod.Containers[0].Args, " "); len(dss) != 1 || pod.HostNetwork || pod.Affinity != nil || len(pod.Volumes) != 1 ||
		strings.Contains(args, "--store") || strings.Contains(args, "--node-key") || strings.Contains(args, "--share-listen") {
		t.Errorf("without spec.share: %d DaemonSets, args %q, volumes %+v", len(dss), args, pod.Volumes)
	}

	// A long name still names every zone's DaemonSet apart, within 63.
	nm.Name = strings.Repeat("n", 52)
	a, b := zoneAgentName(nm, "eu-1a"), zoneAgentName(nm, "eu-1b")
	if a == b || len(a) > 63 {
		t.Errorf("zone names %s %s", a, b)
	}
}

// The zones are those of the nodes the NodeMirror selects, each once.
func TestNodeShareZones(t *testing.T) {
	node := func(name string, l map[string]string) corev1.Node {
		return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
	}
	nm := sharingMirror(testProxy())
	nodes := []corev1.Node{
		node("a", map[string]string{"pool": "web", corev1.LabelTopologyZone: "z2"}),
		node("b", map[string]string{"pool": "web", corev1.LabelTopologyZone: "z1"}),
		node("c", map[string]string{"pool": "web", corev1.LabelTopologyZone: "z2"}),
		node("d", map[string]string{"pool": "db", corev1.LabelTopologyZone: "z3"}),
		node("e", map[string]string{"pool": "web"}),
	}
	if got := selectedZones(nm, nodes); !slices.Equal(got, []string{"z1", "z2"}) {
		t.Errorf("zones %v", got)
	}
}

// The cache takes the key of the one NodeMirror sharing through it (the
// first by name), only from a Secret that NodeMirror made, and its
// config and pods name it.
func TestNodeShareCacheKey(t *testing.T) {
	dp := testProxy()
	a, b, other := sharingMirror(dp), sharingMirror(dp), sharingMirror(dp)
	a.Name, b.Name, other.Name, other.Spec.Cache.Name = "b-second", "a-first", "0-other", "elsewhere"
	off := sharingMirror(dp)
	off.Name, off.Spec.Share = "0-off", nil
	if s := sharer(dp, []depproxyv1.NodeMirror{*a, *b, *other, *off}); s == nil || s.Name != "a-first" {
		t.Errorf("sharer %v", s)
	}
	if s := sharer(dp, []depproxyv1.NodeMirror{*other, *off}); s != nil {
		t.Errorf("sharer %s, want none", s.Name)
	}

	key := desiredNodeKeyCopy(b, dp, []byte(strings.Repeat("k", 32)))
	if usableNodeKey(key, b) != nil {
		t.Error("a Secret without the NodeMirror's controller reference was taken for its key")
	}
	key.OwnerReferences = []metav1.OwnerReference{{APIVersion: depproxyv1.GroupVersion.String(), Kind: "NodeMirror", Name: b.Name, UID: b.UID, Controller: ptr.To(true)}}
	if usableNodeKey(key, b) == nil {
		t.Error("the NodeMirror's own copy was refused")
	}
	key.Data[nodeKeyFile] = []byte("short")
	if usableNodeKey(key, b) != nil {
		t.Error("a key of 5 bytes was taken")
	}

	cm, err := desiredConfigMap(dp, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := configHash(cm)
	if cm, err = withNodeKey(cm); err != nil {
		t.Fatal(err)
	}
	conf, err := settings.Parse([]byte(cm.Data[configKey]))
	if err != nil || conf.NodeKey != "/etc/depproxy/node-key/key" || configHash(cm) == before {
		t.Errorf("config %q: %v", cm.Data[configKey], err)
	}
	d := desiredDeployment(dp, "img", "", "h", "s")
	mountNodeKey(d, key.Name)
	pod := d.Spec.Template.Spec
	v, m := pod.Volumes[len(pod.Volumes)-1], pod.Containers[0].VolumeMounts[len(pod.Containers[0].VolumeMounts)-1]
	if v.Secret == nil || v.Secret.SecretName != "nodemirror-a-first-node-key" || m.MountPath != nodeKeyDir || !m.ReadOnly || m.Name != v.Name {
		t.Errorf("volume %+v mount %+v", v, m)
	}
	// A new key rolls the agents.
	dss := []*appsv1.DaemonSet{desiredNodeAgent(b, dp, []settings.Keyed{{Registry: "docker.io"}}, "i", "nodes")}
	withNodeKeyHash(dss, key)
	h := dss[0].Spec.Template.Annotations[nodeKeyHashKey]
	key.Data[nodeKeyFile] = []byte(strings.Repeat("x", 32))
	withNodeKeyHash(dss, key)
	if h == "" || dss[0].Spec.Template.Annotations[nodeKeyHashKey] == h {
		t.Errorf("key hash %q, then %q", h, dss[0].Spec.Template.Annotations[nodeKeyHashKey])
	}
}

// nodeKeys are where Secrets of nm's key live, as namespace/name.
func nodeKeys(t *testing.T, nm *depproxyv1.NodeMirror) map[string][]byte {
	t.Helper()
	list := &corev1.SecretList{}
	if err := k8sClient.List(context.Background(), list, client.MatchingLabels{nodeMirrorUIDLabel: string(nm.UID)}); err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, s := range list.Items {
		out[s.Namespace+"/"+s.Name] = s.Data[nodeKeyFile]
	}
	return out
}

// agentSets are nm's agents' DaemonSets, by name.
func agentSets(t *testing.T, nm *depproxyv1.NodeMirror) map[string]appsv1.DaemonSet {
	t.Helper()
	list := &appsv1.DaemonSetList{}
	if err := k8sClient.List(context.Background(), list, client.MatchingLabels{nodeMirrorUIDLabel: string(nm.UID)}); err != nil {
		t.Fatal(err)
	}
	out := map[string]appsv1.DaemonSet{}
	for _, ds := range list.Items {
		out[ds.Name] = ds
	}
	return out
}

// A NodeMirror with spec.share: one agent DaemonSet per zone of its
// nodes and one for those without, sharing; the key made by the
// operator in the node namespace and copied into the cache's namespace,
// nowhere else; the cache mounts the copy and its config names it. A
// Secret of the copy's name that a tenant made first is neither taken
// over nor used. Without spec.share, none of it.
func TestNodeMirrorShares(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	dp := mirrorCache(t, ns, "share-cache")
	for _, n := range []struct{ name, zone string }{{"share-a1", "zone-a"}, {"share-a2", "zone-a"}, {"share-b1", "zone-b"}, {"share-none", ""}} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + n.name, Labels: map[string]string{"share-test": ns}}}
		if n.zone != "" {
			node.Labels[corev1.LabelTopologyZone] = n.zone
		}
		if err := k8sClient.Create(ctx, node); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k8sClient.Delete(context.Background(), node) })
	}
	// Elsewhere: a node the NodeMirror does not select.
	other := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ns + "-share-other", Labels: map[string]string{corev1.LabelTopologyZone: "zone-c"}}}
	if err := k8sClient.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k8sClient.Delete(context.Background(), other) })

	nm := nodeMirror(t, "sharing", dp, 30541, "docker.io")
	nm.Spec.NodeSelector = map[string]string{"share-test": ns}
	nm.Spec.Share = &depproxyv1.NodeShare{Store: depproxyv1.NodeStore{Path: "/var/lib/depproxy", Size: resource.MustParse("10Gi")}, PeerPort: 5051}
	if err := k8sClient.Update(ctx, nm); err != nil {
		t.Fatal(err)
	}
	// A tenant of the cache's namespace made a Secret of the copy's name
	// first, with a key of its choosing.
	planted := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: nodeKeyName(nm.Name), Namespace: ns},
		Data: map[string][]byte{nodeKeyFile: []byte(strings.Repeat("t", 32))}}
	if err := k8sClient.Create(ctx, planted); err != nil {
		t.Fatal(err)
	}
	r := newMirrorReconciler(t)
	reconcileMirror(t, r, nm)
	if c := meta.FindStatusCondition(nm.Status.Conditions, depproxyv1.ConditionSharing); c == nil || c.Status != metav1.ConditionFalse ||
		c.Reason != depproxyv1.ReasonNameTaken || !strings.Contains(c.Message, "not this resource's") {
		t.Errorf("a tenant's Secret in the copy's place: Sharing %+v", c)
	}
	pr, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, pr, dp)
	deploy := &appsv1.Deployment{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: proxyName(dp)}, deploy); err != nil {
		t.Fatal(err)
	}
	for _, v := range deploy.Spec.Template.Spec.Volumes {
		if v.Name == "node-key" {
			t.Fatalf("the cache mounts %s, a Secret the operator did not make", v.Secret.SecretName)
		}
	}
	if got := string(readSecret(t, ns, planted.Name)); got != strings.Repeat("t", 32) {
		t.Errorf("the tenant's Secret was changed: %q", got)
	}
	if err := k8sClient.Delete(ctx, planted); err != nil {
		t.Fatal(err)
	}

	reconcileMirror(t, r, nm)
	keys := nodeKeys(t, nm)
	orig, cp := keys[DefaultNodeNamespace+"/"+nodeKeyName(nm.Name)], keys[ns+"/"+nodeKeyName(nm.Name)]
	if len(keys) != 2 || len(orig) != nodeKeySize || string(cp) != string(orig) || string(orig) == strings.Repeat("t", 32) {
		t.Fatalf("the nodes' key: %d Secrets %v", len(keys), keys)
	}
	sets := agentSets(t, nm)
	if len(sets) != 3 {
		t.Fatalf("DaemonSets %v, want the unzoned one and zone-a's and zone-b's", slices.Collect(maps.Keys(sets)))
	}
	zones := []string{}
	for _, ds := range sets {
		pod := ds.Spec.Template.Spec
		args := strings.Join(pod.Containers[0].Args, " ")
		if !pod.HostNetwork || !strings.Contains(args, "--node-key /etc/depproxy/node-key/key") || !strings.Contains(args, "--share-listen :5051") {
			t.Errorf("%s: hostNetwork %v args %q", ds.Name, pod.HostNetwork, args)
		}
		if i := slices.Index(pod.Containers[0].Args, "--zone"); i >= 0 {
			zones = append(zones, pod.Containers[0].Args[i+1])
		}
		for _, v := range pod.Volumes {
			if v.HostPath != nil && v.HostPath.Path != "/var/lib/depproxy" && v.HostPath.Path != "/etc/containerd/certs.d" {
				t.Errorf("%s mounts the node's %s", ds.Name, v.HostPath.Path)
			}
		}
	}
	slices.Sort(zones)
	if !slices.Equal(zones, []string{"zone-a", "zone-b"}) {
		t.Errorf("zones told: %v", zones)
	}
	if c := meta.FindStatusCondition(nm.Status.Conditions, depproxyv1.ConditionSharing); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Sharing: %+v", c)
	}
	if !strings.Contains(nm.Status.HostsToml, `[host."http://127.0.0.1:5050"]`) {
		t.Errorf("status.hostsToml does not name the node's own mirror:\n%s", nm.Status.HostsToml)
	}
	// What the nodes told the cache, as the cache's status has it, is the
	// sharing NodeMirror's status.shared.
	told := &depproxyv1.SharingSummary{Nodes: 3, StoreBytes: 3 << 30, Store: "3Gi", FromPeersBytes: 5 << 30, FromCacheBytes: 1 << 30, ReportedAt: metav1.Now().Rfc3339Copy()}
	if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp); err != nil {
		t.Fatal(err)
	}
	dp.Status.Cache = &depproxyv1.CacheSummary{Sharing: told, ReportedAt: told.ReportedAt}
	if err := k8sClient.Status().Update(ctx, dp); err != nil {
		t.Fatal(err)
	}
	reconcileMirror(t, r, nm)
	if got := nm.Status.Shared; got == nil || got.Nodes != 3 || got.FromPeersBytes != 5<<30 || got.StoreBytes != 3<<30 || got.Store != "3Gi" {
		t.Errorf("status.shared %+v, want what the cache's status says, %+v", got, told)
	}

	reconcileProxy(t, pr, dp)
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: proxyName(dp)}, deploy); err != nil {
		t.Fatal(err)
	}
	if !mountsNodeKey(deploy, nodeKeyName(nm.Name)) || !strings.Contains(proxyConfig(t, dp), "node-key: /etc/depproxy/node-key/key") {
		t.Errorf("the cache has no node key: volumes %+v config %s", deploy.Spec.Template.Spec.Volumes, proxyConfig(t, dp))
	}

	// A second NodeMirror sharing through the same cache does not share.
	second := nodeMirror(t, "sharing-too", dp, 30542, "ghcr.io")
	second.Spec.NodeSelector = map[string]string{"share-test": ns + "-none"}
	second.Spec.Share = nm.Spec.Share.DeepCopy()
	if err := k8sClient.Update(ctx, second); err != nil {
		t.Fatal(err)
	}
	reconcileMirror(t, r, second)
	if c := meta.FindStatusCondition(second.Status.Conditions, depproxyv1.ConditionSharing); c == nil || c.Status != metav1.ConditionFalse ||
		c.Reason != depproxyv1.ReasonShareConflict || len(nodeKeys(t, second)) != 0 || len(agentSets(t, second)) != 1 {
		t.Errorf("a second sharer: %+v, keys %v", c, nodeKeys(t, second))
	}
	if second.Status.Shared != nil {
		t.Errorf("a NodeMirror whose nodes do not share shows %+v", second.Status.Shared)
	}

	// Without spec.share: one DaemonSet, no key anywhere, nothing in the cache.
	nm.Spec.Share = nil
	if err := k8sClient.Update(ctx, nm); err != nil {
		t.Fatal(err)
	}
	reconcileMirror(t, r, nm)
	if keys := nodeKeys(t, nm); len(keys) != 0 {
		t.Errorf("keys left: %v", keys)
	}
	sets = agentSets(t, nm)
	if ds, ok := sets[nodeMirrorName(nm)]; len(sets) != 1 || !ok || ds.Spec.Template.Spec.HostNetwork {
		t.Errorf("DaemonSets without spec.share: %v", slices.Collect(maps.Keys(sets)))
	}
	if c := meta.FindStatusCondition(nm.Status.Conditions, depproxyv1.ConditionSharing); c != nil {
		t.Errorf("Sharing without spec.share: %+v", c)
	}
	second.Spec.Share = nil
	if err := k8sClient.Update(ctx, second); err != nil {
		t.Fatal(err)
	}
	reconcileProxy(t, pr, dp)
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: proxyName(dp)}, deploy); err != nil {
		t.Fatal(err)
	}
	if mountsNodeKey(deploy, nodeKeyName(nm.Name)) || strings.Contains(proxyConfig(t, dp), "node-key") {
		t.Errorf("the cache keeps a node key without spec.share")
	}
}

func mountsNodeKey(d *appsv1.Deployment, secret string) bool {
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			return slices.ContainsFunc(d.Spec.Template.Spec.Containers[0].VolumeMounts, func(m corev1.VolumeMount) bool {
				return m.Name == v.Name && m.MountPath == nodeKeyDir
			})
		}
	}
	return false
}

func readSecret(t *testing.T, ns, name string) []byte {
	t.Helper()
	s := &corev1.Secret{}
	if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, s); err != nil {
		t.Fatal(err)
	}
	return s.Data[nodeKeyFile]
}

func proxyConfig(t *testing.T, dp *depproxyv1.DependencyProxy) string {
	t.Helper()
	cm := &corev1.ConfigMap{}
	if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: dp.Namespace, Name: proxyName(dp)}, cm); err != nil {
		t.Fatal(err)
	}
	return cm.Data[configKey]
}

// spec.share's store is an absolute path of its own, not the node's root,
// with a size; its peer port is not one the agent itself takes on the
// node. The API server says so.
func TestShareSpecIsChecked(t *testing.T) {
	ns := namespace(t)
	dp := mirrorCache(t, ns, "cache")
	for i, c := range []struct {
		path string
		size string
		port int32
		want string // "": accepted
	}{
		{"/var/lib/depproxy", "50Gi", 5051, ""},
		{"/", "50Gi", 5051, "root directory"},
		{"/var/lib/../../etc", "50Gi", 5051, "without . or .."},
		{"var/lib/depproxy", "50Gi", 5051, "spec.share.store.path"},
		{"/var/lib/depproxy", "0", 5051, "must be more than 0"},
		{"/var/lib/depproxy", "50Gi", 9092, "peerPort is taken on the node"},
		{"/var/lib/depproxy", "50Gi", 5050, "peerPort is taken on the node"},
		{"/var/lib/depproxy", "50Gi", 70000, "spec.share.peerPort"},
	} {
		nm := &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("share-%d-%s", i, ns)}, Spec: depproxyv1.NodeMirrorSpec{
			Cache: depproxyv1.CacheReference{Namespace: dp.Namespace, Name: dp.Name}, Registries: []string{"docker.io"}, NodePort: 30530,
			Share: &depproxyv1.NodeShare{Store: depproxyv1.NodeStore{Path: c.path, Size: resource.MustParse(c.size)}, PeerPort: c.port}}}
		err := k8sClient.Create(context.Background(), nm)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v refused: %v", c, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: %v, want %q", c, err, c.want)
		}
		if err == nil {
			k8sClient.Delete(context.Background(), nm)
		}
	}
}
