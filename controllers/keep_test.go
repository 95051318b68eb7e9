package controllers

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/layout"
	"github.com/depproxy/depproxy/test/testenv"
)

func podSpec(images ...string) corev1.PodSpec {
	var cs []corev1.Container
	for i, img := range images {
		cs = append(cs, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: img})
	}
	return corev1.PodSpec{Containers: cs}
}

// What a cache pins: the digest a running Pod's node pulled, not its
// tag; its own namespace's images naming its endpoint and nothing of
// another namespace's, nor a registry it does not serve (routed as the
// proxy routes); a NodeMirror's registries that it serves
// cluster-wide; the three
// newest ReplicaSets of a Deployment rolled through five images.
func TestKeptImages(t *testing.T) {
	dp := testProxy() // team-a in tenants, pulling through quay.io
	dp.Spec.Keep = &depproxyv1.KeepSpec{InUse: true, Revisions: 3, Images: []string{"docker.io/library/postgres:16"}}
	ep := "team-a-depproxy.tenants.svc:5000"
	w := workloads{
		Pods: []corev1.Pod{
			{ObjectMeta: metav1.ObjectMeta{Namespace: "tenants", Name: "running"}, Spec: podSpec(ep + "/org/app:1"),
				Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{
					{Name: "c0", Image: ep + "/org/app:1", ImageID: ep + "/org/app@sha256:" + strings.Repeat("a", 64)}}}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "tenants", Name: "pending"}, Spec: podSpec(ep+"/org/pending:2", "nginx:1.25")},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "hostile"}, Spec: podSpec(ep + "/org/theirs:1")},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "hub"}, Spec: podSpec("redis:7")},
			// A registry the cache does not serve: the proxy answers
			// NAME_UNKNOWN for it, so nothing of it is kept.
			{ObjectMeta: metav1.ObjectMeta{Namespace: "tenants", Name: "unserved"}, Spec: podSpec(ep + "/gcr.io/org/x:1")},
		},
		Deployments: []appsv1.Deployment{{ObjectMeta: metav1.ObjectMeta{Namespace: "tenants", Name: "web"},
			Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](0), Template: corev1.PodTemplateSpec{Spec: podSpec(ep + "/quay.io/org/web:5")}}}},
	}
	for rev := 1; rev <= 5; rev++ {
		w.ReplicaSets = append(w.ReplicaSets, appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "tenants", Name: fmt.Sprintf("web-%d", rev),
			Annotations:     map[string]string{revisionLabel: fmt.Sprint(rev)},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Deployment", Name: "web", Controller: ptr.To(true)}}},
			Spec: appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{Spec: podSpec(fmt.Sprintf("%s/org/web:%d", ep, rev))}}})
	}
	pinned, warm := keptImages(dp, scopeOf(dp, nil, nil), w)
	want := []string{
		"docker.io/library/postgres:16",
		"quay.io/org/app@sha256:" + strings.Repeat("a", 64),
		"quay.io/org/pending:2",
		"quay.io/org/web:3", "quay.io/org/web:4", "quay.io/org/web:5",
	}
	if !slices.Equal(pinned, want) || len(warm) != 0 {
		t.Fatalf("pinned %q, warm %q; want pinned %q", pinned, warm, want)
	}

	// A NodeMirror naming the cache for mirror.internal:5000 (which it
	// serves) and docker.io (which it does not): that registry's images
	// of every namespace, as nodes pull them; nothing of docker.io's.
	nm := depproxyv1.NodeMirror{Spec: depproxyv1.NodeMirrorSpec{Cache: depproxyv1.CacheReference{Namespace: "tenants", Name: "team-a"},
		Registries: []string{"docker.io", "mirror.internal:5000"}}, Status: depproxyv1.NodeMirrorStatus{Registries: []depproxyv1.RegistryMirrorStatus{
		{Registry: "docker.io"}, {Registry: "mirror.internal:5000"}}}}
	dp.Spec.Keep.Warm = true
	w.Pods = append(w.Pods, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "tool"}, Spec: podSpec("mirror.internal:5000/team/tool:3")})
	pinned, warm = keptImages(dp, scopeOf(dp, []depproxyv1.NodeMirror{nm}, nil), w)
	if img := "mirror.internal:5000/team/tool:3"; !slices.Contains(pinned, img) || !slices.Contains(warm, img) {
		t.Errorf("a NodeMirror's registry: %s not pinned and warmed (%q, %q)", img, pinned, warm)
	}
	for _, img := range []string{"docker.io/library/nginx:1.25", "docker.io/library/redis:7"} {
		if slices.Contains(pinned, img) || slices.Contains(warm, img) {
			t.Errorf("a registry the cache does not serve: %s kept (%q, %q)", img, pinned, warm)
		}
	}
	for _, l := range append(pinned, warm...) {
		if strings.Contains(l, "theirs") {
			t.Errorf("another namespace's image naming this cache's endpoint was kept: %s", l)
		}
	}
}

