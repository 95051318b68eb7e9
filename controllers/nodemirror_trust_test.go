package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// A hostile namespace admin's keeping cache, named by a cluster admin's
// NodeMirror for docker.io (which another NodeMirror holds), ghcr.io
// (on the nodes of one pool) and quay.io (which the cache does not
// serve): the keep ConfigMap, which the tenant reads, holds the pool's
// ghcr.io images and nothing else of the other namespace: not its
// docker.io or quay.io images, not a Pod on another node or none yet,
// not a template.
func TestNodeMirrorKeepLearnsOnlyWhatItsNodesPull(t *testing.T) {
	ctx := context.Background()
	ns, victim := namespace(t), namespace(t)
	mr := newMirrorReconciler(t)
	first := nodeMirror(t, "first-"+victim, mirrorCache(t, victim, "vc"), 30571, "docker.io")
	reconcileMirror(t, mr, first)

	mallory := asNamespaceAdmin(t, ns, "mallory-mirror-keep")
	if err := mallory.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "minio", Namespace: ns},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}}); err != nil {
		t.Fatal(err)
	}
	spy := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "spy", Namespace: ns}, Spec: depproxyv1.DependencyProxySpec{
		Upstreams: []depproxyv1.RegistryUpstream{
			{Registry: "docker.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://registry-1.docker.io"}},
			{Registry: "ghcr.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://ghcr.io"}},
		},
		Storage: depproxyv1.StorageSpec{Endpoint: "m:9000", Bucket: "cache", Prefix: ns, CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
		Keep:    &depproxyv1.KeepSpec{InUse: true, Warm: true, Revisions: 10}}}
	if err := mallory.Create(ctx, spy); err != nil {
		t.Fatal(err)
	}
	pool := map[string]string{"depproxy.dev/test-pool": ns}
	for name, l := range map[string]map[string]string{"in-" + ns: pool, "out-" + ns: nil} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
		if err := k8sClient.Create(ctx, node); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k8sClient.Delete(ctx, node) })
	}
	nm := nodeMirror(t, "spy-"+ns, spy, 30572, "docker.io", "ghcr.io", "quay.io")
	nm.Spec.NodeSelector = pool
	if err := k8sClient.Update(ctx, nm); err != nil {
		t.Fatal(err)
	}
	reconcileMirror(t, mr, nm)
	if st := nm.Status.Registries; len(st) != 3 || st[0].HeldBy != first.Name || st[1].Message != "" || st[2].Reason != depproxyv1.ReasonRegistryNotServed {
		t.Fatalf("the spy NodeMirror's registries: %+v", st)
	}

	for i, p := range []struct{ node, image string }{
		{"in-" + ns, "docker.io/secret/internal:2"},
		{"in-" + ns, "quay.io/secret/q:1"},
		{"out-" + ns, "ghcr.io/secret/elsewhere:1"},
		{"", "ghcr.io/secret/pending:1"},
		{"in-" + ns, "ghcr.io/org/shared:1"},
	} {
		spec := podSpec(p.image)
		spec.NodeName = p.node
		if err := k8sClient.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: victim}, Spec: spec}); err != nil {
			t.Fatal(err)
		}
	}
	labels := map[string]string{"app": "d"}
	if err := k8sClient.Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "d", Namespace: victim}, Spec: appsv1.DeploymentSpec{
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: podSpec("ghcr.io/secret/template:1")}}}); err != nil {
		t.Fatal(err)
	}

	r, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, spy)
	cm := &corev1.ConfigMap{}
	if err := mallory.Get(ctx, client.ObjectKey{Namespace: ns, Name: "spy-depproxy-keep"}, cm); err != nil {
		t.Fatal(err)
	}
	got := cm.Data[pinnedKey] + cm.Data[warmKey]
	if strings.Contains(got, "secret") || !strings.Contains(got, "ghcr.io/org/shared:1") {
		t.Fatalf("the tenant-readable keep files: %q: want the selected node's ghcr.io image, nothing else of the other namespace", got)
	}
}

