package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

func TestCreateBuildsOwnedChildren(t *testing.T) {
	ns := namespace(t)
	dp := sampleProxy(t, ns)
	r, rec := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, dp)
	ctx := context.Background()

	name := client.ObjectKey{Namespace: ns, Name: "team-a-depproxy"}
	for _, obj := range []client.Object{&corev1.ConfigMap{}, &appsv1.Deployment{}, &corev1.Service{}, &corev1.ServiceAccount{}} {
		if err := k8sClient.Get(ctx, name, obj); err != nil {
			t.Fatalf("%T: %v", obj, err)
		}
		// envtest runs no garbage collector: the owner reference is what
		// deletes the child with its DependencyProxy.
		if ref := metav1.GetControllerOf(obj); ref == nil || ref.Kind != "DependencyProxy" || ref.Name != "team-a" || !ptr.Deref(ref.BlockOwnerDeletion, false) {
			t.Errorf("%T is not owned by the DependencyProxy: %+v", obj, obj.GetOwnerReferences())
		}
	}

	cm := &corev1.ConfigMap{}
	k8sClient.Get(ctx, name, cm)
	for _, line := range []string{"upstream:\n- https://registry-1.docker.io", "storage: s3://cache/" + ns + "/team-a", "s3-endpoint: minio.minio:9000", "s3-insecure: true", "listen: :5000"} {
		if !strings.Contains(cm.Data["config.yaml"], line) {
			t.Errorf("config.yaml lacks %q:\n%s", line, cm.Data["config.yaml"])
		}
	}

	d := &appsv1.Deployment{}
	k8sClient.Get(ctx, name, d)
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	if c.Image != "example.test/depproxy:v1" || strings.Join(c.Args, " ") != "serve --config /etc/depproxy/config.yaml" {
		t.Errorf("container image %s args %v", c.Image, c.Args)
	}
	if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" ||
		c.ReadinessProbe.HTTPGet.Port.StrVal != "metrics" || !strings.Contains(cm.Data["config.yaml"], "metrics-listen: :9090") {
		t.Errorf("probes: %+v %+v", c.LivenessProbe, c.ReadinessProbe)
	}
	if len(c.Env) != 2 || c.Env[0].ValueFrom.SecretKeyRef.Name != "minio" || c.Env[0].Name != "AWS_ACCESS_KEY_ID" {
		t.Errorf("env: %+v", c.Env)
	}
	if !*pod.SecurityContext.RunAsNonRoot || !*c.SecurityContext.ReadOnlyRootFilesystem || *c.SecurityContext.AllowPrivilegeEscalation {
		t.Errorf("not locked down: %+v %+v", pod.SecurityContext, c.SecurityContext)
	}
	if d.Spec.Template.Annotations[configHashKey] == "" || *d.Spec.Replicas != 1 {
		t.Errorf("template annotations %v, replicas %d", d.Spec.Template.Annotations, *d.Spec.Replicas)
	}
	if !strings.Contains(drain(rec), "Created") {
		t.Error("no Created event")
	}
}

// A second reconcile of an unchanged resource writes nothing: no hot loop.
func TestUnchangedReconcileWritesNothing(t *testing.T) {
	ns := namespace(t)
	dp := sampleProxy(t, ns)
	writes := 0
	count := func() { writes++ }
	c := interceptor.NewClient(k8sClient, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.CreateOption) error {
			count()
			return c.Create(ctx, o, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.UpdateOption) error {
			count()
			return c.Update(ctx, o, opts...)
		},
		Patch: func(ctx context.Context, c client.WithWatch, o client.Object, p client.Patch, opts ...client.PatchOption) error {
			count()
			return c.Patch(ctx, o, p, opts...)
		},
		Delete: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.DeleteOption) error {
			count()
			return c.Delete(ctx, o, opts...)
		},
		SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, o client.Object, opts ...client.SubResourceUpdateOption) error {
			count()
			return c.SubResource(sub).Update(ctx, o, opts...)
		},
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
			count()
			return c.SubResource(sub).Patch(ctx, o, p, opts...)
		},
	})
	r, _ := newProxyReconciler(c)
	reconcileProxy(t, r, dp)
	if writes == 0 {
		t.Fatal("the first reconcile wrote nothing: the counter is broken")
	}
	writes = 0
	reconcileProxy(t, r, dp)
	if writes != 0 {
		t.Fatalf("a second reconcile of an unchanged resource made %d writes", writes)
	}
}

