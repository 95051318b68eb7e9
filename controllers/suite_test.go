package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
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

// The tests that need a cluster share one real kube-apiserver and etcd
// (envtest), built by `make tools`, started by the first of them to call
// cluster (namespace does). Until then k8sClient, restConfig and testEnv
// are nil: the builders' tests, which need none of it, run without the
// tools, in `make unit`. envtest runs no controllers: no garbage
// collection, no Deployment controller; tests set what those would.
var (
	testEnv    *envtest.Environment
	k8sClient  client.WithWatch
	restConfig *rest.Config
	scheme     = newScheme()

	clusterOnce sync.Once
	clusterErr  error
)

// unitTier is the variable `make unit` sets: there a test that needs the
// cluster is skipped. `make test` never sets it, so there every test
// runs, and a cluster that does not start fails them all.
const unitTier = "DEPPROXY_UNIT"

func TestMain(m *testing.M) {
	code := m.Run()
	if testEnv != nil {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping envtest: %v\n", err)
		}
	}
	os.Exit(code)
}

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := depproxyv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// cluster starts the API server on first use and returns a client of
// it; a test calls it before it touches k8sClient, restConfig or
// testEnv.
func cluster(t testing.TB) client.WithWatch {
	t.Helper()
	if os.Getenv(unitTier) != "" {
		t.Skip("needs envtest (kube-apiserver and etcd): run make test")
	}
	clusterOnce.Do(func() { clusterErr = startCluster() })
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
	return k8sClient
}

func startCluster() error {
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases"), filepath.Join("testdata", "servicemonitor-crd.yaml")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: testenv.ToolsDir(),
	}
	cfg, err := env.Start()
	if err != nil {
		env.Stop()
		return fmt.Errorf("starting envtest (kube-apiserver and etcd from `make tools` in %s): %w", testenv.ToolsDir(), err)
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		env.Stop()
		return err
	}
	testEnv, restConfig, k8sClient = env, cfg, c
	return nil
}

// namespace creates a namespace for one test.
func namespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "test-"}}
	if err := cluster(t).Create(context.Background(), ns); err != nil {
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
