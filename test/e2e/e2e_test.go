//go:build e2e

// Package e2e runs depproxy on a real single-node cluster: hack/e2e.sh
// brings the cluster up, pushes the images and installs the operator with
// `helm install` of dist/chart; these tests then drive it the way a tenant and a platform
// team would. Run with `make e2e`.
package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/test/testenv"
)

const (
	namespace = "e2e"
	// storageNS runs MinIO, as root; the tenants' namespace enforces the
	// restricted Pod Security Standard, and everything the operator makes
	// runs there.
	storageNS      = "e2e-storage"
	proxyNodePort  = 30500 // the test's own Service of the proxy
	mirrorNodePort = 30501 // the NodeMirror's
	sharePeerPort  = 5151  // the node agents' peer listener, on the node
	minioNodePort  = 30900
	bucket         = "e2e-cache"
	minioAccessKey = "e2e-access"
	minioSecretKey = "e2e-secret-key"
	bigBlobSize    = 64 << 20 // before compression
)

type cluster struct {
	c      client.Client
	nodeIP string
	dir    string // the cluster's state directory (containerd's hosts.toml)
	front  *testenv.Front
	// ghcr stands in for ghcr.io, and ghcrHosts is the node's own
	// hosts.toml for it, from before the cache.
	ghcr      *testenv.Front
	ghcrHosts string
	upstream  string // the docker.io upstream registry itself, for pushing and pruning
	proxy     string // the proxy, through the test's Service at its node port
	mirror    string // the proxy, at the NodeMirror's node port
	minio     *minio.Client
}

func TestEndToEnd(t *testing.T) {
	ctx := context.Background()
	k := connect(t)
	k.startMinIO(ctx, t)
	upstream := testenv.StartRegistryAt(t, testenv.FreeAddrOn(t, k.nodeIP))
	k.front = testenv.StartFrontAt(t, testenv.FreeAddrOn(t, k.nodeIP), upstream.URL())
	k.upstream = upstream.Addr
	images := pushTestImages(t, upstream.Addr)
	// A second upstream, standing in for ghcr.io, for the node mirror; it
	// lives as long as the whole test, its last subtest pulls from it.
	ghcr := testenv.StartRegistryAt(t, testenv.FreeAddrOn(t, k.nodeIP))
	k.ghcr = testenv.StartFrontAt(t, testenv.FreeAddrOn(t, k.nodeIP), ghcr.URL())
	for _, tag := range []string{"1", "2"} {
		if err := crane.Copy(os.Getenv("DEPPROXY_E2E_PAUSE_IMAGE"), ghcr.Addr+"/e2e/app:"+tag, crane.Insecure); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("the tenants' namespace enforces the restricted Pod Security Standard", func(t *testing.T) {
		root := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "root", Namespace: namespace}, Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "c", Image: os.Getenv("DEPPROXY_E2E_PAUSE_IMAGE")}}}}
		err := k.c.Create(ctx, root)
		if err == nil || !strings.Contains(err.Error(), "violates PodSecurity") {
			t.Fatalf("a pod without a restricted security context was admitted: %v", err)
		}
	})

	dp := k.applyProxy(ctx, t)

	t.Run("pods become Ready through their probes", func(t *testing.T) {
		eventually(t, 3*time.Minute, "DependencyProxy Ready", func() error {
			return ready(ctx, k.c, dp)
		})
	})

	t.Run("crane pulls through the Service unchanged", func(t *testing.T) {
		for ref, want := range images {
			got, err := crane.Digest(k.proxy+"/"+ref, crane.Insecure)
			if err != nil || got != want {
				t.Fatalf("%s: digest %s, %v; upstream %s", ref, got, err, want)
			}
			if err := pullAll(k.proxy + "/" + ref); err != nil {
				t.Fatalf("%s: %v", ref, err)
			}
		}
		eventually(t, 2*time.Minute, "status lists the cached index with its platforms", func() error {
			if err := k.c.Get(ctx, client.ObjectKeyFromObject(dp), dp); err != nil {
				return err
			}
			if dp.Status.Cache == nil {
				return fmt.Errorf("no status.cache yet")
			}
			for _, img := range dp.Status.Cache.Images {
				if img.Repository == "e2e/multi" && img.Tag == "oci" && img.Digest == images["e2e/multi:oci"] && len(img.Platforms) == 2 {
					return nil
				}
			}
			return fmt.Errorf("status.cache: %+v", dp.Status.Cache)
		})
	})

	t.Run("a proxy pod deleted mid-pull leaves no partial object", func(t *testing.T) {
		k.podKilledMidPull(ctx, t, dp)
	})

	t.Run("three replicas download each blob once, and lose no pull to a deleted replica", func(t *testing.T) {
		k.replicas(ctx, t, dp, upstream.Addr)
	})

	t.Run("a namespace admin manages caches through the built-in admin role, and no NodeMirror", func(t *testing.T) {
		k.aggregatedRoles(ctx, t)
	})

	t.Run("a NodeMirror makes the node pull two registries through the cache, and its deletion restores the node's files", func(t *testing.T) {
		k.nodeMirror(ctx, t, dp)
	})

	t.Run("a CleanupPolicy's job reports into its status", func(t *testing.T) {
		k.cleanupRun(ctx, t)
	})

	t.Run("deleting the DependencyProxy removes its children", func(t *testing.T) {
		if err := k.c.Delete(ctx, dp); err != nil {
			t.Fatal(err)
		}
		key := client.ObjectKey{Namespace: namespace, Name: dp.Name + "-depproxy"}
		eventually(t, 2*time.Minute, "children garbage-collected", func() error {
			for _, obj := range []client.Object{&appsv1.Deployment{}, &corev1.Service{}, &corev1.ConfigMap{}} {
				if err := k.c.Get(ctx, key, obj); !apierrors.IsNotFound(err) {
					return fmt.Errorf("%T %s still there (%v)", obj, key.Name, err)
				}
			}
			if err := k.c.Get(ctx, client.ObjectKeyFromObject(dp), dp); !apierrors.IsNotFound(err) {
				return fmt.Errorf("the DependencyProxy is still there (%v, finalizers %v)", err, dp.Finalizers)
			}
			return nil
		})
	})

	// Last: it uninstalls the operator.
	t.Run("helm upgrade changing a value rolls the manager, and helm uninstall leaves nothing of the release but its CRDs", func(t *testing.T) {
		k.helmLifecycle(ctx, t)
	})
}