func TestSpecChangeRollsConfig(t *testing.T) {
	ns := namespace(t)
	dp := sampleProxy(t, ns)
	r, rec := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, dp)
	ctx := context.Background()
	name := client.ObjectKey{Namespace: ns, Name: "team-a-depproxy"}
	d0 := &appsv1.Deployment{}
	k8sClient.Get(ctx, name, d0)
	drain(rec)

	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	dp.Spec.RecheckInterval = metav1.Duration{Duration: 5 * time.Minute}
	dp.Spec.Replicas = ptr.To[int32](3)
	if err := k8sClient.Update(ctx, dp); err != nil {
		t.Fatal(err)
	}
	reconcileProxy(t, r, dp)
	cm, d1 := &corev1.ConfigMap{}, &appsv1.Deployment{}
	k8sClient.Get(ctx, name, cm)
	k8sClient.Get(ctx, name, d1)
	if !strings.Contains(cm.Data["config.yaml"], "recheck-interval: 5m0s") {
		t.Errorf("config not updated:\n%s", cm.Data["config.yaml"])
	}
	if d1.Spec.Template.Annotations[configHashKey] == d0.Spec.Template.Annotations[configHashKey] {
		t.Error("the pod template's config hash did not change: pods would keep the old config")
	}
	if *d1.Spec.Replicas != 3 {
		t.Errorf("replicas %d, want 3", *d1.Spec.Replicas)
	}
	if !strings.Contains(drain(rec), depproxyv1.ReasonConfigRolled) {
		t.Error("no ConfigRolled event")
	}
}

func TestConditionsFollowTheDeployment(t *testing.T) {
	ns := namespace(t)
	dp := sampleProxy(t, ns)
	r, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, dp)
	ctx := context.Background()
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	assertCondition(t, dp, depproxyv1.ConditionProgressing, metav1.ConditionTrue, depproxyv1.ReasonRollingOut)
	assertCondition(t, dp, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonRollingOut)
	if dp.Status.Endpoint != "team-a-depproxy."+ns+".svc:5000" || dp.Status.ObservedGeneration != dp.Generation {
		t.Errorf("endpoint %q, observedGeneration %d", dp.Status.Endpoint, dp.Status.ObservedGeneration)
	}

	// No Deployment controller runs here: report what it would.
	markAvailable(t, ns, "team-a-depproxy", 1)
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	assertCondition(t, dp, depproxyv1.ConditionReady, metav1.ConditionTrue, depproxyv1.ReasonAvailable)
	assertCondition(t, dp, depproxyv1.ConditionProgressing, metav1.ConditionFalse, depproxyv1.ReasonAvailable)
	assertCondition(t, dp, depproxyv1.ConditionDegraded, metav1.ConditionFalse, depproxyv1.ReasonReconciled)
}

func markAvailable(t *testing.T, ns, name string, n int32) {
	t.Helper()
	d := &appsv1.Deployment{}
	if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, d); err != nil {
		t.Fatal(err)
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
	if err := k8sClient.Status().Update(context.Background(), d); err != nil {
		t.Fatal(err)
	}
}

