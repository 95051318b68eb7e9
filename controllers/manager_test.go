package controllers

import (
	"context"
	"crypto/tls"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/test/testenv"
)

// TestManager runs both reconcilers in a real manager, as main.go wires
// them: resources are picked up by their watches, a child changed behind
// the operator's back is put back, and a ServiceMonitor is made where its
// CRD exists.
func TestManager(t *testing.T) {
	cluster(t)
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&DependencyProxyReconciler{Client: mgr.GetClient(), Scheme: scheme, Recorder: mgr.GetEventRecorder("depproxy"),
		ProxyImage: DefaultImage, ServiceMonitors: true}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	if err := (&CleanupPolicyReconciler{Client: mgr.GetClient(), Scheme: scheme, Recorder: mgr.GetEventRecorder("depproxy"),
		ProxyImage: DefaultImage}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx := startManager(t, mgr)

	ns := namespace(t)
	cp := &depproxyv1.CleanupPolicy{ObjectMeta: metav1.ObjectMeta{Name: "nightly", Namespace: ns},
		Spec: depproxyv1.CleanupPolicySpec{Target: "team-a", TTLDays: 7}}
	if err := k8sClient.Create(ctx, cp); err != nil {
		t.Fatal(err)
	}
	sampleProxy(t, ns)
	key := client.ObjectKey{Namespace: ns, Name: "team-a-depproxy"}
	eventually(t, "the Deployment is created", func() bool { return k8sClient.Get(ctx, key, &appsv1.Deployment{}) == nil })
	sm := &unstructured.Unstructured{}
	sm.SetAPIVersion("monitoring.coreos.com/v1")
	sm.SetKind("ServiceMonitor")
	eventually(t, "the ServiceMonitor is created", func() bool { return k8sClient.Get(ctx, key, sm) == nil })
	// The policy's target appeared after the policy: its watch unblocks it.
	eventually(t, "the CronJob is created once its target exists", func() bool {
		return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "nightly-cleanup"}, &batchv1.CronJob{}) == nil
	})

	cm := &corev1.ConfigMap{}
	k8sClient.Get(ctx, key, cm)
	want := cm.Data["config.yaml"]
	cm.Data["config.yaml"] = "listen: :1\n" // as `kubectl edit` would: the annotations stay
	if err := k8sClient.Update(ctx, cm); err != nil {
		t.Fatal(err)
	}
	eventually(t, "an edited ConfigMap is put back", func() bool {
		k8sClient.Get(ctx, key, cm)
		return cm.Data["config.yaml"] == want
	})
	d := &appsv1.Deployment{}
	k8sClient.Get(ctx, key, d)
	d.Spec.Replicas = ptr.To[int32](7)
	if err := k8sClient.Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a hand-scaled Deployment is put back", func() bool {
		k8sClient.Get(ctx, key, d)
		return *d.Spec.Replicas == 1
	})
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// managerAs is a manager wired as main.go wires its cache and client,
// acting as user: with only the rights the test granted user.
func managerAs(t *testing.T, user string) ctrl.Manager {
	t.Helper()
	cfg := rest.CopyConfig(restConfig)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0", Cache: CacheOptions(), Client: ClientOptions(), Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	return mgr
}

// The manager, run with no right but the rendered ClusterRole's (no
// list or watch of Secrets), as main.go wires its cache and client:
// it reads the Secrets a spec names and makes the signing key by name,
// holds no Secret in its cache, and a change to a Secret still rolls
// the pods.
func TestManagerReadsSecretsOnlyByName(t *testing.T) {
	cluster(t)
	user := "depproxy-manager-rbac-test"
	role := projectClusterRole(t, "role.yaml")
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: user}},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role}}
	if err := k8sClient.Create(context.Background(), binding); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	mgr := managerAs(t, user)
	if err := (&DependencyProxyReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: scheme, Recorder: mgr.GetEventRecorder("depproxy"),
		ProxyImage: DefaultImage, SummaryInterval: time.Second}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx := startManager(t, mgr)

	ns := namespace(t)
	storageSecret(t, ns, "users", map[string]string{"alice": "s3cret"})
	dp := sampleProxy(t, ns)
	dp.Spec.Auth = &depproxyv1.AuthSpec{UsersSecretRef: &corev1.LocalObjectReference{Name: "users"}}
	if err := k8sClient.Update(ctx, dp); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKey{Namespace: ns, Name: "team-a-depproxy"}
	d := &appsv1.Deployment{}
	eventually(t, "the Deployment is created with the users mounted", func() bool {
		return k8sClient.Get(ctx, key, d) == nil && d.Spec.Template.Annotations[secretsHashKey] != "" && len(d.Spec.Template.Spec.Volumes) > 3
	})
	before := d.Spec.Template.Annotations[secretsHashKey]
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "team-a-depproxy-token-key"}, &corev1.Secret{}); err != nil {
		t.Errorf("the signing key was not made: %v", err)
	}
	if err := mgr.GetClient().List(ctx, &corev1.SecretList{}); err == nil {
		t.Error("the manager may list every Secret of the cluster")
	}

	users := &corev1.Secret{}
	k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "users"}, users)
	users.StringData = map[string]string{"bob": "hunter2"}
	if err := k8sClient.Update(ctx, users); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a new user rolls the pods", func() bool {
		return k8sClient.Get(ctx, key, d) == nil && d.Spec.Template.Annotations[secretsHashKey] != before
	})
}