func connect(t *testing.T) *cluster {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		t.Fatalf("KUBECONFIG: %v (run with make e2e)", err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, depproxyv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	var nodes corev1.NodeList
	if err := c.List(context.Background(), &nodes); err != nil || len(nodes.Items) != 1 {
		t.Fatalf("want one node: %v, %d", err, len(nodes.Items))
	}
	k := &cluster{c: c, dir: os.Getenv("DEPPROXY_CLUSTER_DIR")}
	for _, a := range nodes.Items[0].Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			k.nodeIP = a.Address
		}
	}
	k.proxy = net.JoinHostPort(k.nodeIP, strconv.Itoa(proxyNodePort))
	k.mirror = net.JoinHostPort(k.nodeIP, strconv.Itoa(mirrorNodePort))
	restricted := map[string]string{"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: namespace, Labels: restricted}},
		{ObjectMeta: metav1.ObjectMeta{Name: storageNS}},
	} {
		if err := c.Create(context.Background(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	return k
}

// startMinIO runs MinIO in the cluster, as a Deployment with a Service
// that the proxy reaches by ClusterIP and the test by node port.
func (k *cluster) startMinIO(ctx context.Context, t *testing.T) {
	labels := map[string]string{"app": "minio"}
	env := []corev1.EnvVar{{Name: "MINIO_ROOT_USER", Value: minioAccessKey}, {Name: "MINIO_ROOT_PASSWORD", Value: minioSecretKey}}
	objs := []client.Object{
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "minio", Namespace: storageNS}, Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "minio", Image: os.Getenv("DEPPROXY_E2E_MINIO_IMAGE"),
					Args: []string{"server", "/data", "--address", ":9000", "--console-address", ":9001"}, Env: env,
					Ports: []corev1.ContainerPort{{Name: "s3", ContainerPort: 9000}},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/minio/health/ready", Port: intstr.FromString("s3")}}, PeriodSeconds: 1},
					VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}, {Name: "tmp", MountPath: "/tmp"}},
				}},
				Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			}},
		}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "minio", Namespace: storageNS}, Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeNodePort, Selector: labels,
			Ports: []corev1.ServicePort{{Port: 9000, TargetPort: intstr.FromInt32(9000), NodePort: minioNodePort}},
		}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "minio-creds", Namespace: namespace},
			StringData: map[string]string{"AWS_ACCESS_KEY_ID": minioAccessKey, "AWS_SECRET_ACCESS_KEY": minioSecretKey}},
	}
	for _, o := range objs {
		if err := k.c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	mc, err := minio.New(net.JoinHostPort(k.nodeIP, strconv.Itoa(minioNodePort)),
		&minio.Options{Creds: credentials.NewStaticV4(minioAccessKey, minioSecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	k.minio = mc
	eventually(t, 2*time.Minute, "MinIO serving", func() error {
		err := mc.MakeBucket(ctx, bucket, minio.MakeBucketOptions{})
		if ok, _ := mc.BucketExists(ctx, bucket); ok {
			return nil
		}
		return err
	})
}

func (k *cluster) applyProxy(ctx context.Context, t *testing.T) *depproxyv1.DependencyProxy {
	t.Helper()
	var minioSvc corev1.Service
	if err := k.c.Get(ctx, client.ObjectKey{Namespace: storageNS, Name: "minio"}, &minioSvc); err != nil {
		t.Fatal(err)
	}
	dp := &depproxyv1.DependencyProxy{
		ObjectMeta: metav1.ObjectMeta{Name: "team-a", Namespace: namespace},
		Spec: depproxyv1.DependencyProxySpec{
			Upstream: depproxyv1.UpstreamSpec{URL: k.front.URL(), MirrorOf: []string{"docker.io"}},
			Storage: depproxyv1.StorageSpec{Endpoint: net.JoinHostPort(minioSvc.Spec.ClusterIP, "9000"), Bucket: bucket,
				Insecure: true, CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio-creds"}},
			Auth: &depproxyv1.AuthSpec{Anonymous: true},
		},
	}
	// The test reaches the proxy at a node port of its own: a tenant's
	// cache opens none.
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "e2e-proxy", Namespace: namespace}, Spec: corev1.ServiceSpec{
		Type:     corev1.ServiceTypeNodePort,
		Selector: map[string]string{"app.kubernetes.io/name": "depproxy", "app.kubernetes.io/instance": dp.Name},
		Ports:    []corev1.ServicePort{{Port: 5000, TargetPort: intstr.FromString("http"), NodePort: proxyNodePort}},
	}}
	for _, o := range []client.Object{dp, svc} {
		if err := k.c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	return dp
}

func ready(ctx context.Context, c client.Client, dp *depproxyv1.DependencyProxy) error {
	if err := c.Get(ctx, client.ObjectKeyFromObject(dp), dp); err != nil {
		return err
	}
	cond := meta.FindStatusCondition(dp.Status.Conditions, depproxyv1.ConditionReady)
	if cond == nil || cond.Status != metav1.ConditionTrue || cond.ObservedGeneration != dp.Generation {
		return fmt.Errorf("Ready: %+v", cond)
	}
	return nil
}

// podKilledMidPull deletes the proxy's pod while it downloads a 64 MiB
// blob that the upstream serves slowly. The client retries until a new pod
// serves it whole; at no point does the bucket hold a blob whose content
// does not match its digest.
func (k *cluster) podKilledMidPull(ctx context.Context, t *testing.T, dp *depproxyv1.DependencyProxy) {
	// 64 MiB at about 8 MiB/s: the download lasts long enough to be cut.
	k.slowBlobs(30 * time.Millisecond)
	defer k.front.Fault(nil)

	img, err := crane.Pull(k.proxy+"/e2e/big:1", crane.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	layer := layers[0]
	digest, _ := layer.Digest()
	size, _ := layer.Size()
	url := fmt.Sprintf("http://%s/v2/e2e/big/blobs/%s", k.proxy, digest)

	pods := k.proxyPods(ctx, t, dp)
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.CopyN(io.Discard, resp.Body, 4<<20)
	if got != 4<<20 {
		t.Fatalf("read %d bytes before the kill", got)
	}
	for _, p := range pods {
		if err := k.c.Delete(ctx, &p, client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
	}
	rest, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if got+rest >= size {
		t.Fatalf("the pod's deletion did not cut the pull (%d bytes read): the test proves nothing", got+rest)
	}
	t.Logf("first pull cut after %d of %d bytes", got+rest, size)
	k.assertNoPartialBlobs(ctx, t)

	eventually(t, 3*time.Minute, "pull retried through a new pod", func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s after %d bytes: %v", resp.Status, n, err)
		}
		if sum := "sha256:" + hex.EncodeToString(h.Sum(nil)); sum != digest.String() {
			return fmt.Errorf("got %s, want %s (%d bytes)", sum, digest, n)
		}
		return nil
	})
	eventually(t, time.Minute, "the blob committed", func() error {
		info, err := k.minio.StatObject(ctx, bucket, "blobs/"+digest.Algorithm+"/"+digest.Hex, minio.StatObjectOptions{})
		if err != nil {
			return err
		}
		if info.Size != size {
			return fmt.Errorf("size %d, want %d", info.Size, size)
		}
		return nil
	})
	k.assertNoPartialBlobs(ctx, t)
}

// slowBlobs makes the upstream send blobs 256 KiB at a time, pause
// between pieces, so that a test can act while a download runs.
func (k *cluster) slowBlobs(pause time.Duration) {
	k.front.Fault(k.front.Alter("blobs", func(w http.ResponseWriter, resp *http.Response) {
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		buf := make([]byte, 256<<10)
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(pause)
			}
			if err != nil {
				return
			}
		}
	}))
}

// assertNoPartialBlobs reads every blob in the bucket and checks that its
// content is its digest.
func (k *cluster) assertNoPartialBlobs(ctx context.Context, t *testing.T) {
	t.Helper()
	n := 0
	for obj := range k.minio.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: "blobs/", Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		parts := strings.Split(obj.Key, "/")
		want := parts[len(parts)-1]
		r, err := k.minio.GetObject(ctx, bucket, obj.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			t.Fatalf("%s holds content with digest %s (%d bytes)", obj.Key, got, obj.Size)
		}
		n++
	}
	t.Logf("%d blobs in the bucket, each whole", n)
}

