package controllers

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

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
