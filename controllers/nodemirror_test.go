package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// mirrorCache is a cache of docker.io and ghcr.io, with quay.io standing
// in through ghcr.io's mirrorOf.
func mirrorCache(t *testing.T, ns, name string) *depproxyv1.DependencyProxy {
	t.Helper()
	storageSecret(t, ns, name+"-minio", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
	dp := &depproxyv1.DependencyProxy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: depproxyv1.DependencyProxySpec{
			Upstreams: []depproxyv1.RegistryUpstream{
				{Registry: "docker.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://registry-1.docker.io"}},
				{Registry: "ghcr.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://ghcr.io", MirrorOf: []string{"quay.io"}}},
			},
			Storage: depproxyv1.StorageSpec{Endpoint: "minio.storage:9000", Bucket: "cache", Prefix: ns + "/" + name,
				CredentialsSecretRef: corev1.LocalObjectReference{Name: name + "-minio"}},
		},
	}
	if err := k8sClient.Create(context.Background(), dp); err != nil {
		t.Fatal(err)
	}
	return dp
}

func nodeMirror(t *testing.T, name string, cache *depproxyv1.DependencyProxy, nodePort int32, registries ...string) *depproxyv1.NodeMirror {
	t.Helper()
	nm := &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: depproxyv1.NodeMirrorSpec{
		Cache:      depproxyv1.CacheReference{Namespace: cache.Namespace, Name: cache.Name},
		Registries: registries, NodePort: nodePort,
	}}
	if err := k8sClient.Create(context.Background(), nm); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNodeMirror(t, newMirrorReconciler(t), nm) })
	return nm
}

// newMirrorReconciler runs the node agents in the default node
// namespace, shared by every test as in a real cluster: registry claims
// are cluster-wide.
func newMirrorReconciler(*testing.T) *NodeMirrorReconciler {
	return &NodeMirrorReconciler{Client: k8sClient, Scheme: scheme, Recorder: events.NewFakeRecorder(100),
		ProxyImage: "operator.example/depproxy:v1", NodeNamespace: DefaultNodeNamespace}
}

func reconcileMirror(t *testing.T, r *NodeMirrorReconciler, nm *depproxyv1.NodeMirror) ctrl.Result {
	t.Helper()
	res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(nm)})
	if err != nil {
		t.Fatalf("reconcile %s: %v", nm.Name, err)
	}
	if err := k8sClient.Get(context.Background(), client.ObjectKeyFromObject(nm), nm); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	return res
}

// deleteNodeMirror deletes nm and reconciles until it is gone (envtest
// has no DaemonSet controller: no agent pod ever stops slowly).
func deleteNodeMirror(t *testing.T, r *NodeMirrorReconciler, nm *depproxyv1.NodeMirror) {
	t.Helper()
	if err := k8sClient.Delete(context.Background(), nm); client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := k8sClient.Get(context.Background(), client.ObjectKeyFromObject(nm), &depproxyv1.NodeMirror{}); apierrors.IsNotFound(err) {
			return
		}
		r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(nm)})
	}
	t.Errorf("NodeMirror %s is held after its agents stopped", nm.Name)
}

// agentsFor lists the node agent DaemonSets whose args name registry.
func agentsFor(t *testing.T, registry string) []string {
	t.Helper()
	list := &appsv1.DaemonSetList{}
	if err := k8sClient.List(context.Background(), list); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ds := range list.Items {
		if slices.Contains(ds.Spec.Template.Spec.Containers[0].Args, registry) {
			out = append(out, ds.Namespace+"/"+ds.Name)
		}
	}
	return out
}

