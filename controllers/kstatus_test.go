package controllers

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// kstatusOf is what Flux, Argo CD (through its health checks) and
// `kubectl wait` make of a DependencyProxy as the API server has it.
func kstatusOf(t *testing.T, dp *depproxyv1.DependencyProxy) *status.Result {
	t.Helper()
	if err := k8sClient.Get(context.Background(), client.ObjectKeyFromObject(dp), dp); err != nil {
		t.Fatal(err)
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(dp)
	if err != nil {
		t.Fatal(err)
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// GitOps tools judge a DependencyProxy by kstatus: InProgress while its
// pods roll out, Current once they serve, InProgress with the reason
// while a Secret it names is missing, Failed when the spec cannot work
// until someone changes it, and InProgress again for a change the
// operator has not seen yet.
func TestKstatus(t *testing.T) {
	ns := namespace(t)
	dp := sampleProxy(t, ns)
	r, _ := newProxyReconciler(k8sClient)
	expect := func(want status.Status, says string) {
		t.Helper()
		res := kstatusOf(t, dp)
		if res.Status != want || !strings.Contains(res.Message, says) {
			t.Errorf("kstatus %s %q, want %s saying %q", res.Status, res.Message, want, says)
		}
	}

	reconcileProxy(t, r, dp)
	expect(status.InProgressStatus, "waiting for the proxy's pods")
	markAvailable(t, ns, "team-a-depproxy", 1)
	reconcileProxy(t, r, dp)
	expect(status.CurrentStatus, "")

	update(t, dp, func() { dp.Spec.RecheckInterval.Duration = 90e9 })
	expect(status.InProgressStatus, "") // a generation the operator has not seen

	storageSecret(t, ns, "empty-users", map[string]string{})
	update(t, dp, func() {
		dp.Spec.Auth = &depproxyv1.AuthSpec{UsersSecretRef: &corev1.LocalObjectReference{Name: "missing-users"}}
	})
	reconcileProxy(t, r, dp)
	expect(status.InProgressStatus, `Secret "missing-users"`)

	update(t, dp, func() { dp.Spec.Auth.UsersSecretRef.Name = "empty-users" })
	reconcileProxy(t, r, dp)
	expect(status.FailedStatus, "has no users")

	update(t, dp, func() { dp.Spec.Auth = &depproxyv1.AuthSpec{Anonymous: true} })
	reconcileProxy(t, r, dp)
	markAvailable(t, ns, "team-a-depproxy", 1)
	reconcileProxy(t, r, dp)
	expect(status.CurrentStatus, "")
}