// A registry whose upstream pulls with credentials is not sent through
// the cache by a NodeMirror (a condition says why, no agent writes it),
// unless spec.allowPrivateUpstreams says so; a mirrorOf of that
// upstream pulls with the same credentials.
func TestNodeMirrorLeavesPrivateUpstreamsOut(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	dp := mirrorCache(t, ns, "private")
	dp.Spec.Upstreams[1].CredentialsSecretRef = &corev1.LocalObjectReference{Name: "ghcr-token"}
	if err := k8sClient.Update(ctx, dp); err != nil {
		t.Fatal(err)
	}
	r := newMirrorReconciler(t)
	nm := nodeMirror(t, "private-"+ns, dp, 30573, "docker.io", "ghcr.io", "quay.io")
	reconcileMirror(t, r, nm)
	cond := assertCondition(t, nm, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonPrivateUpstream)
	if !strings.Contains(cond.Message, "ghcr.io") || !strings.Contains(cond.Message, "allowPrivateUpstreams") {
		t.Errorf("condition message %q", cond.Message)
	}
	for _, reg := range []string{"ghcr.io", "quay.io"} {
		if a := agentsFor(t, reg); len(a) != 0 {
			t.Errorf("%s, pulled with credentials, is configured on the nodes by %v", reg, a)
		}
	}
	if a := agentsFor(t, "docker.io"); len(a) != 1 {
		t.Errorf("docker.io, anonymous, is not configured: %v", a)
	}
	for _, st := range nm.Status.Registries {
		if private := st.Registry != "docker.io"; private != (st.Reason == depproxyv1.ReasonPrivateUpstream) {
			t.Errorf("registry status %+v", st)
		}
	}

	nm.Spec.AllowPrivateUpstreams = true
	if err := k8sClient.Update(ctx, nm); err != nil {
		t.Fatal(err)
	}
	reconcileMirror(t, r, nm)
	assertCondition(t, nm, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonNodesConfiguring)
	for _, reg := range []string{"docker.io", "ghcr.io", "quay.io"} {
		if a := agentsFor(t, reg); len(a) != 1 {
			t.Errorf("with allowPrivateUpstreams, %s is not configured: %v", reg, a)
		}
	}
}

// A NodeMirror naming the registry of the node agents' own image is
// refused as a whole: a reason in its conditions, no agent, no claim,
// no Service; without that registry it runs.
func TestNodeMirrorRefusesTheAgentsRegistry(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	dp := mirrorCache(t, ns, "agents")
	r := newMirrorReconciler(t)
	r.ProxyImage = "ghcr.io/depproxy/depproxy@sha256:" + strings.Repeat("c", 64)
	nm := nodeMirror(t, "agents-"+ns, dp, 30574, "docker.io", "ghcr.io")
	reconcileMirror(t, r, nm)
	cond := assertCondition(t, nm, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonMirrorsAgentImage)
	assertCondition(t, nm, depproxyv1.ConditionStalled, metav1.ConditionTrue, depproxyv1.ReasonMirrorsAgentImage)
	if !strings.Contains(cond.Message, "ghcr.io") {
		t.Errorf("condition message %q", cond.Message)
	}
	ds := &appsv1.DaemonSet{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: r.NodeNamespace, Name: nodeMirrorName(nm)}, ds); !apierrors.IsNotFound(err) {
		t.Errorf("the refused NodeMirror's agents run: %v", err)
	}
	claims := &corev1.ConfigMapList{}
	k8sClient.List(ctx, claims, client.InNamespace(r.NodeNamespace), client.MatchingLabels{nodeMirrorUIDLabel: string(nm.UID)})
	if len(claims.Items) != 0 || nm.Status.HostsToml != "" {
		t.Errorf("the refused NodeMirror holds %d claims, hostsToml %q", len(claims.Items), nm.Status.HostsToml)
	}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: nodeMirrorName(nm)}, &corev1.Service{}); !apierrors.IsNotFound(err) {
		t.Errorf("the refused NodeMirror's node port Service exists: %v", err)
	}

	// Docker Hub's names are one registry.
	r.ProxyImage = "depproxy/depproxy:v1"
	nm.Spec.Registries = []string{"docker.io"}
	if err := k8sClient.Update(ctx, nm); err != nil {
		t.Fatal(err)
	}
	reconcileMirror(t, r, nm)
	assertCondition(t, nm, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonMirrorsAgentImage)

	r.ProxyImage = "ghcr.io/depproxy/depproxy@sha256:" + strings.Repeat("c", 64)
	reconcileMirror(t, r, nm)
	assertCondition(t, nm, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonNodesConfiguring)
	if a := agentsFor(t, "docker.io"); len(a) != 1 {
		t.Errorf("docker.io is not configured: %v", a)
	}
}

