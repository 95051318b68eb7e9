package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/test/testenv"
)

// keepMemoryRows: the manager, as built, against a real API server
// (envtest) with a keeping DependencyProxy, its RSS with 0, 1,000 and
// 5,000 Pods in the cache's namespace, each Pod with a spec of the size
// real ones have (env, volumes, probes), whose images name the cache.
func (b *bench) keepMemoryRows() error {
	scheme := runtime.NewScheme()
	clientgoscheme.AddToScheme(scheme)
	depproxyv1.AddToScheme(scheme)
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("config", "crd", "bases")}, BinaryAssetsDirectory: testenv.ToolsDir()}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("envtest: %w", err)
	}
	defer env.Stop()
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(b.root, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		return err
	}
	manager := filepath.Join(b.root, "manager")
	if out, err := exec.Command("go", "build", "-o", manager, ".").CombinedOutput(); err != nil {
		return fmt.Errorf("go build the manager: %v\n%s", err, out)
	}
	ctx := context.Background()
	const ns = "bench"
	c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "minio", Namespace: ns}, StringData: map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}})
	dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "keep", Namespace: ns}, Spec: depproxyv1.DependencyProxySpec{
		Storage: depproxyv1.StorageSpec{Endpoint: "minio:9000", Bucket: "cache", CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
		Keep:    &depproxyv1.KeepSpec{InUse: true, Warm: true}}}
	if err := c.Create(ctx, dp); err != nil {
		return err
	}
	metricsAddr := testenv.FreeAddr(b)
	cmd := exec.Command(manager, "--metrics-bind-address", metricsAddr, "--health-probe-bind-address", "0")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	logf, _ := os.Create(filepath.Join(b.root, "manager.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() }()

	fmt.Println("| Pods in the cache's namespace | manager RSS (after the keep files are written) | growth over 0 Pods | Go heap in use | images in the pins file |")
	fmt.Println("|---|---|---|---|---|")
	var base int64
	created := 0
	for _, pods := range []int{0, 1000, 5000} {
		if err := createPods(ctx, c, ns, created, pods); err != nil {
			return err
		}
		created = pods
		lines, err := waitPinned(ctx, c, ns, pods)
		if err != nil {
			return err
		}
		time.Sleep(30 * time.Second) // the runtime returns what the lists left to the system
		rss := testenv.RSS(cmd.Process.Pid)
		if pods == 0 {
			base = rss
		}
		fmt.Printf("| %d | %d MiB | %+d MiB | %d MiB | %d |\n", pods, rss>>20, (rss-base)>>20, heapInUse(metricsAddr)>>20, lines)
	}
	return nil
}

// createPods makes Pods from..to, 16 at a time, with specs the size of
// real ones: the part the operator's cache drops.
func createPods(ctx context.Context, c client.Client, ns string, from, to int) error {
	var wg sync.WaitGroup
	errs := make(chan error, to-from)
	slots := make(chan struct{}, 16)
	for i := from; i < to; i++ {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			var env []corev1.EnvVar
			for j := range 30 {
				env = append(env, corev1.EnvVar{Name: fmt.Sprintf("SETTING_%d", j), Value: strings.Repeat("v", 40)})
			}
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("app-%d", i), Namespace: ns,
				Labels:      map[string]string{"app": fmt.Sprintf("app-%d", i%50), "team": "bench", "tier": "backend"},
				Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 1500)}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app",
					Image: fmt.Sprintf("keep-depproxy.%s.svc:5000/org/app-%d:1.%d", ns, i%200, i%7), Env: env,
					Args:           []string{"--listen", ":8080", "--log-level", "info"},
					Resources:      corev1.ResourceRequirements{},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromInt32(8080)}}},
				}}}}
			if err := c.Create(ctx, pod); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// waitPinned waits until the keep ConfigMap lists the images of pods
// Pods, and returns how many lines it has.
func waitPinned(ctx context.Context, c client.Client, ns string, pods int) (int, error) {
	want := min(pods, 200*7)
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		cm := &corev1.ConfigMap{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "keep-depproxy-keep"}, cm); err != nil {
			continue
		}
		lines := 0
		for _, l := range strings.Split(cm.Data["pinned"], "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				lines++
			}
		}
		if lines >= want {
			return lines, nil
		}
	}
	return 0, fmt.Errorf("the keep ConfigMap never listed the images of %d Pods", pods)
}

// heapInUse is the Go heap the manager uses, from its own metrics.
func heapInUse(addr string) int64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int64(f)
		}
	}
	return 0
}