func (k *cluster) proxyPods(ctx context.Context, t *testing.T, dp *depproxyv1.DependencyProxy) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := k.c.List(ctx, &pods, client.InNamespace(namespace), client.MatchingLabels{"app.kubernetes.io/instance": dp.Name}); err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) == 0 {
		t.Fatal("no proxy pods")
	}
	return pods.Items
}

// replicas scales the cache to three replicas. Sixteen clients pulling
// a cold image through the Service, which spreads them over the
// replicas, cost one upstream download per blob and one manifest GET.
// A replica deleted mid-pull costs its clients a retry, never a failed
// pull. With spec.autoscaling the HorizontalPodAutoscaler alone sets the
// replica count, and a PodDisruptionBudget guards the replicas.
func (k *cluster) replicas(ctx context.Context, t *testing.T, dp *depproxyv1.DependencyProxy, upstream string) {
	scale := func(change func()) {
		t.Helper()
		if err := k.c.Get(ctx, client.ObjectKeyFromObject(dp), dp); err != nil {
			t.Fatal(err)
		}
		change()
		if err := k.c.Update(ctx, dp); err != nil {
			t.Fatal(err)
		}
	}
	readyPods := func(n int) {
		t.Helper()
		eventually(t, 3*time.Minute, fmt.Sprintf("%d ready replicas", n), func() error {
			if err := ready(ctx, k.c, dp); err != nil {
				return err
			}
			// No pod of the old config is left, stopping ones included:
			// until kube-proxy drops it, a pod without the others would
			// still get clients and download on its own.
			var pods corev1.PodList
			if err := k.c.List(ctx, &pods, client.InNamespace(namespace), client.MatchingLabels{"app.kubernetes.io/instance": dp.Name}); err != nil {
				return err
			}
			if len(pods.Items) != n {
				return fmt.Errorf("%d proxy pods, stopping ones included; want %d", len(pods.Items), n)
			}
			if n == 1 {
				return nil // one replica has no peers Service
			}
			var slices discoveryv1.EndpointSliceList
			if err := k.c.List(ctx, &slices, client.InNamespace(namespace),
				client.MatchingLabels{discoveryv1.LabelServiceName: dp.Name + "-depproxy-peers"}); err != nil {
				return err
			}
			got := 0
			for _, s := range slices.Items {
				for _, e := range s.Endpoints {
					if ptr.Deref(e.Conditions.Ready, true) {
						got++
					}
				}
			}
			if got != n {
				return fmt.Errorf("%d ready endpoints of the peers Service, want %d", got, n)
			}
			// And each replica has heard of the others.
			for pod, known := range k.podMetric(t, func(line string) bool { return strings.HasPrefix(line, "depproxy_replicas ") }) {
				if int(known) != n {
					return fmt.Errorf("pod %s knows %v replicas, want %d", pod, known, n)
				}
			}
			return nil
		})
	}
	scale(func() { dp.Spec.Replicas = ptr.To[int32](3) })
	readyPods(3)
	pdb := &policyv1.PodDisruptionBudget{}
	if err := k.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: dp.Name + "-depproxy"}, pdb); err != nil {
		t.Fatalf("no PodDisruptionBudget with three replicas: %v", err)
	}

	img, err := random.Image(8<<20, 6)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(upstream+"/e2e/replicated:1", name.Insecure)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	before := k.blobRequestsByPod(t)
	k.front.Reset()
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		go func() { errs <- pullAll(k.proxy + "/e2e/replicated:1") }()
	}
	for i := 0; i < 16; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got, want := k.front.Count("GET", "blobs"), len(m.Layers)+1; got != want {
		t.Errorf("%d upstream blob GETs for %d blobs pulled by 16 clients over 3 replicas", got, want)
		for _, from := range []string{"owner", "upstream", "fallback", "unanswered"} {
			t.Logf("fetches from %s, by pod: %v", from, k.podMetric(t, func(line string) bool {
				return strings.HasPrefix(line, "depproxy_replica_fetches_total{") && strings.Contains(line, `from="`+from+`"`)
			}))
		}
		t.Logf("replicas known, by pod: %v", k.podMetric(t, func(line string) bool { return strings.HasPrefix(line, "depproxy_replicas ") }))
	}
	if got := k.front.Count("GET", "manifests"); got != 1 {
		t.Errorf("%d upstream manifest GETs, want 1", got)
	}
	served := 0
	for pod, n := range k.blobRequestsByPod(t) {
		if n > before[pod] {
			served++
		}
	}
	if served < 2 {
		t.Errorf("the pulls reached %d replica(s): the Service did not spread them, and the test proves nothing", served)
	}

	// A replica deleted while its clients, and the others' through it,
	// read a slow cold layer.
	k.slowBlobs(20 * time.Millisecond)
	defer k.front.Fault(nil)
	slow, err := random.Image(32<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	r, _ = name.ParseReference(upstream+"/e2e/replicated:2", name.Insecure)
	if err := remote.Write(r, slow); err != nil {
		t.Fatal(err)
	}
	k.front.Reset()
	for i := 0; i < 8; i++ {
		go func() {
			var err error
			for attempt := 0; attempt < 3; attempt++ {
				if err = pullAll(k.proxy + "/e2e/replicated:2"); err == nil {
					break
				}
			}
			errs <- err
		}()
	}
	eventually(t, time.Minute, "the slow download started", func() error {
		if k.front.Count("GET", "blobs") == 0 {
			return fmt.Errorf("no blob GET upstream yet")
		}
		return nil
	})
	time.Sleep(time.Second)
	victim := k.proxyPods(ctx, t, dp)[0]
	if err := k.c.Delete(ctx, &victim, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ {
		if err := <-errs; err != nil {
			t.Errorf("a pull failed after its retries: %v", err)
		}
	}
	t.Logf("upstream blob GETs with a replica deleted mid-pull: %d", k.front.Count("GET", "blobs"))
	k.front.Fault(nil)
	k.assertNoPartialBlobs(ctx, t)

	// The autoscaler owns the replica count: below its minimum it scales
	// up, and the operator leaves what it set.
	scale(func() { dp.Spec.Autoscaling = &depproxyv1.AutoscalingSpec{MinReplicas: 4, MaxReplicas: 5} })
	deployment := &appsv1.Deployment{}
	eventually(t, 2*time.Minute, "the HorizontalPodAutoscaler scales to its minimum", func() error {
		hpa := &autoscalingv2.HorizontalPodAutoscaler{}
		if err := k.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: dp.Name + "-depproxy"}, hpa); err != nil {
			return err
		}
		if err := k.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: dp.Name + "-depproxy"}, deployment); err != nil {
			return err
		}
		if got := ptr.Deref(deployment.Spec.Replicas, 0); got != 4 {
			return fmt.Errorf("the Deployment has %d replicas", got)
		}
		return nil
	})
	readyPods(4)
	time.Sleep(3 * time.Second) // reconciles in between would put it back
	k.c.Get(ctx, client.ObjectKeyFromObject(deployment), deployment)
	if got := ptr.Deref(deployment.Spec.Replicas, 0); got != 4 {
		t.Errorf("the Deployment went from the autoscaler's 4 replicas to %d", got)
	}

	scale(func() { dp.Spec.Autoscaling, dp.Spec.Replicas = nil, ptr.To[int32](1) })
	readyPods(1)
}