// Which registries pull with credentials: an upstream's own, by a Secret
// or a plugin, and its mirrorOf; the single spec.upstream by its host.
func TestPrivateUpstream(t *testing.T) {
	dp := &depproxyv1.DependencyProxy{Spec: depproxyv1.DependencyProxySpec{Upstreams: []depproxyv1.RegistryUpstream{
		{Registry: "docker.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://registry-1.docker.io"}},
		{Registry: "123.dkr.ecr.us-east-1.amazonaws.com", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://123.dkr.ecr.us-east-1.amazonaws.com",
			CredentialProvider: &depproxyv1.CredentialProviderSpec{Name: "ecr-credential-provider"}}},
		{Registry: "ghcr.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://ghcr.io", MirrorOf: []string{"quay.io"},
			CredentialsSecretRef: &corev1.LocalObjectReference{Name: "pull"}}},
	}}}
	for registry, want := range map[string]string{
		"docker.io":                           "",
		"123.dkr.ecr.us-east-1.amazonaws.com": "spec.upstreams[1].credentialProvider",
		"ghcr.io":                             "spec.upstreams[2].credentialsSecretRef",
		"quay.io":                             "spec.upstreams[2].credentialsSecretRef",
		"registry.k8s.io":                     "",
	} {
		if got := privateUpstream(dp, registry); got != want {
			t.Errorf("%s: %q, want %q", registry, got, want)
		}
	}
	single := &depproxyv1.DependencyProxy{Spec: depproxyv1.DependencyProxySpec{Upstream: depproxyv1.UpstreamSpec{URL: "https://registry.example:5000",
		CredentialsSecretRef: &corev1.LocalObjectReference{Name: "pull"}}}}
	if got := privateUpstream(single, "registry.example:5000"); got != "spec.upstream.credentialsSecretRef" {
		t.Errorf("the single upstream: %q", got)
	}
}

// A Helm repository upstream is rendered for the proxy as one, and is no
// registry a NodeMirror routes the nodes' pulls to.
func TestHelmUpstream(t *testing.T) {
	dp := &depproxyv1.DependencyProxy{Spec: depproxyv1.DependencyProxySpec{Upstreams: []depproxyv1.RegistryUpstream{
		{Registry: "docker.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://registry-1.docker.io"}},
		{Registry: "charts.example", Kind: depproxyv1.UpstreamKindHelm, UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://charts.example.com/stable",
			CredentialsSecretRef: &corev1.LocalObjectReference{Name: "charts"}}},
	}}}
	conf := proxySettings(dp)
	if got := conf.Upstream.For("charts.example", false); got != "helm+https://charts.example.com/stable" {
		t.Errorf("--upstream charts.example=%q", got)
	}
	ups, err := conf.Upstreams()
	if err != nil || !ups[1].Helm || ups[1].Credentials == "" {
		t.Fatalf("the proxy reads it as %+v, %v", ups, err)
	}
	if _, ok := servedRegistry(dp, "charts.example"); ok {
		t.Error("a NodeMirror would route charts.example's pulls to the cache")
	}
	if _, ok := servedRegistry(dp, "docker.io"); !ok {
		t.Error("docker.io is not routed")
	}
}
