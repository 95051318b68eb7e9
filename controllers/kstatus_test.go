package controllers

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
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
		// Argo CD, with the health check docs/operator.md gives, agrees.
		health, msg := argoHealth(t, dp)
		if argo := map[status.Status]string{status.InProgressStatus: "Progressing", status.CurrentStatus: "Healthy",
			status.FailedStatus: "Degraded"}[want]; health != argo || !strings.Contains(msg, says) {
			t.Errorf("Argo CD health %s %q, want %s saying %q", health, msg, argo, says)
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

// argoHealth runs config/argocd/health.lua as Argo CD does (gopher-lua,
// the object as a table in obj).
func argoHealth(t *testing.T, dp *depproxyv1.DependencyProxy) (string, string) {
	t.Helper()
	script, err := os.ReadFile(filepath.Join("..", "config", "argocd", "health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(dp)
	if err != nil {
		t.Fatal(err)
	}
	L := lua.NewState()
	defer L.Close()
	L.SetGlobal("obj", luaValue(L, obj))
	if err := L.DoString(string(script)); err != nil {
		t.Fatalf("health.lua: %v", err)
	}
	hs, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("health.lua returned %v", L.Get(-1))
	}
	return hs.RawGetString("status").String(), hs.RawGetString("message").String()
}

// luaValue turns JSON-shaped Go values into Lua's, as Argo CD does.
func luaValue(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, x := range v {
			t.RawSetString(k, luaValue(L, x))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, x := range v {
			t.Append(luaValue(L, x))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	}
	return lua.LNil
}