// blobRequestsByPod reads each proxy pod's count of blob requests from
// its metrics.
func (k *cluster) blobRequestsByPod(t *testing.T) map[string]float64 {
	t.Helper()
	return k.podMetric(t, func(line string) bool {
		return strings.HasPrefix(line, "depproxy_proxy_requests_total{") && strings.Contains(line, `type="blob"`)
	})
}

// nodeMirror turns the cache into the node's mirror of two registries
// (spec.upstreams, and a cluster admin's NodeMirror): the operator's node
// agent writes the node's hosts.toml once the cache answers, keeping
// aside the one the node had for ghcr.io, and pods whose images exist
// only in the test's upstreams start through the cache. Deleting the
// NodeMirror restores the node's files.
func (k *cluster) nodeMirror(ctx context.Context, t *testing.T, dp *depproxyv1.DependencyProxy) {
	// The node's own ghcr.io configuration, which pulls straight from it.
	// (containerd 1.6 takes a hosts.toml without a host table for a
	// broken one, and would go to the real ghcr.io.)
	certs := filepath.Join(k.dir, "containerd", "certs.d")
	os.MkdirAll(filepath.Join(certs, "ghcr.io"), 0o755)
	k.ghcrHosts = fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", k.ghcr.URL(), k.ghcr.URL())
	if err := os.WriteFile(filepath.Join(certs, "ghcr.io", "hosts.toml"), []byte(k.ghcrHosts), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := k.c.Get(ctx, client.ObjectKeyFromObject(dp), dp); err != nil {
		t.Fatal(err)
	}
	dp.Spec.Upstream = depproxyv1.UpstreamSpec{URL: "https://registry-1.docker.io"}
	dp.Spec.Upstreams = []depproxyv1.RegistryUpstream{
		{Registry: "docker.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: k.front.URL()}},
		{Registry: "ghcr.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: k.ghcr.URL()}},
	}
	if err := k.c.Update(ctx, dp); err != nil {
		t.Fatal(err)
	}
	nm := &depproxyv1.NodeMirror{ObjectMeta: metav1.ObjectMeta{Name: "e2e-mirror"}, Spec: depproxyv1.NodeMirrorSpec{
		Cache:      depproxyv1.CacheReference{Namespace: dp.Namespace, Name: dp.Name},
		Registries: []string{"docker.io", "ghcr.io"}, NodePort: mirrorNodePort, ConfigPath: certs,
		// Each node's agent its node's own mirror, keeping what the node
		// pulled in a store of its own.
		Share: &depproxyv1.NodeShare{Store: depproxyv1.NodeStore{Path: filepath.Join(k.dir, "depproxy-store"), Size: resource.MustParse("1Gi")},
			PeerPort: sharePeerPort},
	}}
	if err := k.c.Create(ctx, nm); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Minute, "the NodeMirror shows the node configured", func() error {
		if err := k.c.Get(ctx, client.ObjectKeyFromObject(nm), nm); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(nm.Status.Conditions, depproxyv1.ConditionReady)
		if nm.Status.Summary != "1/1" || cond == nil || cond.Status != metav1.ConditionTrue {
			return fmt.Errorf("status %+v", nm.Status)
		}
		return nil
	})
	// The agents run in the node namespace (the manager's Role there is
	// its only right to write DaemonSets) the proxy image by its digest:
	// the manager's built-in default, stamped by `make images` (hack/e2e.sh
	// installs the chart without proxyImage).
	agents := &appsv1.DaemonSet{}
	if err := k.c.Get(ctx, client.ObjectKey{Namespace: "depproxy-nodes", Name: "nodemirror-" + nm.Name}, agents); err != nil {
		t.Fatalf("the node agents' DaemonSet: %v", err)
	}
	if img, want := agents.Spec.Template.Spec.Containers[0].Image, os.Getenv("DEPPROXY_E2E_PROXY_IMAGE"); !strings.Contains(img, "@sha256:") || img != want {
		t.Errorf("the node agents run %s, want the pushed depproxy image by its digest, %s", img, want)
	}
	// The cache has the nodes' key, copied by the operator from the one
	// it made in the node namespace.
	eventually(t, 2*time.Minute, "the cache mounts the nodes' key", func() error {
		var d appsv1.Deployment
		if err := k.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: dp.Name + "-depproxy"}, &d); err != nil {
			return err
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "nodemirror-"+nm.Name+"-node-key" {
				return nil
			}
		}
		return fmt.Errorf("volumes %+v", d.Spec.Template.Spec.Volumes)
	})
	// The new config has rolled out: the node's pulls meet a pod that
	// stays.
	eventually(t, 3*time.Minute, "DependencyProxy Ready with the upstreams", func() error { return ready(ctx, k.c, dp) })
	// A pod of the old config serves on through its shutdown delay: the
	// node's first pulls must meet the new config.
	eventually(t, 2*time.Minute, "only pods of the new config left", func() error {
		var d appsv1.Deployment
		if err := k.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: dp.Name + "-depproxy"}, &d); err != nil {
			return err
		}
		want := d.Spec.Template.Annotations["depproxy.dev/config-hash"]
		for _, p := range k.proxyPods(ctx, t, dp) {
			if p.DeletionTimestamp != nil || p.Annotations["depproxy.dev/config-hash"] != want {
				return fmt.Errorf("pod %s of another config, or stopping", p.Name)
			}
		}
		return nil
	})
	// kube-proxy may still send the node's connections to the pod that
	// rolled away for a moment; containerd 1.6 would wait 30 s on one.
	eventually(t, time.Minute, "the node reaches the cache steadily at its node port", func() error {
		// A connection each, as containerd's pulls make: each may meet
		// any endpoint kube-proxy still has.
		c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for i := 0; i < 20; i++ {
			resp, err := c.Get("http://" + k.mirror + "/v2/")
			if err != nil {
				return err
			}
			resp.Body.Close()
		}
		return nil
	})
	for _, registry := range []string{"docker.io", "ghcr.io"} {
		b, err := os.ReadFile(filepath.Join(certs, registry, "hosts.toml"))
		local, cache := strings.Index(string(b), `[host."http://127.0.0.1:5050"]`), strings.Index(string(b), fmt.Sprintf("[host.%q]", "http://"+k.mirror))
		if err != nil || local < 0 || cache < local {
			t.Fatalf("the node's %s hosts.toml does not name the node's own mirror, then the cache: %v\n%s", registry, err, b)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(certs, "ghcr.io", "hosts.toml.depproxy-saved")); string(b) != k.ghcrHosts {
		t.Fatalf("the node's own ghcr.io hosts.toml was not kept aside: %q", b)
	}

	before := k.mirroredManifests(t)
	for name, image := range map[string]string{"mirrored": "docker.io/library/e2e-mirror:1", "mirrored-ghcr": "ghcr.io/e2e/app:1"} {
		k.runPod(ctx, t, name, image)
	}
	if after := k.mirroredManifests(t); after <= before {
		t.Fatalf("the proxy served no manifest for the node (%v before, %v after)", before, after)
	}
	for image, key := range map[string]string{"e2e-mirror": "registries/docker.io/library/e2e-mirror/_tags/1", "e2e/app": "registries/ghcr.io/e2e/app/_tags/1"} {
		if _, err := k.minio.StatObject(ctx, bucket, key, minio.StatObjectOptions{}); err != nil {
			var keys []string
			for obj := range k.minio.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
				if strings.Contains(obj.Key, image) {
					keys = append(keys, obj.Key)
				}
			}
			t.Errorf("%s is not in the cache: the node's pull did not come through it (%v)\nthe cache has %v\nthe node's containerd said:\n%s",
				key, err, keys, k.containerdSaid(image))
		}
	}

	k.fromNodeStore(ctx, t, dp)
	k.imageVolume(ctx, t)
	k.keptImage(ctx, t, dp)

	if err := k.c.Delete(ctx, nm); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "the NodeMirror gone once its agents stopped", func() error {
		if err := k.c.Get(ctx, client.ObjectKeyFromObject(nm), nm); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v), finalizers %v, status %+v", err, nm.Finalizers, nm.Status.Conditions)
		}
		return nil
	})
	k.nodeUnconfigured(ctx, t)
}

