package controllers

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// createUnstructuredProxy creates a DependencyProxy with extra spec
// fields, as kubectl would send them, whatever the Go type still has.
func createUnstructuredProxy(ctx context.Context, c client.Client, ns, name string, extra map[string]any) error {
	spec := map[string]any{"storage": map[string]any{"endpoint": "minio.storage:9000", "bucket": "cache", "prefix": ns + "/" + name,
		"credentialsSecretRef": map[string]any{"name": "minio"}}}
	for k, v := range extra {
		spec[k] = v
	}
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "depproxy.dev/v1alpha1", "kind": "DependencyProxy",
		"metadata": map[string]any{"name": name, "namespace": ns}, "spec": spec}}
	return c.Create(ctx, u)
}

// projectClusterRole installs one of config/rbac's ClusterRoles as
// kustomize names it (depproxy-…).
func projectClusterRole(t *testing.T, file string) string {
	t.Helper()
	role := &rbacv1.ClusterRole{}
	if err := yaml.Unmarshal(repoFile(t, "config/rbac/"+file), role); err != nil {
		t.Fatal(err)
	}
	role.Name = "depproxy-" + role.Name
	if err := k8sClient.Create(context.Background(), role); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return role.Name
}

// asNamespaceAdmin is a user who may do, in ns, what the project's
// aggregated edit role grants and what a namespace admin does with
// Secrets, ConfigMaps and Services, and nothing anywhere else.
func asNamespaceAdmin(t *testing.T, ns, user string) client.Client {
	t.Helper()
	ctx := context.Background()
	edit := projectClusterRole(t, "tenant_edit_role.yaml")
	own := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "namespace-admin", Namespace: ns}, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{""}, Resources: []string{"secrets", "configmaps", "services"}, Verbs: []string{"*"}}}}
	for _, o := range []client.Object{own,
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "namespace-admin", Namespace: ns},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: user}}, RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: own.Name}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "depproxy-edit", Namespace: ns},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: user}}, RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: edit}},
	} {
		if err := k8sClient.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	cfg := rest.CopyConfig(restConfig)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// canI is `kubectl auth can-i` for the client's own user.
func canI(t *testing.T, c client.Client, attrs authorizationv1.ResourceAttributes) bool {
	t.Helper()
	r := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attrs}}
	if err := c.Create(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return r.Status.Allowed
}

// snapshot is every object of the kinds the operator makes, by UID, with
// its resourceVersion: what a reconcile created or changed shows against
// it.
func snapshot(t *testing.T) map[string]client.Object {
	t.Helper()
	out := map[string]client.Object{}
	lists := []client.ObjectList{&appsv1.DaemonSetList{}, &appsv1.DeploymentList{}, &batchv1.CronJobList{}, &corev1.ServiceList{},
		&corev1.ConfigMapList{}, &corev1.SecretList{}, &corev1.ServiceAccountList{}, &rbacv1.RoleList{}, &rbacv1.RoleBindingList{},
		&rbacv1.ClusterRoleList{}, &rbacv1.ClusterRoleBindingList{}, &corev1.NamespaceList{}}
	for _, l := range lists {
		if err := k8sClient.List(context.Background(), l); err != nil {
			t.Fatal(err)
		}
		items, err := meta.ExtractList(l)
		if err != nil {
			t.Fatal(err)
		}
		for _, item := range items {
			o := item.(client.Object)
			out[string(o.GetUID())+"@"+o.GetResourceVersion()] = o
		}
	}
	return out
}

// podSpecOf is the pod template of an object that runs pods.
func podSpecOf(o client.Object) *corev1.PodSpec {
	switch o := o.(type) {
	case *appsv1.DaemonSet:
		return &o.Spec.Template.Spec
	case *appsv1.Deployment:
		return &o.Spec.Template.Spec
	case *batchv1.CronJob:
		return &o.Spec.JobTemplate.Spec.Template.Spec
	}
	return nil
}