func TestMissingSecretDegrades(t *testing.T) {
	ns := namespace(t)
	dp := &depproxyv1.DependencyProxy{
		ObjectMeta: metav1.ObjectMeta{Name: "nosecret", Namespace: ns},
		Spec: depproxyv1.DependencyProxySpec{Storage: depproxyv1.StorageSpec{Endpoint: "m:9000", Bucket: "cache", Prefix: ns,
			CredentialsSecretRef: corev1.LocalObjectReference{Name: "missing"}}},
	}
	if err := k8sClient.Create(context.Background(), dp); err != nil {
		t.Fatal(err)
	}
	r, rec := newProxyReconciler(k8sClient)
	res := reconcileProxy(t, r, dp)
	if res.RequeueAfter == 0 {
		t.Error("a missing Secret is not retried")
	}
	k8sClient.Get(context.Background(), client.ObjectKeyFromObject(dp), dp)
	c := assertCondition(t, dp, depproxyv1.ConditionDegraded, metav1.ConditionTrue, depproxyv1.ReasonSecretNotFound)
	if !strings.Contains(c.Message, `Secret "missing"`) {
		t.Errorf("message does not say which Secret: %q", c.Message)
	}
	if !strings.Contains(drain(rec), depproxyv1.ReasonSecretNotFound) {
		t.Error("no SecretNotFound event")
	}
	d := &appsv1.Deployment{}
	if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "nosecret-depproxy"}, d); err == nil {
		t.Error("a Deployment was rolled out without its Secret")
	}
}

// Logins: the operator makes the tenant's signing key, mounts it and the
// users into the pods, and rolls them when either changes.
func TestLoginsAreWired(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	storageSecret(t, ns, "minio", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
	dp := &depproxyv1.DependencyProxy{
		ObjectMeta: metav1.ObjectMeta{Name: "locked", Namespace: ns},
		Spec: depproxyv1.DependencyProxySpec{
			Storage: depproxyv1.StorageSpec{Endpoint: "m:9000", Bucket: "cache", Prefix: ns, CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
			Auth:    &depproxyv1.AuthSpec{UsersSecretRef: &corev1.LocalObjectReference{Name: "users"}},
		},
	}
	if err := k8sClient.Create(ctx, dp); err != nil {
		t.Fatal(err)
	}
	r, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	assertCondition(t, dp, depproxyv1.ConditionDegraded, metav1.ConditionTrue, depproxyv1.ReasonSecretNotFound)

	storageSecret(t, ns, "users", map[string]string{"alice": "s3cret"})
	reconcileProxy(t, r, dp)
	key := &corev1.Secret{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "locked-depproxy-token-key"}, key); err != nil {
		t.Fatalf("no signing key Secret: %v", err)
	}
	if !strings.Contains(string(key.Data["key.pem"]), "EC PRIVATE KEY") || metav1.GetControllerOf(key).Name != "locked" {
		t.Errorf("signing key Secret: %v, owner %+v", key.Data, key.OwnerReferences)
	}
	name := client.ObjectKey{Namespace: ns, Name: "locked-depproxy"}
	cm, d := &corev1.ConfigMap{}, &appsv1.Deployment{}
	k8sClient.Get(ctx, name, cm)
	k8sClient.Get(ctx, name, d)
	for _, line := range []string{"users: /etc/depproxy/users", "token-key: /etc/depproxy/token/key.pem", "tenant: " + ns + "/locked"} {
		if !strings.Contains(cm.Data["config.yaml"], line) {
			t.Errorf("config.yaml lacks %q:\n%s", line, cm.Data["config.yaml"])
		}
	}
	mounts := map[string]string{}
	for _, m := range d.Spec.Template.Spec.Containers[0].VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	secrets := map[string]string{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			secrets[v.Name] = v.Secret.SecretName
		}
	}
	if secrets[mounts["/etc/depproxy/users"]] != "users" || secrets[mounts["/etc/depproxy/token"]] != "locked-depproxy-token-key" {
		t.Fatalf("mounts %v, secret volumes %v", mounts, secrets)
	}

	hash := func() string {
		k8sClient.Get(ctx, name, d)
		return d.Spec.Template.Annotations[secretsHashKey]
	}
	before := hash()
	users := &corev1.Secret{}
	k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "users"}, users)
	users.StringData = map[string]string{"bob": "hunter2"}
	if err := k8sClient.Update(ctx, users); err != nil {
		t.Fatal(err)
	}
	reconcileProxy(t, r, dp)
	afterUsers := hash()
	if afterUsers == before {
		t.Error("a new user did not roll the pods")
	}
	// Rotation: delete the key; a new one is made and the pods roll.
	if err := k8sClient.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	reconcileProxy(t, r, dp)
	if hash() == afterUsers {
		t.Error("a rotated signing key did not roll the pods")
	}
}

