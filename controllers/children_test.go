package controllers

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/settings"
)

// The builders are pure: these run without a cluster.

func testProxy() *depproxyv1.DependencyProxy {
	return &depproxyv1.DependencyProxy{
		ObjectMeta: metav1.ObjectMeta{Name: "team-a", Namespace: "tenants"},
		Spec: depproxyv1.DependencyProxySpec{
			Upstream: depproxyv1.UpstreamSpec{URL: "https://quay.io", MirrorOf: []string{"quay.io", "mirror.internal:5000"}},
			Storage: depproxyv1.StorageSpec{Endpoint: "minio:9000", Bucket: "cache", Prefix: "/team-a/", Insecure: true,
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "creds"}},
			RecheckInterval:   metav1.Duration{Duration: 90 * time.Second},
			PrefetchPlatforms: []string{"linux/amd64", "linux/arm64"},
		},
	}
}

func TestProxySettings(t *testing.T) {
	f := proxySettings(testProxy())
	if f.Storage != "s3://cache/team-a" || f.Upstream.String() != "https://quay.io" || f.RecheckInterval.Std() != 90*time.Second ||
		f.PrefetchPlatforms != "linux/amd64,linux/arm64" || f.Listen != ":5000" || !f.S3Insecure ||
		f.UpstreamMirrorOf.String() != "quay.io,mirror.internal:5000" {
		t.Fatalf("%+v", f)
	}
}

// What the operator renders is read back as the proxy reads it, and a
// spec the proxy would refuse stalls with the proxy's own reason.
func TestRenderedSettingsAreReadAsTheProxyReadsThem(t *testing.T) {
	cm, err := desiredConfigMap(testProxy(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	read, err := settings.Parse([]byte(cm.Data[configKey]))
	if err != nil || read.Validate() != nil {
		t.Fatalf("the rendered file: %v\n%s", err, cm.Data[configKey])
	}
	if read.Storage != "s3://cache/team-a" || read.MaxDownloads != settings.Defaults().MaxDownloads {
		t.Fatalf("read back: %+v", read)
	}
	dp := testProxy()
	dp.Spec.Upstreams = []depproxyv1.RegistryUpstream{
		{Registry: "ghcr.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://ghcr.io"}},
		{Registry: "ghcr.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://ghcr.example"}},
	}
	_, err = desiredConfigMap(dp, nil, nil)
	var re *reconcileError
	if !errors.As(err, &re) || re.Reason != depproxyv1.ReasonInvalidSettings || re.retry != retryNever ||
		!strings.Contains(re.Message, "ghcr.io is configured twice") {
		t.Fatalf("a spec the proxy refuses: %v", err)
	}
}

// spec.audit writes the audit log to the proxy's standard output.
func TestAuditSettings(t *testing.T) {
	dp := testProxy()
	if f := proxySettings(dp); f.AuditLog != "" {
		t.Fatalf("audit log %q without spec.audit", f.AuditLog)
	}
	dp.Spec.Audit = &depproxyv1.AuditSpec{Enabled: true, Blobs: true}
	if f := proxySettings(dp); f.AuditLog != "-" || !f.AuditBlobs {
		t.Fatalf("spec.audit: %q %v", f.AuditLog, f.AuditBlobs)
	}
}