// A namespace admin of one tenant, trying what reached every node
// before: the removed fields are refused by the API server, NodeMirror
// and the node namespace are out of reach, and of everything the
// operator then makes or changes, nothing outside the tenant's namespace
// comes from the tenant's spec: no image but the operator's, no hostPath
// but the runtimes' directories, no node agent for a registry no
// NodeMirror names, no toleration or node selector but the cluster
// admin's.
func TestNamespaceAdminStaysInTheNamespace(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	mallory := asNamespaceAdmin(t, ns, "mallory")

	if !canI(t, mallory, authorizationv1.ResourceAttributes{Namespace: ns, Verb: "create", Group: "depproxy.dev", Resource: "dependencyproxies"}) ||
		!canI(t, mallory, authorizationv1.ResourceAttributes{Namespace: ns, Verb: "create", Group: "depproxy.dev", Resource: "cleanuppolicies"}) {
		t.Fatal("the namespace admin may not manage its own caches: the test proves nothing")
	}
	for _, attrs := range []authorizationv1.ResourceAttributes{
		{Verb: "create", Group: "depproxy.dev", Resource: "nodemirrors"},
		{Verb: "update", Group: "depproxy.dev", Resource: "nodemirrors"},
		{Namespace: DefaultNodeNamespace, Verb: "create", Resource: "configmaps"},
		{Namespace: DefaultNodeNamespace, Verb: "update", Group: "apps", Resource: "daemonsets"},
		{Namespace: "other", Verb: "create", Group: "depproxy.dev", Resource: "dependencyproxies"},
	} {
		if canI(t, mallory, attrs) {
			t.Errorf("the namespace admin can %s %s in %q", attrs.Verb, attrs.Resource, attrs.Namespace)
		}
	}

	// kubectl says so too.
	stdout, _, _ := testEnv.ControlPlane.KubeCtl().Run("auth", "can-i", "create", "nodemirrors", "--as", "mallory")
	if out, _ := io.ReadAll(stdout); strings.TrimSpace(string(out)) != "no" {
		t.Errorf("kubectl auth can-i create nodemirrors --as mallory: %q", out)
	}

	// The tenant's attempts.
	if err := mallory.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "minio", Namespace: ns},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}}); err != nil {
		t.Fatal(err)
	}
	rootkit := "attacker.example/rootkit:1"
	err := createUnstructuredProxy(ctx, mallory, ns, "rootkit", map[string]any{"image": rootkit,
		"nodePort": 30599, "nodeMirror": map[string]any{"configPath": "/etc", "tolerations": []any{map[string]any{"operator": "Exists"}}}})
	if err == nil || !strings.Contains(err.Error(), "NodeMirror") {
		t.Errorf("spec.nodeMirror with /etc was not refused naming NodeMirror: %v", err)
	}
	if err := createUnstructuredProxy(ctx, mallory, ns, "redirect", map[string]any{"image": rootkit, "upstreams": []any{map[string]any{
		"registry": "attacker.example", "url": "https://attacker.example", "mirrorOf": []any{"registry.k8s.io", "quay.io", "docker.io"}}}}); err != nil {
		t.Fatalf("a tenant's own cache was refused: %v", err)
	}
	hostile := &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: "hostile-" + ns}, Spec: depproxyv1.NodeMirrorSpec{
		Cache: depproxyv1.CacheReference{Namespace: ns, Name: "redirect"}, Registries: []string{"registry.k8s.io"}, NodePort: 30552,
		ConfigPath: "/etc", Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}}}}
	if err := mallory.Create(ctx, hostile); !apierrors.IsForbidden(err) {
		t.Errorf("the namespace admin created a NodeMirror: %v", err)
	}
	squat := desiredClaim(&depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: "hostile", UID: "x"}}, "registry.k8s.io", DefaultNodeNamespace)
	if err := mallory.Create(ctx, squat); !apierrors.IsForbidden(err) {
		t.Errorf("the namespace admin claimed a registry in the node namespace: %v", err)
	}

	// The cluster admin trusts the tenant's cache with the nodes'
	// docker.io, and nothing else: the tenant's spec must still not
	// reach the nodes.
	adminMirror := &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: "cluster-mirror-" + ns}, Spec: depproxyv1.NodeMirrorSpec{
		Cache: depproxyv1.CacheReference{Namespace: ns, Name: "redirect"}, Registries: []string{"docker.io"}, NodePort: 30551,
		NodeSelector: map[string]string{"node-role.kubernetes.io/worker": ""}}}
	if err := k8sClient.Create(ctx, adminMirror); err != nil {
		t.Fatal(err)
	}
	mirrors := newMirrorReconciler(t)
	t.Cleanup(func() { deleteNodeMirror(t, mirrors, adminMirror) })

	// The operator does its work over all of it.
	before := snapshot(t)
	proxies, _ := newProxyReconciler(k8sClient)
	proxies.ProxyImage = mirrors.ProxyImage
	list := &depproxyv1.DependencyProxyList{}
	if err := k8sClient.List(ctx, list, client.InNamespace(ns)); err != nil || len(list.Items) != 1 {
		t.Fatalf("the tenant's caches: %v %d", err, len(list.Items))
	}
	for i := range list.Items {
		reconcileProxy(t, proxies, &list.Items[i])
	}
	reconcileMirror(t, mirrors, adminMirror)
	reconcileMirror(t, mirrors, adminMirror)

	allowedHostPaths := []string{"/etc/containerd/certs.d", "/etc/containers/registries.conf.d"}
	made := 0
	for key, o := range snapshot(t) {
		if _, old := before[key]; old || o.GetNamespace() == ns {
			continue
		}
		made++
		what := fmt.Sprintf("%T %s/%s", o, o.GetNamespace(), o.GetName())
		if ref := metav1.GetControllerOf(o); ref == nil || ref.Kind != "NodeMirror" || ref.UID != adminMirror.UID {
			if _, isNS := o.(*corev1.Namespace); !isNS || o.GetName() != DefaultNodeNamespace {
				t.Errorf("%s, made or changed outside the tenant's namespace, is not the cluster admin's NodeMirror's: %+v", what, o.GetOwnerReferences())
			}
		}
		pod := podSpecOf(o)
		if pod == nil {
			continue
		}
		for _, c := range pod.Containers {
			if c.Image != mirrors.ProxyImage {
				t.Errorf("%s runs %s", what, c.Image)
			}
		}
		for _, v := range pod.Volumes {
			if v.HostPath != nil && !slices.Contains(allowedHostPaths, v.HostPath.Path) {
				t.Errorf("%s mounts the node's %s", what, v.HostPath.Path)
			}
		}
		if len(pod.Tolerations) != 0 || len(pod.NodeSelector) != 1 || pod.NodeSelector["node-role.kubernetes.io/worker"] != "" {
			t.Errorf("%s is placed by someone else than the cluster admin: %v %v", what, pod.Tolerations, pod.NodeSelector)
		}
	}
	if made == 0 {
		t.Fatal("the cluster admin's NodeMirror made nothing: the test proves nothing")
	}

	// Every registry a node agent writes, in the whole cluster, is one a
	// NodeMirror names.
	named := map[string]bool{}
	nms := &depproxyv1.NodeMirrorList{}
	if err := k8sClient.List(ctx, nms); err != nil {
		t.Fatal(err)
	}
	for _, nm := range nms.Items {
		for _, r := range nm.Spec.Registries {
			named[r] = true
		}
	}
	dss := &appsv1.DaemonSetList{}
	if err := k8sClient.List(ctx, dss); err != nil {
		t.Fatal(err)
	}
	for _, ds := range dss.Items {
		args := ds.Spec.Template.Spec.Containers[0].Args
		for i, a := range args {
			if a == "--registry" && i+1 < len(args) && !named[args[i+1]] {
				t.Errorf("DaemonSet %s/%s configures %s on the nodes, which no NodeMirror names", ds.Namespace, ds.Name, args[i+1])
			}
		}
	}
	for _, registry := range []string{"registry.k8s.io", "quay.io", "attacker.example"} {
		if got := agentsFor(t, registry); len(got) != 0 {
			t.Errorf("node agents for the tenant's %s: %v", registry, got)
		}
	}
}