// startManager runs mgr until the test ends.
func startManager(t *testing.T, mgr ctrl.Manager) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return ctx
}

// The manager's metrics, served as main.go serves them: over HTTPS, 401
// without a token or with one the API server does not know, 403 for a
// ServiceAccount not allowed to get /metrics, 200 once it is.
func TestManagerMetricsNeedAToken(t *testing.T) {
	cluster(t)
	addr := testenv.FreeAddr(t)
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{Scheme: scheme, Metrics: MetricsOptions(addr), HealthProbeBindAddress: "0",
		Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := startManager(t, mgr)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	get := func(token string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	eventually(t, "the metrics endpoint answers", func() bool { return get("") != 0 })
	if got := get(""); got != http.StatusUnauthorized {
		t.Errorf("GET /metrics without a token: %d, want 401", got)
	}
	// The API server's TokenReview says "invalid bearer token", which
	// controller-runtime's filter answers with 500: refused all the same.
	if got := get("not-a-token"); got == http.StatusOK {
		t.Error("GET /metrics with a made-up token: 200")
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	if resp, err := plain.Get("http://" + addr + "/metrics"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("the metrics are served over plain HTTP")
		}
	}

	ns := namespace(t)
	token := func(name string) string {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		if err := k8sClient.Create(ctx, sa); err != nil {
			t.Fatal(err)
		}
		tr := &authenticationv1.TokenRequest{}
		if err := k8sClient.SubResource("token").Create(ctx, sa, tr); err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	if got := get(token("nosy")); got != http.StatusForbidden {
		t.Errorf("GET /metrics as a ServiceAccount without the right: %d, want 403", got)
	}
	// The project's metrics-reader ClusterRole, bound to a scraper.
	reader := projectClusterRole(t, "metrics_reader_role.yaml")
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "metrics-reader-" + ns},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "scraper", Namespace: ns}},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: reader}}
	if err := k8sClient.Create(ctx, binding); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k8sClient.Delete(context.Background(), binding) })
	if got := get(token("scraper")); got != http.StatusOK {
		t.Errorf("GET /metrics as the scraper bound to depproxy-metrics-reader: %d, want 200", got)
	}
}

// renderedRoles are the Roles and ClusterRoles of config/rbac/role.yaml
// (controller-gen's output from the markers).
func renderedRoles(t *testing.T) (cluster []rbacv1.ClusterRole, namespaced []rbacv1.Role) {
	t.Helper()
	for _, doc := range strings.Split(string(repoFile(t, "config/rbac/role.yaml")), "\n---\n") {
		var kind struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &kind); err != nil {
			t.Fatal(err)
		}
		switch kind.Kind {
		case "ClusterRole":
			role := rbacv1.ClusterRole{}
			if err := yaml.Unmarshal([]byte(doc), &role); err != nil {
				t.Fatal(err)
			}
			cluster = append(cluster, role)
		case "Role":
			role := rbacv1.Role{}
			if err := yaml.Unmarshal([]byte(doc), &role); err != nil {
				t.Fatal(err)
			}
			namespaced = append(namespaced, role)
		}
	}
	if len(cluster) == 0 {
		t.Fatal("config/rbac/role.yaml holds no ClusterRole")
	}
	return cluster, namespaced
}