// platformNode is a node reporting a platform (the nodes' platforms are
// what spec.keep's images are warmed for), for the test's length.
func platformNode(t *testing.T, os, arch string) {
	t.Helper()
	cluster(t)
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{GenerateName: "node-"}}
	if err := k8sClient.Create(ctx, node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k8sClient.Delete(ctx, node) })
	node.Status.NodeInfo = corev1.NodeSystemInfo{OperatingSystem: os, Architecture: arch}
	if err := k8sClient.Status().Update(ctx, node); err != nil {
		t.Fatal(err)
	}
}

// In a real manager with the operator's cache (workloads stripped to
// their images), a Deployment created with no replicas whose image is
// not cached: within 60 s the real proxy, run as rendered, holds its
// index, the node platform's child and that child's blobs, without a
// client pulling; the status says it is warmed.
func TestKeepWarmsBeforeAnyPull(t *testing.T) {
	cluster(t)
	ctx := context.Background()
	reg := testenv.StartRegistry(t)
	front := testenv.StartFront(t, reg.URL())
	m := testenv.StartMinIO(t)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var amd64 v1.Image
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := random.Image(4096, 2)
		if err != nil {
			t.Fatal(err)
		}
		if arch == "amd64" {
			amd64 = img
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	ref, _ := name.ParseReference(reg.Addr+"/org/worker:2.0", name.Insecure)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}

	platformNode(t, "linux", "amd64")

	opsAddr := testenv.FreeAddr(t)
	// TestManager runs a DependencyProxy controller of its own in this
	// process: the names may repeat.
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0", Cache: CacheOptions(), Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&DependencyProxyReconciler{Client: mgr.GetClient(), Scheme: scheme, Recorder: mgr.GetEventRecorder("depproxy"),
		ProxyImage: DefaultImage, SummaryInterval: time.Second,
		Summaries: HTTPSummaries{BaseURL: func(*depproxyv1.DependencyProxy) string { return "http://" + opsAddr }}}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	startManager(t, mgr)

	ns := namespace(t)
	storageSecret(t, ns, "minio", map[string]string{"AWS_ACCESS_KEY_ID": m.AccessKey, "AWS_SECRET_ACCESS_KEY": m.SecretKey})
	dp := &depproxyv1.DependencyProxy{
		ObjectMeta: metav1.ObjectMeta{Name: "warm", Namespace: ns},
		Spec: depproxyv1.DependencyProxySpec{
			Upstream: depproxyv1.UpstreamSpec{URL: front.URL()},
			Storage: depproxyv1.StorageSpec{Endpoint: m.Addr, Bucket: "keep-cache", Prefix: ns, Insecure: true,
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
			Keep: &depproxyv1.KeepSpec{InUse: true, Warm: true},
		},
	}
	if err := k8sClient.Create(ctx, dp); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Deployment and the keep ConfigMap are made", func() bool {
		return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "warm-depproxy"}, &appsv1.Deployment{}) == nil &&
			k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "warm-depproxy-keep"}, &corev1.ConfigMap{}) == nil
	})
	logs := runRendered(t, ns, "warm-depproxy", testenv.FreeAddr(t), opsAddr)
	markAvailable(t, ns, "warm-depproxy", 1)

	front.Reset()
	image := "warm-depproxy." + ns + ".svc:5000/org/worker:2.0"
	worker := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "worker", Namespace: ns}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To[int32](0),
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "worker"}},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "worker"}}, Spec: podSpec(image)},
	}}
	created := time.Now()
	if err := k8sClient.Create(ctx, worker); err != nil {
		t.Fatal(err)
	}
	store := m.Storage(t, "keep-cache", ns)
	blobs := []v1.Hash{}
	mf, _ := amd64.Manifest()
	blobs = append(blobs, mf.Config.Digest)
	for _, l := range mf.Layers {
		blobs = append(blobs, l.Digest)
	}
	for deadline := created.Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		all := true
		for _, b := range blobs {
			if _, err := store.Stat(ctx, "blobs/"+b.Algorithm+"/"+b.Hex); err != nil {
				all = false
			}
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			cm := &corev1.ConfigMap{}
			k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "warm-depproxy-keep"}, cm)
			t.Fatalf("the workload's image is not cached within 60 s; keep files %q; proxy log:\n%s", cm.Data, logs)
		}
	}
	t.Logf("cached %s after the Deployment was created", time.Since(created).Round(100*time.Millisecond))
	if front.Count(http.MethodGet, "blobs") != len(blobs) {
		t.Errorf("the upstream sent %d blobs, want the %d of the node's platform", front.Count(http.MethodGet, "blobs"), len(blobs))
	}
	if _, err := store.Stat(ctx, layout.Tag(front.Addr, "org/worker", "2.0")); err != nil {
		t.Errorf("the tag is not cached: %v", err)
	}
	eventually(t, "the status says the image is warmed", func() bool {
		k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
		c := dp.Status.Cache
		return c != nil && c.KeptCount == 1 && len(c.Kept) == 1 && c.Kept[0].Warmed && c.Kept[0].Pinned && len(c.Kept[0].Children) == 1
	})
	assertCondition(t, dp, depproxyv1.ConditionWarmed, metav1.ConditionTrue, depproxyv1.ReasonAllWarmed)
}

