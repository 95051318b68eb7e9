package controllers

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/report"
)

// CleanupPolicyReconciler runs a CronJob of `depproxy cleanup` for each
// CleanupPolicy, and reports what its runs freed.
type CleanupPolicyReconciler struct {
	client.Client
	Scheme     *runtime.Scheme
	Recorder   events.EventRecorder
	ProxyImage string
	// Now is the clock; tests set it.
	Now func() time.Time
}

func (r *CleanupPolicyReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// nextRun is the schedule's next time after now, read the way the CronJob
// controller reads it.
func nextRun(schedule string, now time.Time) (metav1.Time, bool) {
	s, err := cron.ParseStandard(schedule)
	if err != nil {
		return metav1.Time{}, false
	}
	return metav1.NewTime(s.Next(now)), true
}

// +kubebuilder:rbac:groups=depproxy.dev,resources=cleanuppolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=depproxy.dev,resources=cleanuppolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=batch,resources=cronjobs,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch

// Reconcile keeps the CronJob in line with the policy and its target, and
// copies the last run's summary into the status.
func (r *CleanupPolicyReconciler) Reconcile(ctx context.Context, req reconcile.Request) (result reconcile.Result, retErr error) {
	cp := &depproxyv1.CleanupPolicy{}
	if err := r.Get(ctx, req.NamespacedName, cp); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !cp.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, nil
	}
	before := cp.Status.DeepCopy()
	defer func() {
		outcome := asReconcileError(retErr)
		r.computeStatus(cp, outcome)
		outcome.warn(r.Recorder, cp)
		result, retErr = outcome.result(result)
		if !equality.Semantic.DeepEqual(before, &cp.Status) {
			if err := r.Status().Update(ctx, cp); err != nil && retErr == nil {
				retErr = err
			}
		}
	}()

	dp := &depproxyv1.DependencyProxy{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: cp.Namespace, Name: cp.Spec.Target}, dp); err != nil {
		if client.IgnoreNotFound(err) != nil {
			return reconcile.Result{}, err
		}
		return reconcile.Result{}, waiting(depproxyv1.ReasonTargetNotFound,
			"DependencyProxy %q named by spec.target does not exist in namespace %s", cp.Spec.Target, cp.Namespace)
	}
	a := applier{client: r.Client, scheme: r.Scheme}
	cj := desiredCronJob(cp, dp, r.ProxyImage)
	op, err := a.apply(ctx, cp, cronJobChild(cj))
	if err != nil {
		return reconcile.Result{}, err
	}
	if op == controllerutil.OperationResultCreated {
		r.Recorder.Eventf(cp, cj, corev1.EventTypeNormal, depproxyv1.ReasonCreated, "Create", "created CronJob %s", cj.Name)
	}
	got := &batchv1.CronJob{}
	if err := r.Get(ctx, client.ObjectKeyFromObject(cj), got); err != nil {
		return reconcile.Result{}, err
	}
	cp.Status.LastScheduleTime = got.Status.LastScheduleTime
	cp.Status.NextScheduleTime = nil
	if next, ok := nextRun(cp.Spec.Schedule, r.now()); ok && !cp.Spec.Suspend {
		cp.Status.NextScheduleTime = &next
	}
	last, err := r.lastResult(ctx, cp)
	if err != nil {
		return reconcile.Result{}, err
	}
	if last != nil {
		cp.Status.LastResult = last
	}
	return reconcile.Result{}, nil
}

// lastResult reads the summary of the most recent finished run from its
// pod's termination message.
func (r *CleanupPolicyReconciler) lastResult(ctx context.Context, cp *depproxyv1.CleanupPolicy) (*depproxyv1.CleanupResult, error) {
	jobs := &batchv1.JobList{}
	if err := r.List(ctx, jobs, client.InNamespace(cp.Namespace), client.MatchingLabels{"app.kubernetes.io/instance": cp.Name, "app.kubernetes.io/name": cleanupAppName}); err != nil {
		return nil, err
	}
	var latest *batchv1.Job
	var finished time.Time
	for i := range jobs.Items {
		j := &jobs.Items[i]
		if t, ok := jobFinished(j); ok && t.After(finished) {
			latest, finished = j, t
		}
	}
	if latest == nil {
		return nil, nil
	}
	pods := &corev1.PodList{}
	if err := r.List(ctx, pods, client.InNamespace(cp.Namespace), client.MatchingLabels{"batch.kubernetes.io/job-name": latest.Name}); err != nil {
		return nil, err
	}
	message := ""
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if t := cs.State.Terminated; t != nil && t.Message != "" {
				message = t.Message
			}
		}
	}
	return cleanupResult(metav1.NewTime(finished), jobSucceeded(latest), message), nil
}

func jobFinished(j *batchv1.Job) (time.Time, bool) {
	for _, c := range j.Status.Conditions {
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			return c.LastTransitionTime.Time, true
		}
	}
	return time.Time{}, false
}

func jobSucceeded(j *batchv1.Job) bool {
	for _, c := range j.Status.Conditions {
		if c.Type == batchv1.JobComplete && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// cleanupResult turns a run's termination message into status. The
// summary is its last line; anything else is kept as the message.
func cleanupResult(at metav1.Time, succeeded bool, message string) *depproxyv1.CleanupResult {
	res := &depproxyv1.CleanupResult{FinishedAt: at, Succeeded: succeeded}
	lines := strings.Split(strings.TrimSpace(message), "\n")
	var s report.CleanupSummary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err == nil {
		res.DeletedManifests, res.DeletedBlobs, res.FreedBytes = s.DeletedManifests, s.DeletedBlobs, s.FreedBytes
		res.Deleted = s.DeletedTags + s.DeletedManifests + s.DeletedBlobs
		res.Freed = resource.NewQuantity(s.FreedBytes, resource.BinarySI).String()
	} else if message != "" {
		res.Message = truncate(message, 1024)
	}
	return res
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (r *CleanupPolicyReconciler) computeStatus(cp *depproxyv1.CleanupPolicy, outcome *reconcileError) {
	cp.Status.ObservedGeneration = cp.Generation
	meta.SetStatusCondition(&cp.Status.Conditions, cleanupCondition(cp, outcome))
}

// SetupWithManager watches policies, their CronJobs, the Jobs those start,
// and the targets (a target created later unblocks its policy).
func (r *CleanupPolicyReconciler) SetupWithManager(mgr manager.Manager) error {
	byInstance := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		if o.GetLabels()["app.kubernetes.io/name"] != cleanupAppName {
			return nil
		}
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: o.GetNamespace(), Name: o.GetLabels()["app.kubernetes.io/instance"]}}}
	})
	byTarget := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		list := &depproxyv1.CleanupPolicyList{}
		if err := r.List(ctx, list, client.InNamespace(o.GetNamespace())); err != nil {
			return nil
		}
		var reqs []reconcile.Request
		for _, cp := range list.Items {
			if cp.Spec.Target == o.GetName() {
				reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&cp)})
			}
		}
		return reqs
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&depproxyv1.CleanupPolicy{}).
		Owns(&batchv1.CronJob{}).
		Watches(&batchv1.Job{}, byInstance).
		Watches(&depproxyv1.DependencyProxy{}, byTarget).
		Complete(r)
}