// imageVolume: a Pod mounts an image volume (spec.volumes[].image) of a
// data image that only the upstream has; the node's runtime pulls it
// through the NodeMirror, and the Pod's container (the sandbox image,
// given the file to print) reads the file. The node runs containerd 2.4
// (hack/cluster.sh): containerd mounts image volumes from 2.1 on.
func (k *cluster) imageVolume(ctx context.Context, t *testing.T) {
	var nodes corev1.NodeList
	if err := k.c.List(ctx, &nodes); err != nil || len(nodes.Items) != 1 {
		t.Fatalf("want one node: %v", err)
	}
	runtimeVersion := nodes.Items[0].Status.NodeInfo.ContainerRuntimeVersion
	if !imageVolumesSupported(runtimeVersion) {
		t.Fatalf("the node runs %s: image volumes need containerd 2.1 or later", runtimeVersion)
	}
	t.Logf("the node's runtime: %s", runtimeVersion)

	content := fmt.Sprintf("mounted through the cache at %d\n", time.Now().UnixNano())
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	if err := w.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "hello.txt", Mode: 0o644, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(content))
	w.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), layer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", goruntime.GOARCH
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(k.upstream+"/library/e2e-data:1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	layerDigest, _ := layer.Digest()

	spec := restrictedPod("docker.io/library/e2e-mirror:1")
	spec.Containers[0].Command = []string{"/pause", "/data/hello.txt"}
	spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data", ReadOnly: true}}
	spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
		Image: &corev1.ImageVolumeSource{Reference: "docker.io/library/e2e-data:1", PullPolicy: corev1.PullAlways}}}}
	k.runPodSpec(ctx, t, "image-volume", spec)
	eventually(t, 30*time.Second, "the Pod's container printed the mounted file", func() error {
		out, err := exec.Command("kubectl", "-n", namespace, "logs", "image-volume").CombinedOutput()
		if err != nil {
			return fmt.Errorf("kubectl logs: %v: %s", err, out)
		}
		if string(out) != content {
			return fmt.Errorf("the log says %q, want %q", out, content)
		}
		return nil
	})
	eventually(t, 30*time.Second, "the image volume's tag and layer in the cache", func() error {
		for _, key := range append([]string{"registries/docker.io/library/e2e-data/_tags/1"}, blobKeys([]v1.Hash{layerDigest})...) {
			if _, err := k.minio.StatObject(ctx, bucket, key, minio.StatObjectOptions{}); err != nil {
				return fmt.Errorf("%s: %v: the node's pull did not come through the cache; the node's containerd said:\n%s",
					key, err, k.containerdSaid("e2e-data"))
			}
		}
		return nil
	})
	if err := k.c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "image-volume", Namespace: namespace}}); err != nil {
		t.Fatal(err)
	}
}