func TestDefaults(t *testing.T) {
	ns := namespace(t)
	dp := sampleProxy(t, ns)
	k8sClient.Get(context.Background(), client.ObjectKeyFromObject(dp), dp)
	if dp.Spec.Upstream.URL != "https://registry-1.docker.io" || dp.Spec.Auth == nil || !dp.Spec.Auth.Anonymous || *dp.Spec.Replicas != 1 {
		t.Errorf("defaults: %+v", dp.Spec)
	}
}

func TestInvalidSpecsAreRefusedWithAReason(t *testing.T) {
	ns := namespace(t)
	valid := func() *depproxyv1.DependencyProxy {
		return &depproxyv1.DependencyProxy{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "bad-", Namespace: ns},
			Spec: depproxyv1.DependencyProxySpec{Storage: depproxyv1.StorageSpec{Endpoint: "m:9000", Bucket: "cache", Prefix: ns,
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "s"}}},
		}
	}
	cases := []struct {
		name   string
		mutate func(*depproxyv1.DependencyProxy)
		want   string
	}{
		{"upstream not a URL", func(d *depproxyv1.DependencyProxy) { d.Spec.Upstream.URL = "registry-1.docker.io" }, "upstream.url must be a scheme and host"},
		{"upstream with a path", func(d *depproxyv1.DependencyProxy) { d.Spec.Upstream.URL = "https://x.io/v2/foo" }, "upstream.url must be a scheme and host"},
		{"a registry upstream with a path", func(d *depproxyv1.DependencyProxy) {
			d.Spec.Upstreams = []depproxyv1.RegistryUpstream{{Registry: "ghcr.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://ghcr.io/org"}}}
		}, "a registry's url must be a scheme and host"},
		{"a Helm repository without a URL", func(d *depproxyv1.DependencyProxy) {
			d.Spec.Upstreams = []depproxyv1.RegistryUpstream{{Registry: "charts.example", Kind: depproxyv1.UpstreamKindHelm, UpstreamSpec: depproxyv1.UpstreamSpec{URL: "charts.example.com/stable"}}}
		}, "a Helm repository's url is where its index.yaml is"},
		{"a Helm repository with a plugin", func(d *depproxyv1.DependencyProxy) {
			d.Spec.Upstreams = []depproxyv1.RegistryUpstream{{Registry: "charts.example", Kind: depproxyv1.UpstreamKindHelm, UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://charts.example.com",
				CredentialProvider: &depproxyv1.CredentialProviderSpec{Name: "ecr-credential-provider"}}}}
		}, "a Helm repository takes credentialsSecretRef"},
		{"an unknown upstream kind", func(d *depproxyv1.DependencyProxy) {
			d.Spec.Upstreams = []depproxyv1.RegistryUpstream{{Registry: "charts.example", Kind: "git", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://charts.example.com"}}}
		}, "spec.upstreams[0].kind"},
		{"endpoint with scheme", func(d *depproxyv1.DependencyProxy) { d.Spec.Storage.Endpoint = "http://minio:9000" }, "storage.endpoint is host:port"},
		{"bad bucket", func(d *depproxyv1.DependencyProxy) { d.Spec.Storage.Bucket = "Bad_Bucket" }, "spec.storage.bucket"},
		{"both auth modes", func(d *depproxyv1.DependencyProxy) {
			d.Spec.Auth = &depproxyv1.AuthSpec{Anonymous: true, UsersSecretRef: &corev1.LocalObjectReference{Name: "u"}}
		}, "set exactly one of usersSecretRef"},
		{"empty auth", func(d *depproxyv1.DependencyProxy) { d.Spec.Auth = &depproxyv1.AuthSpec{} }, "set exactly one of usersSecretRef"},
		{"negative replicas", func(d *depproxyv1.DependencyProxy) { d.Spec.Replicas = ptr.To[int32](-1) }, "spec.replicas"},
		{"bad platform", func(d *depproxyv1.DependencyProxy) { d.Spec.PrefetchPlatforms = []string{"amd64"} }, "spec.prefetchPlatforms"},
		{"prefix climbing out", func(d *depproxyv1.DependencyProxy) { d.Spec.Storage.Prefix = "team-a/../team-b" }, "storage.prefix may not contain . or .."},
		{"prefix of ..", func(d *depproxyv1.DependencyProxy) { d.Spec.Storage.Prefix = ".." }, "storage.prefix may not contain . or .."},
		{"empty hot tier", func(d *depproxyv1.DependencyProxy) {
			d.Spec.Storage.Hot = &depproxyv1.HotTierSpec{Size: resource.MustParse("0")}
		}, "storage.hot.size must be more than 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dp := valid()
			c.mutate(dp)
			err := k8sClient.Create(context.Background(), dp)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want a refusal mentioning %q", err, c.want)
			}
		})
	}
	// The valid base is accepted: the cases above fail for their reason.
	if err := k8sClient.Create(context.Background(), valid()); err != nil {
		t.Fatalf("the valid spec was refused: %v", err)
	}
	charts := valid()
	charts.Spec.Upstreams = []depproxyv1.RegistryUpstream{
		{Registry: "docker.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://registry-1.docker.io"}},
		{Registry: "charts.example", Kind: depproxyv1.UpstreamKindHelm, UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://charts.example.com/stable"}},
	}
	if err := k8sClient.Create(context.Background(), charts); err != nil {
		t.Fatalf("a Helm repository upstream was refused: %v", err)
	}
	hot := valid()
	hot.Spec.Storage.Hot = &depproxyv1.HotTierSpec{Size: resource.MustParse("20Gi")}
	if err := k8sClient.Create(context.Background(), hot); err != nil {
		t.Fatalf("a hot tier of 20Gi was refused: %v", err)
	}
	bad := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: ns}}
	bad.Spec.RecheckInterval = metav1.Duration{Duration: -time.Second}
	if err := k8sClient.Create(context.Background(), bad); err == nil {
		t.Error("a spec without storage was accepted")
	}
}