// The manager's rendered RBAC reads no Secret but by name: no list or
// watch of Secrets anywhere in the cluster (a list is every tenant's
// credentials). It writes DaemonSets (the node agents, which run as root
// on every selected node) only in the node namespace, through a Role
// there: cluster-wide it may only read them, for spec.keep.
func TestManagerRBACListsNoSecrets(t *testing.T) {
	cluster, namespaced := renderedRoles(t)
	for _, role := range cluster {
		for _, r := range role.Rules {
			for _, v := range r.Verbs {
				if slices.Contains(r.APIGroups, "") && (slices.Contains(r.Resources, "secrets") || slices.Contains(r.Resources, "*")) &&
					(v == "list" || v == "watch" || v == "*") {
					t.Errorf("the manager's ClusterRole may %s Secrets cluster-wide: %+v", v, r)
				}
				if (slices.Contains(r.APIGroups, "apps") || slices.Contains(r.APIGroups, "*")) &&
					(slices.Contains(r.Resources, "daemonsets") || slices.Contains(r.Resources, "*")) &&
					!slices.Contains([]string{"get", "list", "watch"}, v) {
					t.Errorf("the manager's ClusterRole may %s DaemonSets cluster-wide: %+v", v, r)
				}
			}
		}
	}
	var writes []string
	for _, role := range namespaced {
		if role.Namespace != DefaultNodeNamespace {
			t.Errorf("the manager has a Role in namespace %q, not the node namespace", role.Namespace)
		}
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, "apps") && slices.Contains(r.Resources, "daemonsets") {
				writes = append(writes, r.Verbs...)
			}
		}
	}
	for _, v := range []string{"create", "update", "delete"} {
		if !slices.Contains(writes, v) {
			t.Errorf("the manager's Role in %s may not %s DaemonSets: %v", DefaultNodeNamespace, v, writes)
		}
	}
}

// The manager, run with no right but the rendered ones (the ClusterRole,
// and the Role in the node namespace, bound as config/ binds them), as
// main.go wires its cache and client: it runs a NodeMirror's node agents
// in the node namespace, and may make a DaemonSet nowhere else.
func TestManagerRunsNodeAgentsWithTheRenderedRights(t *testing.T) {
	cluster(t)
	ctx := context.Background()
	user := "depproxy-manager-nodes-rbac-test"
	clusterRole := projectClusterRole(t, "role.yaml")
	if err := k8sClient.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: user}},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// What config/nodes installs before the manager starts: the node
	// namespace, and the binding of the manager's Role in it.
	if err := k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultNodeNamespace,
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	_, namespaced := renderedRoles(t)
	if len(namespaced) != 1 {
		t.Fatalf("config/rbac/role.yaml holds %d Roles, want the node namespace's", len(namespaced))
	}
	role := namespaced[0]
	role.Name = "depproxy-" + role.Name
	if err := k8sClient.Create(ctx, &role); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := k8sClient.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: role.Namespace},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: user}},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	mgr := managerAs(t, user)
	if err := (&NodeMirrorReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: scheme, Recorder: mgr.GetEventRecorder("depproxy"),
		ProxyImage: "operator.example/depproxy:v1", NodeNamespace: DefaultNodeNamespace}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	mctx := startManager(t, mgr)

	ns := namespace(t)
	cache := mirrorCache(t, ns, "rbac-mirror")
	nm := nodeMirror(t, "rbac-"+ns, cache, 30521, "docker.io")
	key := client.ObjectKey{Namespace: DefaultNodeNamespace, Name: "nodemirror-" + nm.Name}
	eventually(t, "the node agents run in the node namespace", func() bool {
		return k8sClient.Get(mctx, key, &appsv1.DaemonSet{}) == nil
	})
	eventually(t, "the NodeMirror reports its agents", func() bool {
		return k8sClient.Get(mctx, client.ObjectKeyFromObject(nm), nm) == nil && nm.Status.ObservedGeneration == nm.Generation &&
			len(nm.Status.Registries) == 1
	})

	elsewhere := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "agents", Namespace: ns}, Spec: appsv1.DaemonSetSpec{
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agents"}},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "agents"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "operator.example/depproxy:v1"}}}}}}
	if err := mgr.GetClient().Create(mctx, elsewhere); !apierrors.IsForbidden(err) {
		t.Errorf("the manager made a DaemonSet in a tenant's namespace: %v", err)
	}
}