// imageVolumesSupported: the node's runtime (as its status reports it,
// containerd://2.4.2) mounts image volumes, containerd 2.1 or later.
func imageVolumesSupported(runtimeVersion string) bool {
	v, ok := strings.CutPrefix(runtimeVersion, "containerd://")
	if !ok {
		return false
	}
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	return err1 == nil && err2 == nil && (major > 2 || major == 2 && minor >= 1)
}

// fromNodeStore: the node pulls an image new to it through its own
// agent, which keeps it in its store; with the cache scaled to nothing, a
// new Pod of that image starts, its tag resolved (the Pod pulls Always)
// from the node's store.
func (k *cluster) fromNodeStore(ctx context.Context, t *testing.T, dp *depproxyv1.DependencyProxy) {
	// An image of blobs of its own: the node has none of them (the
	// sandbox image, which the other mirrored pods run, it had before).
	pause, err := crane.Pull(os.Getenv("DEPPROXY_E2E_PAUSE_IMAGE"), crane.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	l, err := random.Layer(4096, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(pause, l)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(k.upstream+"/library/e2e-shared:1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	k.runPod(ctx, t, "shared-first", "docker.io/library/e2e-shared:1")
	if got := k.agentMetric(t, `depproxy_node_bytes_total{source="cache"}`); got == 0 {
		t.Fatalf("the node's agent passed no bytes from the cache: the runtime did not pull through it")
	}
	var files int
	filepath.WalkDir(filepath.Join(k.dir, "depproxy-store"), func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files++
		}
		return nil
	})
	if files == 0 {
		t.Fatal("the node's store holds no file")
	}
	stale := func() float64 { return k.agentMetric(t, "depproxy_node_stale_tags_total") }
	before := stale()

	if err := k.c.Get(ctx, client.ObjectKeyFromObject(dp), dp); err != nil {
		t.Fatal(err)
	}
	replicas := dp.Spec.Replicas
	dp.Spec.Replicas = ptr.To[int32](0)
	if err := k.c.Update(ctx, dp); err != nil {
		t.Fatal(err)
	}
	defer func() {
		k.c.Get(ctx, client.ObjectKeyFromObject(dp), dp)
		dp.Spec.Replicas = replicas
		if err := k.c.Update(ctx, dp); err != nil {
			t.Fatal(err)
		}
		eventually(t, 3*time.Minute, "the cache back", func() error { return ready(ctx, k.c, dp) })
	}()
	eventually(t, 2*time.Minute, "no cache pod left", func() error {
		var pods corev1.PodList
		if err := k.c.List(ctx, &pods, client.InNamespace(namespace), client.MatchingLabels{"app.kubernetes.io/instance": dp.Name}); err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d pods", len(pods.Items))
		}
		return nil
	})
	k.runPod(ctx, t, "shared-from-store", "docker.io/library/e2e-shared:1")
	if after := stale(); after <= before {
		t.Errorf("the node's agent resolved no tag from its store with the cache down (%v before, %v after)", before, after)
	}
}

