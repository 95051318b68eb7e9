package controllers

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// One value decides the condition, the event and the retry: their
// reasons cannot disagree.
func TestReconcileErrorDecidesConditionEventAndRetry(t *testing.T) {
	ok := ctrl.Result{RequeueAfter: time.Minute}
	transient := errors.New("etcdserver: request timed out")
	cases := []struct {
		name       string
		err        error
		wantReason string
		wantResult ctrl.Result
		wantErr    bool
	}{
		{"waiting", waiting(depproxyv1.ReasonSecretNotFound, "Secret %q is missing", "creds"), depproxyv1.ReasonSecretNotFound, ctrl.Result{RequeueAfter: waitingDelay}, false},
		{"stalled", stalled(depproxyv1.ReasonInvalidSecret, "no users"), depproxyv1.ReasonInvalidSecret, ctrl.Result{}, false},
		{"wrapped stalled", fmt.Errorf("checking: %w", stalled(depproxyv1.ReasonInvalidSecret, "no users")), depproxyv1.ReasonInvalidSecret, ctrl.Result{}, false},
		{"generic", transient, depproxyv1.ReasonReconcileFailed, ctrl.Result{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			outcome := asReconcileError(c.err)
			dp := &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "n", Generation: 3}}
			(&DependencyProxyReconciler{}).computeStatus(dp, nil, outcome)
			ready := meta.FindStatusCondition(dp.Status.Conditions, depproxyv1.ConditionReady)
			if ready == nil || ready.Reason != c.wantReason || ready.ObservedGeneration != 3 || ready.Message != outcome.Message {
				t.Fatalf("Ready condition %+v, want reason %s", ready, c.wantReason)
			}
			rec := events.NewFakeRecorder(1)
			outcome.warn(rec, dp)
			if ev := <-rec.Events; !strings.HasPrefix(ev, "Warning "+c.wantReason+" ") || !strings.Contains(ev, outcome.Message) {
				t.Fatalf("event %q, want reason %s and the condition's message", ev, c.wantReason)
			}
			res, err := outcome.result(ok)
			if res != c.wantResult || (err != nil) != c.wantErr {
				t.Fatalf("result %+v, %v; want %+v, error %v", res, err, c.wantResult, c.wantErr)
			}
			if c.wantErr && !errors.Is(err, transient) {
				t.Fatalf("the transient error is lost: %v", err)
			}
		})
	}
	if res, err := asReconcileError(nil).result(ok); res != ok || err != nil {
		t.Fatalf("success: %+v %v", res, err)
	}
}
