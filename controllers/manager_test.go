package controllers

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// TestManager runs both reconcilers in a real manager, as main.go wires
// them: resources are picked up by their watches, a child changed behind
// the operator's back is put back, and a ServiceMonitor is made where its
// CRD exists.
func TestManager(t *testing.T) {
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

// The manager holds only the Secrets the operator labels, never every
// Secret in the cluster; a Secret a spec names is read directly, and a
// change to it still rolls the pods.
func TestManagerCachesOnlyItsOwnSecrets(t *testing.T) {
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0", Cache: CacheOptions(), Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&DependencyProxyReconciler{Client: mgr.GetClient(), Scheme: scheme, Recorder: mgr.GetEventRecorder("depproxy"),
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

	var cached corev1.SecretList
	if err := mgr.GetCache().List(ctx, &cached); err != nil {
		t.Fatal(err)
	}
	for _, s := range cached.Items {
		if s.Labels[managedByLabel] != managedBy {
			t.Errorf("the manager caches Secret %s/%s, which it does not own", s.Namespace, s.Name)
		}
	}
	if err := mgr.GetCache().Get(ctx, client.ObjectKey{Namespace: ns, Name: "users"}, &corev1.Secret{}); err == nil {
		t.Error("the tenant's users Secret is in the manager's cache")
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