// agentMetric sums the samples of the node agent's /metrics (on the
// node's address: the sharing agents run on its host network) whose
// line starts with prefix.
func (k *cluster) agentMetric(t *testing.T, prefix string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + net.JoinHostPort(k.nodeIP, "9092") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// keptImage: with spec.keep, a Deployment's image is in the cache before
// its Pod starts (the upstream sends its blobs while the Deployment has
// no replicas); with the upstream stopped and the tag pruned upstream, a
// deleted Pod comes back Running through the cache.
func (k *cluster) keptImage(ctx context.Context, t *testing.T, dp *depproxyv1.DependencyProxy) {
	pause, err := crane.Pull(os.Getenv("DEPPROXY_E2E_PAUSE_IMAGE"), crane.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	l, err := random.Layer(4096, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(pause, l) // runs as pause does, blobs of its own
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(k.upstream+"/library/e2e-kept:1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()
	m, _ := img.Manifest()
	blobs := []v1.Hash{m.Config.Digest}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest)
	}

	if err := k.c.Get(ctx, client.ObjectKeyFromObject(dp), dp); err != nil {
		t.Fatal(err)
	}
	dp.Spec.Keep = &depproxyv1.KeepSpec{InUse: true, Warm: true}
	if err := k.c.Update(ctx, dp); err != nil {
		t.Fatal(err)
	}
	defer func() {
		k.c.Get(ctx, client.ObjectKeyFromObject(dp), dp)
		dp.Spec.Keep = nil
		k.c.Update(ctx, dp)
	}()
	k.front.Reset()
	labels := map[string]string{"app": "e2e-kept"}
	deploy := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "e2e-kept", Namespace: namespace}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To[int32](0),
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: restrictedPod("docker.io/library/e2e-kept:1")},
	}}
	if err := k.c.Create(ctx, deploy); err != nil {
		t.Fatal(err)
	}
	defer k.c.Delete(ctx, deploy)
	eventually(t, 4*time.Minute, "the Deployment's image is cached with no Pod of it", func() error {
		for _, key := range append([]string{"registries/docker.io/library/e2e-kept/_tags/1"}, blobKeys(blobs)...) {
			if _, err := k.minio.StatObject(ctx, bucket, key, minio.StatObjectOptions{}); err != nil {
				return fmt.Errorf("%s: %v", key, err)
			}
		}
		return nil
	})
	if got := k.front.Count(http.MethodGet, "blobs"); got < len(blobs) {
		t.Fatalf("the upstream sent %d blobs before any Pod ran, want the image's %d", got, len(blobs))
	}
	eventually(t, 2*time.Minute, "the status says the image is pinned and warmed", func() error {
		if err := k.c.Get(ctx, client.ObjectKeyFromObject(dp), dp); err != nil {
			return err
		}
		if dp.Status.Cache == nil {
			return fmt.Errorf("no status.cache yet")
		}
		for _, kept := range dp.Status.Cache.Kept {
			if kept.Image == "docker.io/library/e2e-kept:1" && kept.Warmed && kept.Pinned && kept.Digest == digest.String() {
				return nil
			}
		}
		return fmt.Errorf("status.cache.kept %+v", dp.Status.Cache.Kept)
	})
	scale := func(n int32) {
		k.c.Get(ctx, client.ObjectKeyFromObject(deploy), deploy)
		deploy.Spec.Replicas = ptr.To(n)
		if err := k.c.Update(ctx, deploy); err != nil {
			t.Fatal(err)
		}
	}
	running := func(what string) {
		eventually(t, 3*time.Minute, what, func() error {
			var pods corev1.PodList
			if err := k.c.List(ctx, &pods, client.InNamespace(namespace), client.MatchingLabels(labels)); err != nil {
				return err
			}
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
					return nil
				}
			}
			return fmt.Errorf("no Pod Running: %d pods", len(pods.Items))
		})
	}
	scale(1)
	running("the kept image's Pod Running")

	// The tag pruned upstream, and the upstream down.
	req, _ := http.NewRequest(http.MethodDelete, "http://"+k.upstream+"/v2/library/e2e-kept/manifests/"+digest.String(), nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("pruning the tag upstream: %v %v", err, resp)
	}
	k.front.Stop()
	defer k.front.Start()
	if err := k.c.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(namespace), client.MatchingLabels(labels)); err != nil {
		t.Fatal(err)
	}
	running("the deleted Pod back Running through the cache, the upstream down and the tag pruned")
}

func blobKeys(blobs []v1.Hash) []string {
	var out []string
	for _, b := range blobs {
		out = append(out, "blobs/"+b.Algorithm+"/"+b.Hex)
	}
	return out
}

// restrictedPod runs image under the restricted Pod Security Standard,
// pulling it every time.
func restrictedPod(image string) corev1.PodSpec {
	return corev1.PodSpec{
		SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
		Containers: []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: corev1.PullAlways,
			SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false),
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}},
	}
}

// nodeUnconfigured: with the NodeMirror gone, the node's files are gone and
// its own ghcr.io configuration back, and the node pulls straight from
// the upstream.
func (k *cluster) nodeUnconfigured(ctx context.Context, t *testing.T) {
	certs := filepath.Join(k.dir, "containerd", "certs.d")
	if _, err := os.Stat(filepath.Join(certs, "docker.io", "hosts.toml")); !os.IsNotExist(err) {
		t.Errorf("the node's docker.io hosts.toml outlived the resource: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(certs, "ghcr.io", "hosts.toml")); string(b) != k.ghcrHosts {
		t.Fatalf("the node's own ghcr.io hosts.toml is not back: %q", b)
	}
	k.ghcr.Reset()
	k.runPod(ctx, t, "direct-ghcr", "ghcr.io/e2e/app:2")
	if k.ghcr.Count(http.MethodGet, "manifests")+k.ghcr.Count(http.MethodHead, "manifests") == 0 {
		t.Fatal("the node did not pull from the upstream itself")
	}
}

// runPod starts a pod from image under the restricted Pod Security
// Standard, and waits for it to run.
func (k *cluster) runPod(ctx context.Context, t *testing.T, name, image string) {
	t.Helper()
	k.runPodSpec(ctx, t, name, restrictedPod(image))
}

// runPodSpec starts a pod of spec and waits for it to run.
func (k *cluster) runPodSpec(ctx context.Context, t *testing.T, name string, spec corev1.PodSpec) {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, Spec: spec}
	if err := k.c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, name+" Running", func() error {
		if err := k.c.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return err
		}
		if pod.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %s: %+v", pod.Status.Phase, pod.Status.ContainerStatuses)
		}
		return nil
	})
}

// mirroredManifests sums the proxy pods' manifest requests from their
// metrics, which each pod serves on its metrics port (pod IPs are this
// machine's own, on the node's bridge).
func (k *cluster) mirroredManifests(t *testing.T) float64 {
	t.Helper()
	var sum float64
	for _, v := range k.podMetric(t, func(line string) bool {
		return strings.HasPrefix(line, "depproxy_proxy_requests_total{") && strings.Contains(line, `type="manifest"`)
	}) {
		sum += v
	}
	return sum
}

