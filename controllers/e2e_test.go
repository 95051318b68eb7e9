package controllers

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/test/proxytest"
	"github.com/depproxy/depproxy/test/testenv"
)

// TestRenderedProxyServes runs the real depproxy exactly as the operator
// rendered it (the container's args, its mounted config file, its Secret
// env), against a real MinIO and a real upstream, pulls an index through
// it with crane, and sees the cache summary reach the status.
func TestRenderedProxyServes(t *testing.T) {
	cluster(t)
	ctx := context.Background()
	reg := testenv.StartRegistry(t)
	front := testenv.StartFront(t, reg.URL())
	m := testenv.StartMinIO(t)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := random.Image(1024, 1)
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	ref, _ := name.ParseReference(reg.Addr+"/library/app:1.0", name.Insecure)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()

	ns := namespace(t)
	storageSecret(t, ns, "minio", map[string]string{"AWS_ACCESS_KEY_ID": m.AccessKey, "AWS_SECRET_ACCESS_KEY": m.SecretKey})
	storageSecret(t, ns, "users", map[string]string{"alice": "s3cret"})
	dp := &depproxyv1.DependencyProxy{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e", Namespace: ns},
		Spec: depproxyv1.DependencyProxySpec{
			Upstream: depproxyv1.UpstreamSpec{URL: front.URL()},
			Storage: depproxyv1.StorageSpec{Endpoint: m.Addr, Bucket: "e2e-cache", Prefix: "team-e2e", Insecure: true,
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
			Auth: &depproxyv1.AuthSpec{UsersSecretRef: &corev1.LocalObjectReference{Name: "users"}},
		},
	}
	if err := k8sClient.Create(ctx, dp); err != nil {
		t.Fatal(err)
	}
	proxyAddr, opsAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	r, rec := newProxyReconciler(k8sClient)
	r.Summaries = HTTPSummaries{BaseURL: func(*depproxyv1.DependencyProxy) string { return "http://" + opsAddr }}
	reconcileProxy(t, r, dp)

	logs := runRendered(t, ns, "e2e-depproxy", proxyAddr, opsAddr)
	home := t.TempDir()
	crane := func(args ...string) *exec.Cmd {
		c := exec.Command(testenv.Tool(t, "crane"), args...)
		c.Env = append(os.Environ(), "HOME="+home, "DOCKER_CONFIG="+home)
		return c
	}
	loggedIn := false
	for i := 0; ; i++ {
		if out, err := crane("digest", "--insecure", proxyAddr+"/library/app:1.0").CombinedOutput(); err == nil {
			if !loggedIn {
				t.Fatalf("pulled without logging in: %s", out)
			}
			if got := strings.TrimSpace(string(out)); got != want.String() {
				t.Fatalf("digest through the rendered proxy %s, want %s", got, want)
			}
			break
		} else if strings.Contains(string(out), "UNAUTHORIZED") {
			// Up, and asking for a login: log in as the Secret's user.
			if out, err := crane("auth", "login", proxyAddr, "-u", "alice", "-p", "s3cret").CombinedOutput(); err != nil {
				t.Fatalf("crane auth login: %v\n%s", err, out)
			}
			loggedIn = true
		} else if i > 100 {
			t.Fatalf("the rendered proxy does not serve: %v\n%s\nits log:\n%s", err, out, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err := crane("pull", "--insecure", "--format", "oci", proxyAddr+"/library/app:1.0", t.TempDir()).CombinedOutput()
	if err != nil {
		t.Fatalf("crane pull: %v\n%s", err, out)
	}

	markAvailable(t, ns, "e2e-depproxy", 1)
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	s := dp.Status.Cache
	if s == nil {
		t.Fatalf("no cache summary in the status; proxy log:\n%s", logs)
	}
	if s.ImageCount != 1 || len(s.Images) != 1 || s.Images[0].Repository != "library/app" || s.Images[0].Tag != "1.0" ||
		s.Images[0].Digest != want.String() || len(s.Images[0].Platforms) != 2 || s.Images[0].Platforms[1].Platform != "linux/arm64" {
		t.Fatalf("cache summary: %+v", s)
	}
	if s.Bytes == 0 || s.HitRatio == "" {
		t.Errorf("summary size %q (%d bytes), hit ratio %q", s.Size, s.Bytes, s.HitRatio)
	}
	assertCondition(t, dp, depproxyv1.ConditionUpstreamThrottled, metav1.ConditionFalse, depproxyv1.ReasonWithinRateLimit)

	// The upstream answers 429 with a Retry-After: the cached tag is
	// served, and the status says the upstream is spared, and until when.
	front.Fault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			return false
		}
		w.Header().Set("Retry-After", "600")
		w.WriteHeader(http.StatusTooManyRequests)
		return true
	})
	if out, err := crane("digest", "--insecure", proxyAddr+"/library/app:1.0").CombinedOutput(); err != nil {
		t.Fatalf("a cached tag with the upstream answering 429: %v\n%s", err, out)
	}
	drain(rec)
	reconcileProxy(t, r, dp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	c := assertCondition(t, dp, depproxyv1.ConditionUpstreamThrottled, metav1.ConditionTrue, depproxyv1.ReasonRateLimited)
	th := dp.Status.Cache.Throttled
	if len(th) != 1 || th[0].Registry != front.Addr || time.Until(th[0].Until.Time) < 9*time.Minute || time.Until(th[0].Until.Time) > 10*time.Minute {
		t.Fatalf("status.cache.throttled %+v: want %s, until about 10 minutes from now (the Retry-After)", th, front.Addr)
	}
	if until := th[0].Until.UTC().Format(time.RFC3339); !strings.Contains(c.Message, front.Addr+" until "+until) {
		t.Errorf("condition message %q does not say the upstream and until when (%s)", c.Message, until)
	}
	if ev := drain(rec); !strings.Contains(ev, "Warning RateLimited") {
		t.Errorf("no RateLimited warning event: %q", ev)
	}
}

// runRendered runs the real depproxy exactly as the operator rendered the
// Deployment name in ns: the container's args, its ConfigMaps and Secrets
// mounted where the pod would have them (a ConfigMap changed later is
// written again, as the kubelet does), its Secret env. Only its ports are
// this machine's. It returns the proxy's log.
func runRendered(t *testing.T, ns, name, proxyAddr, opsAddr string) *testenv.SyncBuffer {
	t.Helper()
	ctx := context.Background()
	deploy := &appsv1.Deployment{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, deploy); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	container := deploy.Spec.Template.Spec.Containers[0]
	volumes := map[string]corev1.Volume{}
	for _, v := range deploy.Spec.Template.Spec.Volumes {
		volumes[v.Name] = v
	}
	// Paths in the files point at the other mounts: under root here.
	writeConfigMap := func(cmName, dir string) {
		cm := &corev1.ConfigMap{}
		if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: cmName}, cm); err != nil {
			t.Errorf("ConfigMap %s: %v", cmName, err)
			return
		}
		for k, val := range cm.Data {
			val = strings.ReplaceAll(val, configDir, filepath.Join(root, configDir))
			path := filepath.Join(dir, k)
			if old, err := os.ReadFile(path); err == nil && string(old) == val {
				continue
			}
			os.WriteFile(path+".new", []byte(val), 0o644)
			os.Rename(path+".new", path)
		}
	}
	var sync []func()
	for _, vm := range container.VolumeMounts {
		dir := filepath.Join(root, vm.MountPath)
		os.MkdirAll(dir, 0o755)
		switch v := volumes[vm.Name]; {
		case v.ConfigMap != nil:
			writeConfigMap(v.ConfigMap.Name, dir)
			sync = append(sync, func() { writeConfigMap(v.ConfigMap.Name, dir) })
		case v.Secret != nil:
			s := &corev1.Secret{}
			if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: v.Secret.SecretName}, s); err != nil {
				t.Fatal(err)
			}
			for k, val := range s.Data {
				os.WriteFile(filepath.Join(dir, k), val, 0o600)
			}
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				if src.ConfigMap != nil {
					cm := &corev1.ConfigMap{}
					if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: src.ConfigMap.Name}, cm); err != nil {
						t.Fatal(err)
					}
					for _, it := range src.ConfigMap.Items {
						path := filepath.Join(dir, it.Path)
						os.MkdirAll(filepath.Dir(path), 0o755)
						val, ok := []byte(cm.Data[it.Key]), true
						if _, text := cm.Data[it.Key]; !text {
							val, ok = cm.BinaryData[it.Key]
						}
						if ok {
							os.WriteFile(path, val, 0o644)
						}
					}
				}
				if src.Secret == nil {
					continue
				}
				s := &corev1.Secret{}
				if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: src.Secret.Name}, s); err != nil {
					t.Fatal(err)
				}
				for _, it := range src.Secret.Items {
					path := filepath.Join(dir, it.Path)
					os.MkdirAll(filepath.Dir(path), 0o755)
					os.WriteFile(path, s.Data[it.Key], 0o600)
				}
			}
		}
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(500 * time.Millisecond):
				for _, f := range sync {
					f()
				}
			}
		}
	}()
	t.Cleanup(func() { close(done) })
	if len(container.Args) == 0 || container.Args[0] != "serve" {
		t.Fatalf("the rendered container runs %q, not depproxy serve", container.Args)
	}
	var args []string
	for _, a := range container.Args[1:] {
		if strings.HasPrefix(a, "/etc/") {
			a = filepath.Join(root, a)
		}
		args = append(args, a)
	}
	var env []string
	for _, e := range container.Env {
		secret := &corev1.Secret{}
		k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: e.ValueFrom.SecretKeyRef.Name}, secret)
		env = append(env, e.Name+"="+string(secret.Data[e.ValueFrom.SecretKeyRef.Key]))
	}
	return proxytest.Serve{Args: args, Listen: proxyAddr, MetricsListen: opsAddr, Env: env}.Start(t).Log
}
