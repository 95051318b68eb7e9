package controllers

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

func reconcileCleanup(t *testing.T, cp *depproxyv1.CleanupPolicy) (ctrl.Result, *events.FakeRecorder) {
	t.Helper()
	rec := events.NewFakeRecorder(100)
	r := &CleanupPolicyReconciler{Client: k8sClient, Scheme: scheme, Recorder: rec, ProxyImage: "example.test/depproxy:v1",
		Now: func() time.Time { return time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC) }}
	res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(cp)})
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	return res, rec
}

func TestCleanupPolicyRunsACronJobAndReportsRuns(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	cp := &depproxyv1.CleanupPolicy{ObjectMeta: metav1.ObjectMeta{Name: "nightly", Namespace: ns},
		Spec: depproxyv1.CleanupPolicySpec{Target: "team-a", TTLDays: 30}}
	if err := k8sClient.Create(ctx, cp); err != nil {
		t.Fatal(err)
	}

	// The target does not exist yet: waiting, with a reason.
	res, rec := reconcileCleanup(t, cp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(cp), cp)
	assertCondition(t, cp, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonTargetNotFound)
	if res.RequeueAfter == 0 || !strings.Contains(drain(rec), depproxyv1.ReasonTargetNotFound) {
		t.Error("a missing target is neither retried nor reported")
	}

	sampleProxy(t, ns)
	reconcileCleanup(t, cp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(cp), cp)
	assertCondition(t, cp, depproxyv1.ConditionReady, metav1.ConditionTrue, depproxyv1.ReasonScheduled)
	if cp.Spec.Schedule != "17 3 * * *" {
		t.Errorf("default schedule %q", cp.Spec.Schedule)
	}
	if next := cp.Status.NextScheduleTime; next == nil || !next.Time.Equal(time.Date(2026, 11, 25, 3, 17, 0, 0, time.UTC)) {
		t.Errorf("next run %v, want 2026-11-25 03:17 UTC", next)
	}
	cj := &batchv1.CronJob{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "nightly-cleanup"}, cj); err != nil {
		t.Fatal(err)
	}
	c := cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0]
	if cj.Spec.Schedule != "17 3 * * *" || strings.Join(c.Args, " ") != "cleanup --config /etc/depproxy/config.yaml --ttl 720h --summary-file /dev/termination-log" ||
		c.Env[0].ValueFrom.SecretKeyRef.Name != "minio" || metav1.GetControllerOf(cj).Name != "nightly" {
		t.Errorf("cronjob: schedule %q args %v env %+v owner %+v", cj.Spec.Schedule, c.Args, c.Env, cj.OwnerReferences)
	}

	// A run finished (no Job controller or kubelet here: set what they would).
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "nightly-cleanup-1", Namespace: ns, Labels: cj.Spec.JobTemplate.Labels},
		Spec: *cj.Spec.JobTemplate.Spec.DeepCopy()}
	job.Spec.Template.Labels = map[string]string{"batch.kubernetes.io/job-name": job.Name}
	job.Spec.Selector = nil
	manual := true
	job.Spec.ManualSelector = &manual
	job.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"batch.kubernetes.io/job-name": job.Name}}
	if err := k8sClient.Create(ctx, job); err != nil {
		t.Fatal(err)
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	job.Status = batchv1.JobStatus{StartTime: &now, CompletionTime: &now, Succeeded: 1, Conditions: []batchv1.JobCondition{
		{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
	if err := k8sClient.Status().Update(ctx, job); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "nightly-cleanup-1-x", Namespace: ns, Labels: map[string]string{"batch.kubernetes.io/job-name": job.Name}},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "cleanup", Image: "x"}}}}
	if err := k8sClient.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "cleanup", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: 0, Message: "deleting...\n" + `{"deletedTags":1,"deletedManifests":3,"deletedBlobs":12,"freedBytes":1073741824,"kept":40,"durationSeconds":2.5}`}}}}
	if err := k8sClient.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	reconcileCleanup(t, cp)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(cp), cp)
	r := cp.Status.LastResult
	if r == nil || !r.Succeeded || r.DeletedManifests != 3 || r.DeletedBlobs != 12 || r.FreedBytes != 1<<30 || r.Freed != "1Gi" || r.Deleted != 16 {
		t.Fatalf("last result: %+v", r)
	}

	// Suspending stops scheduling, and says so.
	cp.Spec.Suspend = true
	if err := k8sClient.Update(ctx, cp); err != nil {
		t.Fatal(err)
	}
	reconcileCleanup(t, cp)
	k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "nightly-cleanup"}, cj)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(cp), cp)
	if !*cj.Spec.Suspend {
		t.Error("the CronJob is not suspended")
	}
	assertCondition(t, cp, depproxyv1.ConditionReady, metav1.ConditionTrue, depproxyv1.ReasonSuspended)
	if cp.Status.NextScheduleTime != nil {
		t.Errorf("a suspended policy shows a next run: %v", cp.Status.NextScheduleTime)
	}
}