// A hostile namespace admin's cache with spec.keep: it learns and pins
// nothing of another namespace's workloads, not even those naming its
// endpoint; only a cluster admin's NodeMirror widens what it serves.
func TestKeepStaysInTheNamespace(t *testing.T) {
	ctx := context.Background()
	ns, victim := namespace(t), namespace(t)
	mallory := asNamespaceAdmin(t, ns, "mallory-keep")
	if err := mallory.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "minio", Namespace: ns},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}}); err != nil {
		t.Fatal(err)
	}
	dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "spy", Namespace: ns}, Spec: depproxyv1.DependencyProxySpec{
		Storage: depproxyv1.StorageSpec{Endpoint: "m:9000", Bucket: "cache", Prefix: ns, CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
		Keep:    &depproxyv1.KeepSpec{InUse: true, Warm: true, Revisions: 10}}}
	if err := mallory.Create(ctx, dp); err != nil {
		t.Fatalf("the namespace admin may not create a keeping cache: %v", err)
	}
	if err := mallory.List(ctx, &corev1.PodList{}, client.InNamespace(victim)); err == nil {
		t.Fatal("the namespace admin can list the other namespace's Pods: the test proves nothing")
	}
	for i, img := range []string{"spy-depproxy." + ns + ".svc:5000/secret/app:1", "docker.io/secret/internal:2"} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: victim}, Spec: podSpec(img)}
		if err := k8sClient.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	own := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "own", Namespace: ns}, Spec: podSpec("spy-depproxy." + ns + ".svc:5000/library/busybox:1")}
	if err := k8sClient.Create(ctx, own); err != nil {
		t.Fatal(err)
	}
	r, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, dp)
	keep := func() string {
		cm := &corev1.ConfigMap{}
		if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "spy-depproxy-keep"}, cm); err != nil {
			t.Fatal(err)
		}
		return cm.Data[pinnedKey] + cm.Data[warmKey]
	}
	if got := keep(); strings.Contains(got, "secret") || !strings.Contains(got, "docker.io/library/busybox:1") {
		t.Fatalf("the tenant's keep files: %q: want its own image, nothing of the other namespace's", got)
	}

	nm := nodeMirror(t, "keep-"+ns, dp, 30561, "docker.io")
	reconcileMirror(t, newMirrorReconciler(t), nm)
	reconcileProxy(t, r, dp)
	if got := keep(); !strings.Contains(got, "docker.io/secret/internal:2") || strings.Contains(got, "secret/app") {
		t.Fatalf("with the cluster admin's NodeMirror for docker.io: %q; want the nodes' docker.io images, still not the other namespace's endpoint images", got)
	}
}