// spec.storage.hot: the proxy keeps hot blobs on a volume of each pod
// of its own, an emptyDir or a volume of the class asked for.
func TestHotTier(t *testing.T) {
	dp := testProxy()
	dp.Spec.Storage.Hot = &depproxyv1.HotTierSpec{Size: resource.MustParse("20Gi")}
	cm, err := desiredConfigMap(dp, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	read, err := settings.Parse([]byte(cm.Data[configKey]))
	if err != nil || read.HotDir != hotMountPath || read.HotSize != settings.Size(20<<30) || read.SpoolDir == "" {
		t.Fatalf("hot tier settings: %+v, %v", read, err)
	}
	pod := desiredDeployment(dp, "img", "", "h", "s").Spec.Template.Spec
	volume := func(name string) *corev1.Volume {
		for i := range pod.Volumes {
			if pod.Volumes[i].Name == name {
				return &pod.Volumes[i]
			}
		}
		return nil
	}
	v := volume("hot")
	if v == nil || v.EmptyDir == nil || v.EmptyDir.SizeLimit.Value() != 25<<30 {
		t.Fatalf("hot volume: %+v", v)
	}
	mounted := false
	for _, m := range pod.Containers[0].VolumeMounts {
		mounted = mounted || (m.Name == "hot" && m.MountPath == read.HotDir)
	}
	if !mounted {
		t.Fatalf("the hot volume is not mounted at %s", read.HotDir)
	}

	dp.Spec.Storage.Hot.StorageClassName = ptr.To("local-nvme")
	pod = desiredDeployment(dp, "img", "", "h", "s").Spec.Template.Spec
	v = volume("hot")
	if v == nil || v.Ephemeral == nil || *v.Ephemeral.VolumeClaimTemplate.Spec.StorageClassName != "local-nvme" {
		t.Fatalf("hot volume of a class: %+v", v)
	}
	dp.Spec.Storage.Hot = nil
	if pod = desiredDeployment(dp, "img", "", "h", "s").Spec.Template.Spec; volume("hot") != nil {
		t.Fatal("a hot volume without spec.storage.hot")
	}
}

func TestConfigHashFollowsTheConfig(t *testing.T) {
	a, _ := desiredConfigMap(testProxy(), nil, nil)
	b, _ := desiredConfigMap(testProxy(), nil, nil)
	if configHash(a) != configHash(b) {
		t.Fatal("the same spec hashes differently")
	}
	dp := testProxy()
	dp.Spec.RecheckInterval.Duration = time.Minute
	c, _ := desiredConfigMap(dp, nil, nil)
	if configHash(a) == configHash(c) {
		t.Fatal("a changed config keeps its hash: pods would not roll")
	}
	// New access rules: the proxy applies them from the file, no roll.
	dp = testProxy()
	dp.Spec.Access = &depproxyv1.AccessSpec{Deny: []string{"quay.io/team/bad"}}
	d, err := desiredConfigMap(dp, nil, nil)
	if err != nil || !strings.Contains(d.Data[configKey], "quay.io/team/bad") {
		t.Fatalf("spec.access is not in the config file: %v\n%+v", err, d)
	}
	if configHash(a) != configHash(d) {
		t.Fatal("new access rules roll the pods")
	}
	dp.Spec.Access.Allow = []string{"docker.io/a**b"}
	if _, err := desiredConfigMap(dp, nil, nil); err == nil || !strings.Contains(err.Error(), "access rule") {
		t.Fatalf("an access rule the proxy refuses: %v", err)
	}
	// A rule for a registry the cache does not serve guards nothing.
	dp.Spec.Access = &depproxyv1.AccessSpec{Deny: []string{"docker.io/library/bad"}}
	if _, err := desiredConfigMap(dp, nil, nil); err == nil || !strings.Contains(err.Error(), "no upstream serves or mirrors") {
		t.Fatalf("a rule for a registry no upstream serves: %v", err)
	}
}

func TestImageOverride(t *testing.T) {
	dp := testProxy()
	if got := desiredDeployment(dp, "default:1", "", "h", "s").Spec.Template.Spec.Containers[0].Image; got != "default:1" {
		t.Errorf("image %s", got)
	}
	dp.Spec.Image = "mine:2"
	if got := desiredDeployment(dp, "default:1", "", "h", "s").Spec.Template.Spec.Containers[0].Image; got != "mine:2" {
		t.Errorf("image %s", got)
	}
}

func TestServiceMonitorSelectsTheService(t *testing.T) {
	dp := testProxy()
	sm := desiredServiceMonitor(dp)
	sel := sm.Object["spec"].(map[string]any)["selector"].(map[string]any)["matchLabels"].(map[string]any)
	for k, v := range desiredService(dp).Labels {
		if sel[k] != v {
			t.Errorf("ServiceMonitor selector %v misses label %s=%s", sel, k, v)
		}
	}
}

func TestCleanupResult(t *testing.T) {
	at := metav1.Now()
	r := cleanupResult(at, true, "log line\n{\"deletedManifests\":1,\"deletedBlobs\":2,\"freedBytes\":2048}\n")
	if r.DeletedManifests != 1 || r.DeletedBlobs != 2 || r.Freed != "2Ki" || r.Message != "" {
		t.Errorf("%+v", r)
	}
	r = cleanupResult(at, false, "error: cannot reach storage: connection refused")
	if r.Succeeded || !strings.Contains(r.Message, "connection refused") {
		t.Errorf("%+v", r)
	}
}

func TestSummaryIsBounded(t *testing.T) {
	var w report.Summary
	w.Hits, w.Misses, w.Bytes, w.ImageCount = 93, 7, 3<<30, 100000
	for i := 0; i < 500; i++ {
		w.Images = append(w.Images, report.SummaryImage{Registry: "ghcr.io", Repository: "r", Tag: "t"})
	}
	s := toCacheSummary(w, metav1.Now())
	if len(s.Images) != maxSummaryImages || s.Images[0].Registry != "ghcr.io" || s.HitRatio != "0.93" || s.Size != "3Gi" || s.ImageCount != 100000 {
		t.Errorf("images %d, ratio %s, size %s, count %d", len(s.Images), s.HitRatio, s.Size, s.ImageCount)
	}
}

// The cache's own Service stays cluster-internal: only a NodeMirror
// opens a port on the nodes.
func TestServiceIsClusterInternal(t *testing.T) {
	if svc := desiredService(testProxy()); svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.Ports[0].NodePort != 0 {
		t.Fatalf("service: %+v", svc.Spec)
	}
}

// A rollout is not over while pods of the old spec still serve: they
// answer with the old config.
func TestReadyOnlyWhenTheOldPodsAreGone(t *testing.T) {
	dp := testProxy()
	d := &appsv1.Deployment{Status: appsv1.DeploymentStatus{Replicas: 2, UpdatedReplicas: 1, AvailableReplicas: 2}}
	if ready(dp, d) {
		t.Error("ready with an old pod still serving")
	}
	d.Status.Replicas = 1
	if !ready(dp, d) {
		t.Error("not ready with only the new pod")
	}
}

// The node agent runs where the NodeMirror says, for the registries it
// holds (an upstream's mirrorOf included), with the operator's image
// whatever the cache's spec.image, mounting the runtime's directory only;
// its NodePort Service selects the cache's pods; scrapes go to the
// metrics port.
func TestNodeAgentAndServiceMonitor(t *testing.T) {
	dp := testProxy()
	dp.Spec.Image = "attacker.example/rootkit:1"
	nm := &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: "build-pool", UID: "u1"}, Spec: depproxyv1.NodeMirrorSpec{
		Cache: depproxyv1.CacheReference{Namespace: dp.Namespace, Name: dp.Name}, Registries: []string{"mirror.internal:5000"},
		NodePort: 30500, Runtime: depproxyv1.RuntimeCRIO, NodeSelector: map[string]string{"pool": "build"},
		Tolerations: []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpExists}}}}
	held, ok := servedRegistry(dp, "mirror.internal:5000")
	if !ok || held.Value != "" {
		t.Fatalf("mirrorOf registry %+v %v", held, ok)
	}
	if _, ok := servedRegistry(dp, "registry.k8s.io"); ok {
		t.Fatal("a registry the cache does not serve was found")
	}
	ds := desiredNodeAgent(nm, dp, []settings.Keyed{held}, "operator.example/depproxy:v1", "nodes")
	pod := ds.Spec.Template.Spec
	args := strings.Join(pod.Containers[0].Args, " ")
	if !strings.Contains(args, "--registry mirror.internal:5000") || strings.Contains(args, "--registry quay.io") ||
		!strings.Contains(args, "--format registries.conf") || !strings.Contains(args, "--dir /etc/containers/registries.conf.d") ||
		!strings.Contains(args, "--endpoint http://$(NODE_IP):30500") {
		t.Errorf("args %q", args)
	}
	if pod.Containers[0].Image != "operator.example/depproxy:v1" {
		t.Errorf("the node agent runs %s", pod.Containers[0].Image)
	}
	if len(pod.Volumes) != 1 || pod.Volumes[0].HostPath.Path != "/etc/containers/registries.conf.d" {
		t.Errorf("volumes %+v", pod.Volumes)
	}
	if pod.NodeSelector["pool"] != "build" || len(pod.Tolerations) != 1 || pod.Tolerations[0].Key != "dedicated" ||
		ds.Namespace != "nodes" || ds.Name != "nodemirror-build-pool" {
		t.Errorf("placement: %v %v %s/%s", pod.NodeSelector, pod.Tolerations, ds.Namespace, ds.Name)
	}
	svc := desiredNodePortService(nm, dp)
	if svc.Namespace != dp.Namespace || svc.Spec.Type != corev1.ServiceTypeNodePort || svc.Spec.Ports[0].NodePort != 30500 ||
		svc.Spec.Selector["app.kubernetes.io/instance"] != dp.Name {
		t.Errorf("node port service %s/%s %+v", svc.Namespace, svc.Name, svc.Spec)
	}
	nm.Spec.Runtime, nm.Spec.ConfigPath = depproxyv1.RuntimeContainerd, ""
	if dir := nm.Spec.ConfigDir(); dir != "/etc/containerd/certs.d" {
		t.Errorf("containerd's directory: %s", dir)
	}
	sm := desiredServiceMonitor(dp)
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 1 || eps[0].(map[string]any)["port"] != "metrics" {
		t.Errorf("ServiceMonitor endpoints %v", eps)
	}
}