func TestInvalidCleanupPoliciesAreRefused(t *testing.T) {
	ns := namespace(t)
	for _, c := range []struct {
		spec depproxyv1.CleanupPolicySpec
		want string
	}{
		{depproxyv1.CleanupPolicySpec{Target: "a", TTLDays: 0}, "spec.ttlDays"},
		{depproxyv1.CleanupPolicySpec{Target: "a", TTLDays: 1, Schedule: "every night"}, "schedule must be a cron expression"},
		{depproxyv1.CleanupPolicySpec{Target: "a", TTLDays: 1, Schedule: "@sometimes"}, "schedule must be a cron expression"},
		{depproxyv1.CleanupPolicySpec{Target: "", TTLDays: 1}, "spec.target"},
	} {
		cp := &depproxyv1.CleanupPolicy{ObjectMeta: metav1.ObjectMeta{GenerateName: "bad-", Namespace: ns}, Spec: c.spec}
		if err := k8sClient.Create(context.Background(), cp); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want a refusal mentioning %q", c.spec, err, c.want)
		}
	}
	ok := &depproxyv1.CleanupPolicy{ObjectMeta: metav1.ObjectMeta{GenerateName: "ok-", Namespace: ns},
		Spec: depproxyv1.CleanupPolicySpec{Target: "a", TTLDays: 7, Schedule: "@daily"}}
	if err := k8sClient.Create(context.Background(), ok); err != nil {
		t.Errorf("a valid policy was refused: %v", err)
	}
}

// The install path: kubectl applies config/default to the real API server
// (dry run), and `kubectl get dp` shows the print columns.
func TestKubectl(t *testing.T) {
	cluster(t)
	kubectl := testEnv.ControlPlane.KubeCtl()
	run := func(args ...string) string {
		t.Helper()
		stdout, stderr, err := kubectl.Run(args...)
		out, _ := io.ReadAll(stdout)
		errOut, _ := io.ReadAll(stderr)
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return string(out)
	}
	// A dry run cannot put objects in a namespace it only pretends to
	// create; the namespace is made for real first.
	// So is the node namespace, where config/nodes binds the manager's
	// Role (other tests may have made it already).
	run("create", "namespace", "depproxy-system")
	if err := k8sClient.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultNodeNamespace,
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	run("apply", "--dry-run=server", "-k", filepath.Join("..", "config", "default"))
	run("apply", "--dry-run=server", "-n", "default", "-k", filepath.Join("..", "config", "samples"))
	ns := namespace(t)
	sampleProxy(t, ns)
	out := run("get", "dp", "-n", ns)
	header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	if got := strings.Join(header, " "); got != "NAME READY ENDPOINT IMAGES SIZE BUDGET HIT RATIO AGE" {
		t.Errorf("kubectl get dp columns: %q", got)
	}
	cp := &depproxyv1.CleanupPolicy{ObjectMeta: metav1.ObjectMeta{Name: "nightly", Namespace: ns},
		Spec: depproxyv1.CleanupPolicySpec{Target: "team-a", TTLDays: 30}}
	if err := k8sClient.Create(context.Background(), cp); err != nil {
		t.Fatal(err)
	}
	out = run("get", "cleanup", "-n", ns)
	if got := strings.Join(strings.Fields(strings.SplitN(out, "\n", 2)[0]), " "); got != "NAME TARGET TTL DAYS SCHEDULE LAST RUN DELETED FREED NEXT RUN" {
		t.Errorf("kubectl get cleanup columns: %q", got)
	}
	nm := nodeMirror(t, "kubectl-"+ns, &depproxyv1.DependencyProxy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "team-a"}}, 30561, "docker.io", "ghcr.io")
	out = run("get", "nodemirror", nm.Name)
	lines := strings.Split(out, "\n")
	if got := strings.Join(strings.Fields(lines[0]), " "); got != "NAME CACHE CACHE NAMESPACE REGISTRIES NODES CONFIGURED READY AGE" {
		t.Errorf("kubectl get nodemirror columns: %q", got)
	}
	if row := strings.Fields(lines[1]); len(row) < 4 || row[1] != "team-a" || row[2] != ns || row[3] != `["docker.io","ghcr.io"]` {
		t.Errorf("kubectl get nodemirror: %q", lines[1])
	}
}
