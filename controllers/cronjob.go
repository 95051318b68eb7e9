package controllers

import (
	"fmt"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// The cleanup's CronJob, for a CleanupPolicy.

// cleanupName names a CleanupPolicy's CronJob.
func cleanupName(cp *depproxyv1.CleanupPolicy) string { return cp.Name + "-cleanup" }

// desiredCronJob runs `depproxy cleanup` on the target's storage, with the
// target's own config file and credentials.
func desiredCronJob(cp *depproxyv1.CleanupPolicy, dp *depproxyv1.DependencyProxy, defaultImage string) *batchv1.CronJob {
	labels := map[string]string{
		"app.kubernetes.io/name":     cleanupAppName,
		"app.kubernetes.io/instance": cp.Name,
		managedByLabel:               managedBy,
	}
	podSec, sec := restrictedSecurity()
	volumes, mounts := configVolumes(dp)
	return &batchv1.CronJob{
		ObjectMeta: objectMeta(cleanupName(cp), cp.Namespace, labels),
		Spec: batchv1.CronJobSpec{
			Schedule:                   cp.Spec.Schedule,
			Suspend:                    ptr.To(cp.Spec.Suspend),
			ConcurrencyPolicy:          batchv1.ForbidConcurrent,
			SuccessfulJobsHistoryLimit: ptr.To[int32](3),
			FailedJobsHistoryLimit:     ptr.To[int32](3),
			JobTemplate: batchv1.JobTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: batchv1.JobSpec{
					BackoffLimit: ptr.To[int32](2),
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec: corev1.PodSpec{
							RestartPolicy:      corev1.RestartPolicyNever,
							ServiceAccountName: proxyName(dp),
							SecurityContext:    podSec,
							Volumes:            volumes,
							Containers: []corev1.Container{{
								Name:  "cleanup",
								Image: proxyImage(dp, defaultImage),
								Args: []string{"cleanup", "--config", configDir + "/" + configKey,
									"--ttl", fmt.Sprintf("%dh", 24*cp.Spec.TTLDays), "--summary-file", "/dev/termination-log"},
								Env:             storageEnv(dp),
								SecurityContext: sec,
								VolumeMounts:    mounts,
								// The summary goes to the termination message
								// (--summary-file); a failed run leaves its
								// log's tail there instead.
								TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
							}},
						},
					},
				},
			},
		},
	}
}

// cronJobChild applies the CronJob's spec, and sees a hand edit of its
// schedule or suspension.
func cronJobChild(cj *batchv1.CronJob) child {
	return child{obj: cj, update: func(e, d client.Object) {
		e.(*batchv1.CronJob).Spec = d.(*batchv1.CronJob).Spec
	}, same: func(e, d client.Object) bool {
		es, ds := e.(*batchv1.CronJob).Spec, d.(*batchv1.CronJob).Spec
		return es.Schedule == ds.Schedule && equality.Semantic.DeepEqual(es.Suspend, ds.Suspend)
	}}
}
