//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/depproxy/depproxy/test/testenv"
)

// The release hack/e2e.sh installs the operator as.
const (
	release          = "depproxy"
	releaseNamespace = "depproxy-system"
	managerName      = "depproxy-controller-manager"
)

func helm(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(testenv.Tool(t, "helm"), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// helmLifecycle: `helm upgrade` changing a value rolls the manager onto
// it; `helm uninstall` leaves none of the release's objects but the CRDs,
// which the chart keeps (deleting them would delete every tenant's
// caches).
func (k *cluster) helmLifecycle(ctx context.Context, t *testing.T) {
	deploy := &appsv1.Deployment{}
	key := client.ObjectKey{Namespace: releaseNamespace, Name: managerName}
	if err := k.c.Get(ctx, key, deploy); err != nil {
		t.Fatal(err)
	}
	before := managerPods(ctx, t, k)
	helm(t, "upgrade", release, "../../dist/chart", "--namespace", releaseNamespace, "--reuse-values",
		"--set", "summaryInterval=45s", "--wait", "--timeout", "3m")
	eventually(t, 3*time.Minute, "the manager rolled onto the new value", func() error {
		if err := k.c.Get(ctx, key, deploy); err != nil {
			return err
		}
		args := deploy.Spec.Template.Spec.Containers[0].Args
		if !slices.Contains(args, "--summary-interval=45s") {
			return fmt.Errorf("manager args %v", args)
		}
		now := managerPods(ctx, t, k)
		if len(now) != 1 || slices.Contains(before, now[0]) || deploy.Status.UpdatedReplicas != 1 || deploy.Status.ReadyReplicas != 1 {
			return fmt.Errorf("manager pods %v (before %v), %d updated, %d ready", now, before, deploy.Status.UpdatedReplicas, deploy.Status.ReadyReplicas)
		}
		return nil
	})

	manifest := helm(t, "get", "manifest", release, "--namespace", releaseNamespace)
	var objs []*unstructured.Unstructured
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(manifest, -1) {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatal(err)
		}
		if m != nil {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
	if len(objs) < 10 {
		t.Fatalf("the release has %d objects", len(objs))
	}
	helm(t, "uninstall", release, "--namespace", releaseNamespace, "--wait", "--timeout", "3m")
	eventually(t, 2*time.Minute, "nothing of the release is left but its CRDs", func() error {
		for _, o := range objs {
			got := &unstructured.Unstructured{}
			got.SetGroupVersionKind(schema.FromAPIVersionAndKind(o.GetAPIVersion(), o.GetKind()))
			err := k.c.Get(ctx, client.ObjectKey{Namespace: o.GetNamespace(), Name: o.GetName()}, got)
			// The CRDs, and the node agents' namespace (agents may
			// still run there), are kept on uninstall.
			kept := o.GetAnnotations()["helm.sh/resource-policy"] == "keep"
			switch {
			case kept && err != nil:
				return fmt.Errorf("%s %s went with the release: %v", o.GetKind(), o.GetName(), err)
			case !kept && !apierrors.IsNotFound(err):
				return fmt.Errorf("%s %s/%s is still there (%v)", o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
		}
		return nil
	})
}

func managerPods(ctx context.Context, t *testing.T, k *cluster) []string {
	t.Helper()
	var pods corev1.PodList
	if err := k.c.List(ctx, &pods, client.InNamespace(releaseNamespace), client.MatchingLabels{"app.kubernetes.io/name": "depproxy-operator"}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			names = append(names, p.Name)
		}
	}
	return names
}