// A cache a NodeMirror names keeps, of other namespaces, only the images
// of the registries that NodeMirror holds and the cache serves, and
// only from Pods on the nodes it selects: not a registry another
// NodeMirror holds, not one the cache does not serve, not a Pod
// elsewhere or unscheduled, not a template that could run anywhere.
func TestKeptImagesOfANodeMirrorStayWithItsRegistriesAndNodes(t *testing.T) {
	dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "spy", Namespace: "mallory"}, Spec: depproxyv1.DependencyProxySpec{
		Upstreams: []depproxyv1.RegistryUpstream{
			{Registry: "docker.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://registry-1.docker.io"}},
			{Registry: "ghcr.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://ghcr.io"}},
		},
		Keep: &depproxyv1.KeepSpec{InUse: true, Warm: true}}}
	// docker.io: held by another NodeMirror; quay.io: not served.
	nm := depproxyv1.NodeMirror{Spec: depproxyv1.NodeMirrorSpec{Cache: depproxyv1.CacheReference{Namespace: "mallory", Name: "spy"},
		Registries: []string{"docker.io", "ghcr.io", "quay.io"}, NodeSelector: map[string]string{"pool": "spy"}},
		Status: depproxyv1.NodeMirrorStatus{Registries: []depproxyv1.RegistryMirrorStatus{
			{Registry: "docker.io", HeldBy: "first", Reason: depproxyv1.ReasonNodeMirrorConflict, Message: "held"},
			{Registry: "ghcr.io"},
			{Registry: "quay.io", Reason: depproxyv1.ReasonRegistryNotServed, Message: "not served"},
		}}}
	nodes := []corev1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "in", Labels: map[string]string{"pool": "spy"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "out"}},
	}
	pod := func(name, node, image string) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "victim", Name: name}, Spec: func() corev1.PodSpec {
			s := podSpec(image)
			s.NodeName = node
			return s
		}()}
	}
	w := workloads{
		Pods: []corev1.Pod{
			pod("held-elsewhere", "in", "docker.io/secret/internal:2"),
			pod("not-served", "in", "quay.io/secret/q:1"),
			pod("other-node", "out", "ghcr.io/secret/elsewhere:1"),
			pod("unscheduled", "", "ghcr.io/secret/pending:1"),
			pod("visible", "in", "ghcr.io/org/shared:1"),
		},
		Deployments: []appsv1.Deployment{{ObjectMeta: metav1.ObjectMeta{Namespace: "victim", Name: "d"},
			Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: podSpec("ghcr.io/secret/template:1")}}}},
	}
	pinned, warm := keptImages(dp, scopeOf(dp, []depproxyv1.NodeMirror{nm}, nodes), w)
	want := []string{"ghcr.io/org/shared:1"}
	if !slices.Equal(pinned, want) || !slices.Equal(warm, want) {
		t.Fatalf("pinned %q, warm %q; want only %q, the selected node's image of the registry the NodeMirror holds", pinned, warm, want)
	}

	// Without a nodeSelector every node is selected, templates too; still
	// nothing of the registries it does not hold.
	nm.Spec.NodeSelector = nil
	pinned, _ = keptImages(dp, scopeOf(dp, []depproxyv1.NodeMirror{nm}, nodes), w)
	want = []string{"ghcr.io/org/shared:1", "ghcr.io/secret/elsewhere:1", "ghcr.io/secret/pending:1", "ghcr.io/secret/template:1"}
	if !slices.Equal(pinned, want) {
		t.Fatalf("every node selected: pinned %q, want %q", pinned, want)
	}

	// A NodeMirror whose status is not written yet holds nothing.
	nm.Status.Registries = nil
	if pinned, _ = keptImages(dp, scopeOf(dp, []depproxyv1.NodeMirror{nm}, nodes), w); len(pinned) != 0 {
		t.Fatalf("a NodeMirror that holds nothing yet: pinned %q", pinned)
	}
}