// With spec.stargz the node agent also writes the stargz snapshotter's
// config file, mounting that file's directory (which the snapshotter's
// installation made: the agent does not create it), and nothing more.
func TestNodeAgentWritesTheStargzConfig(t *testing.T) {
	dp := testProxy()
	nm := &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: "lazy"}, Spec: depproxyv1.NodeMirrorSpec{
		Cache: depproxyv1.CacheReference{Namespace: dp.Namespace, Name: dp.Name}, Registries: []string{"docker.io"},
		NodePort: 30500, Stargz: &depproxyv1.StargzSnapshotter{}}}
	held := []settings.Keyed{{Registry: "docker.io"}}
	for _, c := range []struct{ configPath, dir string }{
		{"", "/etc/containerd-stargz-grpc"},
		{"/opt/stargz/etc/config.toml", "/opt/stargz/etc"},
	} {
		nm.Spec.Stargz.ConfigPath = c.configPath
		pod := desiredNodeAgent(nm, dp, held, "operator.example/depproxy:v1", "nodes").Spec.Template.Spec
		args := strings.Join(pod.Containers[0].Args, " ")
		want := "--stargz-config " + c.dir + "/config.toml"
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
		if len(pod.Volumes) != 2 || pod.Volumes[1].HostPath.Path != c.dir || *pod.Volumes[1].HostPath.Type != corev1.HostPathDirectory ||
			len(pod.Containers[0].VolumeMounts) != 2 || pod.Containers[0].VolumeMounts[1].MountPath != c.dir {
			t.Errorf("volumes %+v, mounts %+v", pod.Volumes, pod.Containers[0].VolumeMounts)
		}
	}
	nm.Spec.Stargz = nil
	if args := strings.Join(desiredNodeAgent(nm, dp, held, "i", "nodes").Spec.Template.Spec.Containers[0].Args, " "); strings.Contains(args, "stargz") {
		t.Errorf("without spec.stargz: %q", args)
	}
}