// A NodeMirror runs the node agents in their own namespace, with the
// operator's image and the runtime's directory, for the registries it
// names, and serves the cache on the nodes' port; deleting it waits for
// the agents to stop and releases its registries.
func TestNodeMirror(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	dp := mirrorCache(t, ns, "cluster-mirror")
	dp.Spec.Image = "tenant.example/own:1" // the tenant's pods only
	if err := k8sClient.Update(ctx, dp); err != nil {
		t.Fatal(err)
	}
	r := newMirrorReconciler(t)
	nm := nodeMirror(t, "mirror-"+ns, dp, 30511, "docker.io", "quay.io")
	reconcileMirror(t, r, nm)

	nodeNS := &corev1.Namespace{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Name: r.NodeNamespace}, nodeNS); err != nil || nodeNS.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Fatalf("the node agents' namespace: %v %v", err, nodeNS.Labels)
	}
	ds := &appsv1.DaemonSet{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: r.NodeNamespace, Name: "nodemirror-" + nm.Name}, ds); err != nil {
		t.Fatalf("no node agent DaemonSet: %v", err)
	}
	c := ds.Spec.Template.Spec.Containers[0]
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"node --endpoint http://$(NODE_IP):30511", "--dir /etc/containerd/certs.d", "--dial-timeout 1s",
		"--registry docker.io --server docker.io=https://registry-1.docker.io", "--registry quay.io"} {
		if !strings.Contains(args, want) {
			t.Errorf("node agent args %q lack %q", args, want)
		}
	}
	if strings.Contains(args, "ghcr.io") || c.Image != r.ProxyImage {
		t.Errorf("node agent runs %s with %q", c.Image, args)
	}
	if ref := metav1.GetControllerOf(ds); ref == nil || ref.Kind != "NodeMirror" || ref.UID != nm.UID {
		t.Errorf("the DaemonSet is not the NodeMirror's: %+v", ds.OwnerReferences)
	}
	svc := &corev1.Service{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "nodemirror-" + nm.Name}, svc); err != nil ||
		svc.Spec.Type != corev1.ServiceTypeNodePort || svc.Spec.Ports[0].NodePort != 30511 {
		t.Fatalf("node port Service: %v %+v", err, svc.Spec)
	}
	if !controllerutil.ContainsFinalizer(nm, nodeMirrorFinalizer) || nm.Status.Summary != "0/0" || len(nm.Status.Registries) != 2 {
		t.Fatalf("finalizer %v, status %+v", nm.Finalizers, nm.Status)
	}
	if h := nm.Status.HostsToml; !strings.Contains(h, `server = "https://registry-1.docker.io"`) || !strings.Contains(h, `[host."http://<node>:30511"]`) {
		t.Errorf("status.hostsToml:\n%s", h)
	}

	// A registry the cache does not serve is refused, by name.
	nm.Spec.Registries = append(nm.Spec.Registries, "registry.k8s.io")
	if err := k8sClient.Update(ctx, nm); err != nil {
		t.Fatal(err)
	}
	reconcileMirror(t, r, nm)
	cond := assertCondition(t, nm, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonRegistryNotServed)
	// Nothing changed: the next reconcile writes nothing (the conditions
	// keep their transition times, no hot loop on the status).
	time.Sleep(1100 * time.Millisecond) // a transition time has a second's resolution
	rv := nm.ResourceVersion
	reconcileMirror(t, r, nm)
	if nm.ResourceVersion != rv {
		t.Errorf("an unchanged NodeMirror was written again: %+v", nm.Status.Conditions)
	}
	if !strings.Contains(cond.Message, "registry.k8s.io") || len(agentsFor(t, "registry.k8s.io")) != 0 {
		t.Errorf("condition %q, agents %v", cond.Message, agentsFor(t, "registry.k8s.io"))
	}

	deleteNodeMirror(t, r, nm)
	if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(ds), ds); !apierrors.IsNotFound(err) {
		t.Errorf("the node agents were not stopped: %v", err)
	}
	claims := &corev1.ConfigMapList{}
	k8sClient.List(ctx, claims, client.InNamespace(r.NodeNamespace), client.MatchingLabels{nodeMirrorUIDLabel: string(nm.UID)})
	if len(claims.Items) != 0 {
		t.Errorf("claims outlived the NodeMirror: %d", len(claims.Items))
	}
}