// The keep files leave out what the cache's own access rules refuse: a
// workload's image, by tag or by digest, and a line of spec.keep.images.
func TestKeptImagesFollowTheAccessRules(t *testing.T) {
	dp := testProxy() // team-a in tenants, pulling through quay.io
	dp.Spec.Access = &depproxyv1.AccessSpec{Deny: []string{"quay.io/org/secret", "quay.io/org/app:old"}}
	dp.Spec.Keep = &depproxyv1.KeepSpec{InUse: true, Warm: true,
		Images: []string{"quay.io/org/secret:1", "quay.io/org/app:2", "quay.io/org/app:old"}}
	ep := "team-a-depproxy.tenants.svc:5000"
	digest := "sha256:" + strings.Repeat("b", 64)
	w := workloads{Pods: []corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "tenants", Name: "p"}, Spec: podSpec(ep+"/org/secret:1", ep+"/org/secret@"+digest, ep+"/org/web:1", ep+"/org/app:old")},
	}}
	pinned, warm := keptImages(dp, scopeOf(dp, nil, nil), w)
	if want := []string{"quay.io/org/app:2", "quay.io/org/web:1"}; !slices.Equal(pinned, want) {
		t.Errorf("pinned %q, want %q", pinned, want)
	}
	if want := []string{"quay.io/org/web:1"}; !slices.Equal(warm, want) {
		t.Errorf("warm %q, want %q", warm, want)
	}

	// An allow list: only what it names.
	dp.Spec.Access = &depproxyv1.AccessSpec{Allow: []string{"quay.io/org/web"}}
	if pinned, _ = keptImages(dp, scopeOf(dp, nil, nil), w); !slices.Equal(pinned, []string{"quay.io/org/web:1"}) {
		t.Errorf("with an allow list: pinned %q", pinned)
	}
}

// Image volumes (spec.volumes[].image.reference) are images in use: a
// Pod's and a workload template's are kept as its containers' are, and
// survive the manager cache's stripping of workloads.
func TestKeptImagesCountImageVolumes(t *testing.T) {
	dp := testProxy() // team-a in tenants, pulling through quay.io
	dp.Spec.Keep = &depproxyv1.KeepSpec{InUse: true}
	ep := "team-a-depproxy.tenants.svc:5000"
	withVolume := func(spec corev1.PodSpec, ref string) corev1.PodSpec {
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "model", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: ref}}},
			corev1.Volume{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
		return spec
	}
	pod := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "tenants", Name: "serving"},
		Spec: withVolume(podSpec(ep+"/org/server:1"), ep+"/org/model:v3"), Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	deploy := appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "tenants", Name: "next"},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: withVolume(podSpec(ep+"/org/server:2"), ep+"/org/model:v4")}}}
	// As the manager's cache holds them.
	strippedPod, _ := keepTransform(&pod)
	strippedDeploy, _ := keepTransform(&deploy)
	w := workloads{Pods: []corev1.Pod{*strippedPod.(*corev1.Pod)}, Deployments: []appsv1.Deployment{*strippedDeploy.(*appsv1.Deployment)}}
	pinned, _ := keptImages(dp, scopeOf(dp, nil, nil), w)
	want := []string{"quay.io/org/model:v3", "quay.io/org/model:v4", "quay.io/org/server:1", "quay.io/org/server:2"}
	if !slices.Equal(pinned, want) {
		t.Fatalf("pinned %q, want %q", pinned, want)
	}
	if vs := strippedPod.(*corev1.Pod).Spec.Volumes; len(vs) != 1 || vs[0].Image == nil {
		t.Errorf("the stripped Pod keeps volumes %+v, want the image volume alone", vs)
	}
}