// An upstream with a credential provider: the kubelet's config file for
// its plugin, matching its host, with the token audience and the
// ServiceAccount's annotations; the plugins from the cluster admin's
// image, the token projected for the audience; the proxy's settings
// point at all three. Without the admin's image, the spec stalls.
func TestCredentialProviders(t *testing.T) {
	dp := testProxy()
	dp.Spec.Upstream = depproxyv1.UpstreamSpec{URL: "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
		CredentialProvider: &depproxyv1.CredentialProviderSpec{Name: "ecr-credential-provider", ServiceAccountTokenAudience: "sts.amazonaws.com"}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{
		"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/cache", lastAppliedAnnotation: "{}"}}}
	cm, err := desiredConfigMap(dp, nil, sa)
	if err != nil {
		t.Fatal(err)
	}
	cfg := cm.Data[credProvidersKey]
	for _, want := range []string{"name: ecr-credential-provider", "- 123456789012.dkr.ecr.eu-west-1.amazonaws.com", "serviceAccountTokenAudience: sts.amazonaws.com",
		"- eks.amazonaws.com/role-arn", "apiVersion: credentialprovider.kubelet.k8s.io/v1"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("the credential provider config lacks %q:\n%s", want, cfg)
		}
	}
	if a := cm.Data[saAnnotationsKey]; !strings.Contains(a, "role/cache") || strings.Contains(a, lastAppliedAnnotation) {
		t.Errorf("the ServiceAccount's annotations: %s", a)
	}
	read, err := settings.Parse([]byte(cm.Data[configKey]))
	if err != nil || read.CredProviderConfig != configDir+"/"+credProvidersKey || read.CredProviderBinDir != credProvidersBinDir ||
		read.CredProviderTokens != credProvidersTokenDir {
		t.Fatalf("settings: %+v, %v", read, err)
	}
	pod := desiredDeployment(dp, "img", "example.test/plugins:v1", "h", "s").Spec.Template.Spec
	var image, token bool
	for _, v := range pod.Volumes {
		if v.Image != nil && v.Image.Reference == "example.test/plugins:v1" {
			image = true
		}
		if v.Projected != nil {
			for _, src := range v.Projected.Sources {
				token = token || (src.ServiceAccountToken != nil && src.ServiceAccountToken.Audience == "sts.amazonaws.com" && src.ServiceAccountToken.Path == "sts.amazonaws.com/token")
			}
		}
	}
	mounted := map[string]bool{}
	for _, m := range pod.Containers[0].VolumeMounts {
		mounted[m.MountPath] = true
	}
	if !image || !token || !mounted[credProvidersBinDir] || !mounted[credProvidersTokenDir] {
		t.Fatalf("plugins from the admin's image %v, a projected token %v, mounts %v", image, token, mounted)
	}
	// The annotations change: the pods do not roll (the file is re-read).
	sa.Annotations["eks.amazonaws.com/role-arn"] = "arn:aws:iam::123456789012:role/other"
	again, _ := desiredConfigMap(dp, nil, sa)
	if configHash(again) != configHash(cm) {
		t.Error("a changed annotation value rolls the pods")
	}
}