// One registry, two NodeMirrors, created in either order, and the older
// one adding it later: exactly one agent writes it, whoever claimed it
// first, and the other says who holds it; once the holder goes, the
// other takes it.
func TestNodeMirrorClaims(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	cache := mirrorCache(t, ns, "cache")
	r := newMirrorReconciler(t)
	for i, tc := range []struct {
		name          string
		older, newer  []string
		newerFirst    bool
		olderAddsLate bool
		wantNewer     bool // the newer one holds docker.io
	}{
		{name: "older first", older: []string{"docker.io"}, newer: []string{"docker.io", "ghcr.io"}},
		{name: "newer first", older: []string{"docker.io", "ghcr.io"}, newer: []string{"docker.io"}, newerFirst: true, wantNewer: true},
		{name: "older adds it later", older: []string{"ghcr.io"}, newer: []string{"docker.io"}, olderAddsLate: true, wantNewer: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			older := nodeMirror(t, fmt.Sprintf("older-%d-%s", i, ns), cache, int32(30521+2*i), tc.older...)
			time.Sleep(1100 * time.Millisecond) // creation times have a second's resolution
			newer := nodeMirror(t, fmt.Sprintf("newer-%d-%s", i, ns), cache, int32(30522+2*i), tc.newer...)
			order := []*depproxyv1.NodeMirror{older, newer}
			if tc.newerFirst {
				order = []*depproxyv1.NodeMirror{newer, older}
			}
			for _, nm := range order {
				reconcileMirror(t, r, nm)
			}
			if tc.olderAddsLate {
				older.Spec.Registries = append(older.Spec.Registries, "docker.io")
				if err := k8sClient.Update(ctx, older); err != nil {
					t.Fatal(err)
				}
				reconcileMirror(t, r, older)
			}
			reconcileMirror(t, r, newer)
			reconcileMirror(t, r, older)

			holder, refused := older, newer
			if tc.wantNewer {
				holder, refused = newer, older
			}
			if got := agentsFor(t, "docker.io"); len(got) != 1 || got[0] != r.NodeNamespace+"/nodemirror-"+holder.Name {
				t.Fatalf("agents writing docker.io: %v, want only %s's", got, holder.Name)
			}
			if got := agentsFor(t, "ghcr.io"); len(got) != 1 {
				t.Fatalf("agents writing ghcr.io: %v", got)
			}
			c := assertCondition(t, refused, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonNodeMirrorConflict)
			if !strings.Contains(c.Message, holder.Name) {
				t.Errorf("the condition does not name the holder: %q", c.Message)
			}
			j := slices.IndexFunc(refused.Status.Registries, func(s depproxyv1.RegistryMirrorStatus) bool { return s.Registry == "docker.io" })
			if j < 0 || refused.Status.Registries[j].HeldBy != holder.Name || refused.Status.Registries[j].Configured != 0 {
				t.Errorf("status.registries %+v", refused.Status.Registries)
			}

			// The holder goes, its claim with it, and the other takes it.
			deleteNodeMirror(t, r, holder)
			reconcileMirror(t, r, refused)
			if got := agentsFor(t, "docker.io"); len(got) != 1 || got[0] != r.NodeNamespace+"/nodemirror-"+refused.Name {
				t.Fatalf("agents writing docker.io after the holder went: %v", got)
			}
			deleteNodeMirror(t, r, refused)
		})
	}
}

// team-a/x and team/a-x: every name the operator gives is its own, and
// deleting one leaves the other's children; an object of a child's name
// that the operator did not make is never changed or deleted.
func TestNamesDoNotCollide(t *testing.T) {
	cluster(t)
	ctx := context.Background()
	for _, name := range []string{"team-a", "team"} {
		if err := k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); client.IgnoreNotFound(err) != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	one, other := mirrorCache(t, "team-a", "x"), mirrorCache(t, "team", "a-x")
	proxies, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, proxies, one)
	reconcileProxy(t, proxies, other)
	r := newMirrorReconciler(t)
	nmOne := nodeMirror(t, "team-a-x", one, 30531, "docker.io")
	nmOther := nodeMirror(t, "team-a-x-2", other, 30532, "ghcr.io")
	reconcileMirror(t, r, nmOne)
	reconcileMirror(t, r, nmOther)

	deleteNodeMirror(t, r, nmOne)
	if err := k8sClient.Delete(ctx, one); err != nil {
		t.Fatal(err)
	}
	reconcileMirror(t, r, nmOther)
	for _, obj := range []client.Object{
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: r.NodeNamespace, Name: "nodemirror-team-a-x-2"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "nodemirror-team-a-x-2"}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "a-x-depproxy"}},
	} {
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			t.Errorf("%T %s/%s went with the other resource: %v", obj, obj.GetNamespace(), obj.GetName(), err)
		}
	}
	assertCondition(t, nmOther, depproxyv1.ConditionDegraded, metav1.ConditionFalse, depproxyv1.ReasonNodesConfiguring)

	// An agent DaemonSet's name taken by something else.
	squat := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: r.NodeNamespace, Name: "nodemirror-squatted"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "admin"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "admin"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "admin.example/tool:1"}}}}}}
	if err := k8sClient.Create(ctx, squat); err != nil {
		t.Fatal(err)
	}
	nm := nodeMirror(t, "squatted", other, 30533, "quay.io")
	reconcileMirror(t, r, nm)
	assertCondition(t, nm, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonNameTaken)
	deleteNodeMirror(t, r, nm)
	if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(squat), squat); err != nil || squat.Spec.Template.Spec.Containers[0].Image != "admin.example/tool:1" {
		t.Errorf("someone else's DaemonSet was changed or deleted: %v %+v", err, squat.Spec.Template.Spec.Containers)
	}
}

