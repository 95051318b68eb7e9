package controllers

import (
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// retry says what a failed reconcile does next.
type retry int

const (
	// retryBackoff: a transient failure (the API server, a conflict);
	// controller-runtime retries with backoff.
	retryBackoff retry = iota
	// retryAfter: the spec is fine but something it names is not there
	// yet (a Secret, a target); look again after a delay.
	retryAfter
	// retryNever: the spec cannot be carried out as it stands; only a
	// change to it (which triggers a reconcile) helps.
	retryNever
)

// waitingDelay is how long a waiting resource waits before it looks again
// (watches usually wake it sooner).
const waitingDelay = 30 * time.Second

// reconcileError is why a reconcile did not finish. It carries the reason
// that goes on the condition and on the event alike, the message a person
// reads in both, and what to do next; the deferred status step of each
// reconciler reads all three from this one value.
type reconcileError struct {
	Reason  string
	Message string
	retry   retry
	after   time.Duration // with retryAfter; waitingDelay when zero
	err     error
}

func (e *reconcileError) Error() string { return e.Message }
func (e *reconcileError) Unwrap() error { return e.err }

// stalled is a spec that cannot work until it is changed.
func stalled(reason, format string, args ...any) *reconcileError {
	return &reconcileError{Reason: reason, Message: fmt.Sprintf(format, args...), retry: retryNever}
}

// waiting is a spec that will work once something it names exists.
func waiting(reason, format string, args ...any) *reconcileError {
	return &reconcileError{Reason: reason, Message: fmt.Sprintf(format, args...), retry: retryAfter}
}

// asReconcileError types any error: one that is not already typed is a
// transient failure (ReconcileFailed, retried with backoff). nil stays nil.
func asReconcileError(err error) *reconcileError {
	if err == nil {
		return nil
	}
	var re *reconcileError
	if errors.As(err, &re) {
		return re
	}
	return &reconcileError{Reason: depproxyv1.ReasonReconcileFailed, Message: err.Error(), retry: retryBackoff, err: err}
}

// result is what controller-runtime gets back for a reconcile that ended
// with e (nil: ok, keeping the result it had).
func (e *reconcileError) result(ok ctrl.Result) (ctrl.Result, error) {
	switch {
	case e == nil:
		return ok, nil
	case e.retry == retryAfter && e.after > 0:
		return ctrl.Result{RequeueAfter: e.after}, nil
	case e.retry == retryAfter:
		return ctrl.Result{RequeueAfter: waitingDelay}, nil
	case e.retry == retryNever:
		return ctrl.Result{}, nil
	}
	return ctrl.Result{}, e
}

// warn records e as a Warning event on obj, with the condition's reason.
func (e *reconcileError) warn(rec events.EventRecorder, obj runtime.Object) {
	if e != nil {
		rec.Eventf(obj, nil, corev1.EventTypeWarning, e.Reason, "Reconcile", "%s", e.Message)
	}
}