func assertCondition(t *testing.T, obj interface{ GetConditions() []metav1.Condition }, typ string, status metav1.ConditionStatus, reason string) *metav1.Condition {
	t.Helper()
	c := meta.FindStatusCondition(obj.GetConditions(), typ)
	if c == nil || c.Status != status || c.Reason != reason {
		t.Fatalf("condition %s: %+v, want %s/%s", typ, c, status, reason)
	}
	return c
}

// drain returns the events recorded so far.
func drain(rec *events.FakeRecorder) string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return strings.Join(out, "\n")
		}
	}
}

// Two caches in overlapping places of one bucket: the later one is
// refused, naming the earlier; the earlier runs on.
func TestOverlappingStorageIsRefused(t *testing.T) {
	nsA, nsB := namespace(t), namespace(t)
	mk := func(ns, prefix string) *depproxyv1.DependencyProxy {
		storageSecret(t, ns, "creds-"+strings.ReplaceAll(prefix, "/", "-"), map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
		dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "cache", Namespace: ns},
			Spec: depproxyv1.DependencyProxySpec{Storage: depproxyv1.StorageSpec{Endpoint: "shared-minio.storage:9000", Bucket: "shared", Prefix: prefix,
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "creds-" + strings.ReplaceAll(prefix, "/", "-")}}}}
		if err := k8sClient.Create(context.Background(), dp); err != nil {
			t.Fatal(err)
		}
		return dp
	}
	first := mk(nsA, nsA)
	time.Sleep(1100 * time.Millisecond) // creation times have a second's resolution
	second := mk(nsB, nsA+"/inside")
	r, rec := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, first)
	reconcileProxy(t, r, second)
	k8sClient.Get(context.Background(), client.ObjectKeyFromObject(first), first)
	k8sClient.Get(context.Background(), client.ObjectKeyFromObject(second), second)
	assertCondition(t, first, depproxyv1.ConditionDegraded, metav1.ConditionFalse, depproxyv1.ReasonReconciled)
	c := assertCondition(t, second, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonStorageConflict)
	if !strings.Contains(c.Message, nsA+"/cache") {
		t.Errorf("the condition does not name the other resource: %q", c.Message)
	}
	if !strings.Contains(drain(rec), depproxyv1.ReasonStorageConflict) {
		t.Error("no StorageConflict event")
	}
	if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: nsB, Name: "cache-depproxy"}, &appsv1.Deployment{}); err == nil {
		t.Error("the conflicting cache was rolled out")
	}
	// A prefix beside it, not inside it, is fine.
	second.Spec.Storage.Prefix = nsA + "-other"
	if err := k8sClient.Update(context.Background(), second); err != nil {
		t.Fatal(err)
	}
	reconcileProxy(t, r, second)
	k8sClient.Get(context.Background(), client.ObjectKeyFromObject(second), second)
	assertCondition(t, second, depproxyv1.ConditionDegraded, metav1.ConditionFalse, depproxyv1.ReasonReconciled)
}

