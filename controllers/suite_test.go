package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/test/testenv"
)

// The package's tests share one real kube-apiserver and etcd (envtest),
// built by `make tools`. envtest runs no controllers: no garbage
// collection, no Deployment controller; tests set what those would.
var (
	testEnv    *envtest.Environment
	k8sClient  client.WithWatch
	restConfig *rest.Config
	scheme     = runtime.NewScheme()
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	must(clientgoscheme.AddToScheme(scheme))
	must(depproxyv1.AddToScheme(scheme))
	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases"), filepath.Join("testdata", "servicemonitor-crd.yaml")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: testenv.ToolsDir(),
	}
	cfg, err := testEnv.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "starting envtest (kube-apiserver and etcd from `make tools` in %s): %v\n", testenv.ToolsDir(), err)
		return 1
	}
	defer testEnv.Stop()
	restConfig = cfg
	if k8sClient, err = client.NewWithWatch(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// namespace creates a namespace for one test.
func namespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "test-"}}
	if err := k8sClient.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func newProxyReconciler(c client.Client) (*DependencyProxyReconciler, *events.FakeRecorder) {
	rec := events.NewFakeRecorder(100)
	return &DependencyProxyReconciler{Client: c, Scheme: scheme, Recorder: rec, ProxyImage: "example.test/depproxy:v1"}, rec
}

func reconcileProxy(t *testing.T, r *DependencyProxyReconciler, dp *depproxyv1.DependencyProxy) ctrl.Result {
	t.Helper()
	res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(dp)})
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	return res
}

func storageSecret(t *testing.T, ns, name string, data map[string]string) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, StringData: data}
	if err := k8sClient.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// sampleProxy is a valid DependencyProxy with its Secret.
func sampleProxy(t *testing.T, ns string) *depproxyv1.DependencyProxy {
	t.Helper()
	storageSecret(t, ns, "minio", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
	dp := &depproxyv1.DependencyProxy{
		ObjectMeta: metav1.ObjectMeta{Name: "team-a", Namespace: ns},
		Spec: depproxyv1.DependencyProxySpec{
			Storage: depproxyv1.StorageSpec{Endpoint: "minio.minio:9000", Bucket: "cache", Prefix: ns + "/team-a", Insecure: true,
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
		},
	}
	if err := k8sClient.Create(context.Background(), dp); err != nil {
		t.Fatal(err)
	}
	return dp
}