// podMetric sums, for each running proxy pod, the samples of the lines
// of its /metrics that match.
func (k *cluster) podMetric(t *testing.T, match func(line string) bool) map[string]float64 {
	t.Helper()
	var pods corev1.PodList
	if err := k.c.List(context.Background(), &pods, client.InNamespace(namespace),
		client.MatchingLabels{"app.kubernetes.io/name": "depproxy"}); err != nil {
		t.Fatal(err)
	}
	sums := map[string]float64{}
	for _, p := range pods.Items {
		if p.Status.PodIP == "" || p.DeletionTimestamp != nil {
			continue
		}
		resp, err := http.Get("http://" + net.JoinHostPort(p.Status.PodIP, "9090") + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			if match(line) {
				f := strings.Fields(line)
				v, _ := strconv.ParseFloat(f[len(f)-1], 64)
				sums[p.Name] += v
			}
		}
	}
	return sums
}

// cleanupRun triggers the policy's CronJob now, as an operator would.
func (k *cluster) cleanupRun(ctx context.Context, t *testing.T) {
	cp := &depproxyv1.CleanupPolicy{ObjectMeta: metav1.ObjectMeta{Name: "nightly", Namespace: namespace},
		Spec: depproxyv1.CleanupPolicySpec{Target: "team-a", TTLDays: 30, Schedule: "0 3 * * *"}}
	if err := k.c.Create(ctx, cp); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "CronJob", func() error {
		return k.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "nightly-cleanup"}, &batchv1.CronJob{})
	})
	out, err := exec.Command("kubectl", "-n", namespace, "create", "job", "--from=cronjob/nightly-cleanup", "nightly-now").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl create job: %v: %s", err, out)
	}
	eventually(t, 3*time.Minute, "cleanup result in status", func() error {
		if err := k.c.Get(ctx, client.ObjectKeyFromObject(cp), cp); err != nil {
			return err
		}
		r := cp.Status.LastResult
		if r == nil || r.FinishedAt.IsZero() {
			return fmt.Errorf("no result yet: %+v", cp.Status)
		}
		if !r.Succeeded {
			return fmt.Errorf("cleanup failed: %+v", r)
		}
		return nil
	})
	t.Logf("cleanup result: %+v", cp.Status.LastResult)
}

// pushTestImages fills the upstream and returns each reference's digest.
func pushTestImages(t *testing.T, reg string) map[string]string {
	t.Helper()
	digests := map[string]string{}
	push := func(ref string, write func(name.Reference) error, d func() (v1.Hash, error)) {
		r, err := name.ParseReference(reg+"/"+ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := write(r); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
		h, err := d()
		if err != nil {
			t.Fatal(err)
		}
		digests[ref] = h.String()
	}
	image := func(layers int64, oci bool) v1.Image {
		img, err := random.Image(1024, layers)
		if err != nil {
			t.Fatal(err)
		}
		if oci {
			img = mutate.MediaType(img, types.OCIManifestSchema1)
			img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		}
		return img
	}
	index := func(mt types.MediaType, oci bool) v1.ImageIndex {
		return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, mt),
			mutate.IndexAddendum{Add: image(2, oci), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
			mutate.IndexAddendum{Add: image(2, oci), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}})
	}
	oci, docker := index(types.OCIImageIndex, true), index(types.DockerManifestList, false)
	push("e2e/multi:oci", func(r name.Reference) error { return remote.WriteIndex(r, oci) }, oci.Digest)
	push("e2e/multi:docker", func(r name.Reference) error { return remote.WriteIndex(r, docker) }, docker.Digest)
	big, err := random.Image(bigBlobSize, 1)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(reg+"/e2e/big:1", name.Insecure)
	if err := remote.Write(r, big); err != nil {
		t.Fatal(err)
	}
	// The node's mirrored image: the sandbox image, which runs anywhere.
	if err := crane.Copy(os.Getenv("DEPPROXY_E2E_PAUSE_IMAGE"), reg+"/library/e2e-mirror:1", crane.Insecure); err != nil {
		t.Fatal(err)
	}
	return digests
}

// pullAll downloads ref's image for this platform, manifests and blobs,
// checking each digest on the way.
func pullAll(ref string) error {
	img, err := crane.Pull(ref, crane.Insecure)
	if err != nil {
		return err
	}
	return crane.Save(img, ref, os.DevNull)
}

func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

// containerdSaid is what the node's containerd logged about an image.
func (k *cluster) containerdSaid(image string) string {
	raw, _ := os.ReadFile(filepath.Join(k.dir, "log", "containerd.log"))
	var lines []string
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.Contains(l, image) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// aggregatedRoles: kube-controller-manager folds the project's tenant
// roles into the built-in admin, edit and view; a user bound to admin in
// one namespace may manage caches and cleanup policies there, and may
// not touch NodeMirrors.
func (k *cluster) aggregatedRoles(ctx context.Context, t *testing.T) {
	can := func(user string, attrs authorizationv1.ResourceAttributes) bool {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user,
			Groups: []string{"system:authenticated"}, ResourceAttributes: &attrs}}
		if err := k.c.Create(ctx, sar); err != nil {
			t.Fatal(err)
		}
		return sar.Status.Allowed
	}
	for _, role := range []string{"admin", "edit", "view"} {
		user := "e2e-namespace-" + role
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: namespace},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: user}}, RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role}}
		if err := k.c.Create(ctx, rb); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		write := role != "view"
		eventually(t, time.Minute, "the built-in "+role+" role aggregates the project's", func() error {
			for _, resource := range []string{"dependencyproxies", "cleanuppolicies"} {
				if got := can(user, authorizationv1.ResourceAttributes{Namespace: namespace, Verb: "list", Group: "depproxy.dev", Resource: resource}); !got {
					return fmt.Errorf("%s may not list %s", role, resource)
				}
				if got := can(user, authorizationv1.ResourceAttributes{Namespace: namespace, Verb: "create", Group: "depproxy.dev", Resource: resource}); got != write {
					return fmt.Errorf("%s may create %s: %v", role, resource, got)
				}
			}
			return nil
		})
		for _, verb := range []string{"get", "list", "create", "update", "delete"} {
			if can(user, authorizationv1.ResourceAttributes{Verb: verb, Group: "depproxy.dev", Resource: "nodemirrors"}) {
				t.Errorf("a namespace %s may %s nodemirrors", role, verb)
			}
		}
		if can(user, authorizationv1.ResourceAttributes{Namespace: "other", Verb: "list", Group: "depproxy.dev", Resource: "dependencyproxies"}) {
			t.Errorf("a namespace %s may list dependencyproxies in another namespace", role)
		}
	}
}