// spec.tls mounts a kubernetes.io/tls Secret and serves HTTPS from it; a
// Secret without a certificate is refused with a reason.
func TestTLSSecret(t *testing.T) {
	ns := namespace(t)
	dp := sampleProxy(t, ns)
	tlsSecret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cache-tls", Namespace: ns}, Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{"ca.crt": []byte("x")}}
	if err := k8sClient.Create(context.Background(), tlsSecret); err != nil {
		t.Fatal(err)
	}
	dp.Spec.TLS = &depproxyv1.TLSSpec{SecretRef: corev1.LocalObjectReference{Name: "cache-tls"}}
	if err := k8sClient.Update(context.Background(), dp); err != nil {
		t.Fatal(err)
	}
	r, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, dp)
	k8sClient.Get(context.Background(), client.ObjectKeyFromObject(dp), dp)
	c := assertCondition(t, dp, depproxyv1.ConditionDegraded, metav1.ConditionTrue, depproxyv1.ReasonInvalidSecret)
	if !strings.Contains(c.Message, "tls.crt") {
		t.Errorf("the message does not say what is missing: %q", c.Message)
	}

	tlsSecret.Data = map[string][]byte{corev1.TLSCertKey: []byte("cert"), corev1.TLSPrivateKeyKey: []byte("key")}
	if err := k8sClient.Update(context.Background(), tlsSecret); err != nil {
		t.Fatal(err)
	}
	reconcileProxy(t, r, dp)
	key := client.ObjectKey{Namespace: ns, Name: "team-a-depproxy"}
	cm := &corev1.ConfigMap{}
	k8sClient.Get(context.Background(), key, cm)
	for _, line := range []string{"tls-cert: /etc/depproxy/tls/tls.crt", "tls-key: /etc/depproxy/tls/tls.key"} {
		if !strings.Contains(cm.Data["config.yaml"], line) {
			t.Errorf("config.yaml lacks %q:\n%s", line, cm.Data["config.yaml"])
		}
	}
	d := &appsv1.Deployment{}
	k8sClient.Get(context.Background(), key, d)
	mounted := false
	for _, v := range d.Spec.Template.Spec.Volumes {
		mounted = mounted || (v.Secret != nil && v.Secret.SecretName == "cache-tls")
	}
	if !mounted {
		t.Errorf("the TLS Secret is not mounted: %+v", d.Spec.Template.Spec.Volumes)
	}
}