func TestCredentialProvidersNeedTheAdminsPlugins(t *testing.T) {
	ns := namespace(t)
	dp := sampleProxy(t, ns)
	dp.Spec.Upstream.CredentialProvider = &depproxyv1.CredentialProviderSpec{Name: "ecr-credential-provider"}
	if err := k8sClient.Update(context.Background(), dp); err != nil {
		t.Fatal(err)
	}
	r, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, dp)
	k8sClient.Get(context.Background(), client.ObjectKeyFromObject(dp), dp)
	c := assertCondition(t, dp, depproxyv1.ConditionStalled, metav1.ConditionTrue, depproxyv1.ReasonNoCredentialProviders)
	if !strings.Contains(c.Message, "--credential-provider-image") {
		t.Errorf("the message does not say what is missing: %s", c.Message)
	}
	r.CredentialProviderImage = "example.test/plugins:v1"
	reconcileProxy(t, r, dp)
	k8sClient.Get(context.Background(), client.ObjectKeyFromObject(dp), dp)
	assertCondition(t, dp, depproxyv1.ConditionDegraded, metav1.ConditionFalse, depproxyv1.ReasonReconciled)
}

func TestCredentialsCondition(t *testing.T) {
	dp := testProxy()
	if credentialsCondition(dp, &depproxyv1.CacheSummary{}) != nil {
		t.Fatal("a condition without credential providers")
	}
	dp.Spec.Upstream.CredentialProvider = &depproxyv1.CredentialProviderSpec{Name: "ecr-credential-provider"}
	c := credentialsCondition(dp, &depproxyv1.CacheSummary{CredentialErrors: map[string]string{"x.dkr.ecr.eu-west-1.amazonaws.com": "no EC2 IMDS role found"}})
	if c.Status != metav1.ConditionFalse || c.Reason != depproxyv1.ReasonCredentialProviderFailed || !strings.Contains(c.Message, "x.dkr.ecr.eu-west-1.amazonaws.com: no EC2 IMDS role found") {
		t.Fatalf("%+v", c)
	}
	if c := credentialsCondition(dp, &depproxyv1.CacheSummary{}); c.Status != metav1.ConditionTrue {
		t.Fatalf("%+v", c)
	}
}

// The cache's tally of its sharing nodes goes to the status with a size
// for people.
func TestSummarySharing(t *testing.T) {
	at := metav1.Now()
	s := toCacheSummary(report.Summary{Sharing: &report.Sharing{Nodes: 4, StoreBytes: 5 << 30, PeerBytes: 12, CacheBytes: 3}}, at)
	want := &depproxyv1.SharingSummary{Nodes: 4, StoreBytes: 5 << 30, Store: "5Gi", FromPeersBytes: 12, FromCacheBytes: 3, ReportedAt: at}
	if !equality.Semantic.DeepEqual(s.Sharing, want) {
		t.Errorf("sharing %+v, want %+v", s.Sharing, want)
	}
	if s := toCacheSummary(report.Summary{}, at); s.Sharing != nil {
		t.Errorf("a cache no node shares through: sharing %+v", s.Sharing)
	}
}