// The cache a NodeMirror names goes: its agents stop (taking the files
// out) and it says why.
func TestNodeMirrorWithoutItsCache(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	dp := mirrorCache(t, ns, "going")
	r := newMirrorReconciler(t)
	nm := nodeMirror(t, "going-"+ns, dp, 30541, "docker.io")
	reconcileMirror(t, r, nm)
	if got := agentsFor(t, "docker.io"); !slices.Contains(got, r.NodeNamespace+"/nodemirror-"+nm.Name) {
		t.Fatalf("agents %v", got)
	}
	if err := k8sClient.Delete(ctx, dp); err != nil {
		t.Fatal(err)
	}
	reconcileMirror(t, r, nm)
	assertCondition(t, nm, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonCacheNotFound)
	if got := agentsFor(t, "docker.io"); slices.Contains(got, r.NodeNamespace+"/nodemirror-"+nm.Name) {
		t.Errorf("agents still run without the cache: %v", got)
	}
}

// The CRD's own word on fields that moved to NodeMirror.
func TestRemovedFieldsAreRefused(t *testing.T) {
	ns := namespace(t)
	for field, value := range map[string]any{"nodeMirror": map[string]any{"configPath": "/etc"}, "nodePort": 30500} {
		err := createUnstructuredProxy(context.Background(), k8sClient, ns, "with-"+strings.ToLower(field), map[string]any{field: value})
		if err == nil || !strings.Contains(err.Error(), "NodeMirror") || !strings.Contains(err.Error(), "spec."+field) {
			t.Errorf("spec.%s: %v", field, err)
		}
	}
}

// repoFile reads a file of the repository's.
func repoFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", path))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// spec.stargz is for containerd nodes, and its file is an absolute path
// in a directory of its own; the API server says so.
func TestStargzSpecIsChecked(t *testing.T) {
	ns := namespace(t)
	dp := mirrorCache(t, ns, "cache")
	for i, c := range []struct {
		runtime    depproxyv1.NodeRuntime
		configPath string
		want       string // "" : accepted
	}{
		{depproxyv1.RuntimeContainerd, "", ""},
		{depproxyv1.RuntimeCRIO, "", "stargz is a containerd snapshotter"},
		{depproxyv1.RuntimeContainerd, "/config.toml", "a directory of its own"},
		{depproxyv1.RuntimeContainerd, "/etc/../config.toml", "without . or .."},
		{depproxyv1.RuntimeContainerd, "etc/stargz.toml", "spec.stargz.configPath"},
	} {
		nm := &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("stargz-%d-%s", i, ns)}, Spec: depproxyv1.NodeMirrorSpec{
			Cache: depproxyv1.CacheReference{Namespace: dp.Namespace, Name: dp.Name}, Registries: []string{"docker.io"}, NodePort: 30530,
			Runtime: c.runtime, Stargz: &depproxyv1.StargzSnapshotter{ConfigPath: c.configPath}}}
		err := k8sClient.Create(context.Background(), nm)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s %q refused: %v", c.runtime, c.configPath, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s %q: %v, want %q", c.runtime, c.configPath, err, c.want)
		}
		if err == nil {
			if c.configPath == "" && nm.Spec.Stargz.ConfigPath != "/etc/containerd-stargz-grpc/config.toml" {
				t.Errorf("the default configPath is %q", nm.Spec.Stargz.ConfigPath)
			}
			k8sClient.Delete(context.Background(), nm)
		}
	}
}