// One MinIO Service under its other names (the namespace-relative one,
// .svc, the cluster domain with a trailing dot, its ClusterIP): the same
// bucket and prefix is the same place, and each later cache is refused
// with StorageConflict and gets no Deployment.
func TestStorageConflictThroughAliases(t *testing.T) {
	ctx := context.Background()
	storageNS := namespace(t)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "minio", Namespace: storageNS},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 9000}}, Selector: map[string]string{"app": "minio"}}}
	if err := k8sClient.Create(ctx, svc); err != nil || svc.Spec.ClusterIP == "" {
		t.Fatalf("a Service with a ClusterIP: %v %q", err, svc.Spec.ClusterIP)
	}
	mk := func(ns, name, endpoint string) *depproxyv1.DependencyProxy {
		storageSecret(t, ns, name+"-creds", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
		dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: depproxyv1.DependencyProxySpec{Storage: depproxyv1.StorageSpec{Endpoint: endpoint, Bucket: "aliased", Prefix: "team",
				CredentialsSecretRef: corev1.LocalObjectReference{Name: name + "-creds"}}}}
		if err := k8sClient.Create(ctx, dp); err != nil {
			t.Fatal(err)
		}
		return dp
	}
	first := mk(namespace(t), "first", "minio."+storageNS+":9000")
	time.Sleep(1100 * time.Millisecond) // creation times have a second's resolution
	r, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, first)
	for i, endpoint := range []string{"minio." + storageNS + ".svc:9000", "MINIO." + storageNS + ".svc.cluster.local.:9000",
		svc.Spec.ClusterIP + ":9000", "minio:9000"} {
		ns := namespace(t)
		if endpoint == "minio:9000" {
			ns = storageNS // the bare name, from the Service's own namespace
		}
		alias := mk(ns, fmt.Sprintf("alias-%d", i), endpoint)
		reconcileProxy(t, r, alias)
		k8sClient.Get(ctx, client.ObjectKeyFromObject(alias), alias)
		c := assertCondition(t, alias, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonStorageConflict)
		if !strings.Contains(c.Message, first.Namespace+"/first") {
			t.Errorf("%s: the condition does not name the first cache: %q", endpoint, c.Message)
		}
		if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: alias.Name + "-depproxy"}, &appsv1.Deployment{}); err == nil {
			t.Errorf("%s: the aliased cache was rolled out", endpoint)
		}
	}
	// Another Service of the same name in another namespace is another
	// place.
	elsewhere := mk(namespace(t), "elsewhere", "minio:9000")
	reconcileProxy(t, r, elsewhere)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(elsewhere), elsewhere)
	assertCondition(t, elsewhere, depproxyv1.ConditionDegraded, metav1.ConditionFalse, depproxyv1.ReasonReconciled)
}

// A node reporting a platform that is not one (its kubelet writes its
// status) is left out of what is warmed: it does not stall the tenants'
// caches, whose settings the proxy would then refuse.
func TestABadNodePlatformIsLeftOut(t *testing.T) {
	ctx := context.Background()
	platformNode(t, "linux", "arm64/v8/x")
	platformNode(t, "linux", "amd64")
	ns := namespace(t)
	storageSecret(t, ns, "minio", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
	dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "kept", Namespace: ns},
		Spec: depproxyv1.DependencyProxySpec{
			Storage: depproxyv1.StorageSpec{Endpoint: "minio.minio:9000", Bucket: "cache", Prefix: ns, CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
			Keep:    &depproxyv1.KeepSpec{InUse: true},
		}}
	if err := k8sClient.Create(ctx, dp); err != nil {
		t.Fatal(err)
	}
	r, _ := newProxyReconciler(k8sClient)
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	if c := meta.FindStatusCondition(dp.Status.Conditions, depproxyv1.ConditionStalled); c != nil && c.Status == metav1.ConditionTrue {
		t.Fatalf("a node's bad platform stalled the cache: %s", c.Message)
	}
	cm := &corev1.ConfigMap{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "kept-depproxy"}, cm); err != nil {
		t.Fatal(err)
	}
	if conf := cm.Data[configKey]; strings.Contains(conf, "arm64/v8/x") || !strings.Contains(conf, "linux/amd64") {
		t.Errorf("the warmed platforms are not the good node's alone:\n%s", conf)
	}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "kept-depproxy"}, &appsv1.Deployment{}); err != nil {
		t.Errorf("no Deployment: %v", err)
	}
}
