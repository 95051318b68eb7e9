package controllers

import (
	"context"
	"sort"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// +kubebuilder:rbac:groups="",resources=pods;nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=replicasets;statefulsets;daemonsets,verbs=get;list;watch
// +kubebuilder:rbac:groups=batch,resources=jobs;cronjobs,verbs=get;list;watch
// +kubebuilder:rbac:groups=depproxy.dev,resources=nodemirrors,verbs=get;list;watch

// observe lists what a keeping cache serves: its namespace's workloads,
// or, when a NodeMirror names it, the cluster's; and the nodes, for
// their platforms. What is listed is the cache's stripped copy (see
// keepTransform): images, owners and revisions only.
func (r *DependencyProxyReconciler) observe(ctx context.Context, dp *depproxyv1.DependencyProxy) (workloads, []depproxyv1.NodeMirror, []corev1.Node, error) {
	var w workloads
	mirrors := &depproxyv1.NodeMirrorList{}
	if err := r.List(ctx, mirrors); err != nil {
		return w, nil, nil, err
	}
	// Read only: the cache's own objects, not a copy of each.
	opts := []client.ListOption{client.UnsafeDisableDeepCopy}
	if !namedByMirror(dp, mirrors.Items) {
		opts = append(opts, client.InNamespace(dp.Namespace))
	}
	pods, deps, rss := &corev1.PodList{}, &appsv1.DeploymentList{}, &appsv1.ReplicaSetList{}
	sts, dss := &appsv1.StatefulSetList{}, &appsv1.DaemonSetList{}
	jobs, crons := &batchv1.JobList{}, &batchv1.CronJobList{}
	for _, l := range []client.ObjectList{pods, deps, rss, sts, dss, jobs, crons} {
		if err := r.List(ctx, l, opts...); err != nil {
			return w, nil, nil, err
		}
	}
	w = workloads{Pods: pods.Items, Deployments: deps.Items, ReplicaSets: rss.Items, StatefulSets: sts.Items,
		DaemonSets: dss.Items, Jobs: jobs.Items, CronJobs: crons.Items}
	nodes := &corev1.NodeList{}
	if err := r.List(ctx, nodes, client.UnsafeDisableDeepCopy); err != nil {
		return w, nil, nil, err
	}
	return w, mirrors.Items, nodes.Items, nil
}

func namedByMirror(dp *depproxyv1.DependencyProxy, mirrors []depproxyv1.NodeMirror) bool {
	for _, nm := range mirrors {
		if nm.Spec.Cache.Namespace == dp.Namespace && nm.Spec.Cache.Name == dp.Name {
			return true
		}
	}
	return false
}

// nodePlatforms are the nodes' os/arch, sorted, each once. A node's
// status is written by its kubelet: one reporting a platform that is not
// one (a slash too many) is left out, so that a node cannot stall every
// tenant's cache with what it reports.
func nodePlatforms(nodes []corev1.Node) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range nodes {
		info := n.Status.NodeInfo
		if info.OperatingSystem == "" || info.Architecture == "" {
			continue
		}
		p := info.OperatingSystem + "/" + info.Architecture
		if parsed, err := v1.ParsePlatform(p); err != nil || parsed.String() != p {
			continue
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// keepWatches wake the caches that keep what a changed workload (or
// node, or NodeMirror) runs: those of its namespace, and those a
// NodeMirror names.
func (r *DependencyProxyReconciler) keepWatches() handler.EventHandler {
	return handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		list := &depproxyv1.DependencyProxyList{}
		if err := r.List(ctx, list); err != nil {
			return nil
		}
		var mirrors []depproxyv1.NodeMirror
		if o.GetNamespace() != "" || isNode(o) {
			nms := &depproxyv1.NodeMirrorList{}
			if err := r.List(ctx, nms); err != nil {
				return nil
			}
			mirrors = nms.Items
		}
		var reqs []reconcile.Request
		for i := range list.Items {
			dp := &list.Items[i]
			if !keeping(dp) {
				continue
			}
			if o.GetNamespace() == "" || dp.Namespace == o.GetNamespace() || namedByMirror(dp, mirrors) {
				reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(dp)})
			}
		}
		return reqs
	})
}

func isNode(o client.Object) bool { _, ok := o.(*corev1.Node); return ok }

// keepTransform strips what the manager caches of workloads it does not
// manage to what spec.keep reads: names, owners, labels, the revision,
// the images and the pulled digests. With thousands of Pods, the cache
// holds their images, not their specs. Objects the operator manages (its
// own Deployments, DaemonSets and CronJobs) are kept whole: it applies
// them.
func keepTransform(obj any) (any, error) {
	o, ok := obj.(client.Object)
	if !ok {
		return obj, nil
	}
	if o.GetLabels()[managedByLabel] == managedBy {
		return obj, nil
	}
	meta := func(m metav1.ObjectMeta) metav1.ObjectMeta {
		out := metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
			Generation: m.Generation, Labels: m.Labels, OwnerReferences: m.OwnerReferences, DeletionTimestamp: m.DeletionTimestamp}
		if rev, ok := m.Annotations[revisionLabel]; ok {
			out.Annotations = map[string]string{revisionLabel: rev}
		}
		return out
	}
	switch o := o.(type) {
	case *corev1.Pod:
		p := &corev1.Pod{TypeMeta: o.TypeMeta, ObjectMeta: meta(o.ObjectMeta), Spec: imagesOnly(o.Spec)}
		// The node, for a NodeMirror's nodeSelector.
		p.Spec.NodeName = o.Spec.NodeName
		p.Status.Phase = o.Status.Phase
		for _, cs := range o.Status.ContainerStatuses {
			p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, strippedStatus(cs))
		}
		for _, cs := range o.Status.InitContainerStatuses {
			p.Status.InitContainerStatuses = append(p.Status.InitContainerStatuses, strippedStatus(cs))
		}
		return p, nil
	case *appsv1.Deployment:
		return &appsv1.Deployment{TypeMeta: o.TypeMeta, ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.DeploymentSpec{
			Template: corev1.PodTemplateSpec{Spec: imagesOnly(o.Spec.Template.Spec)}}}, nil
	case *appsv1.ReplicaSet:
		return &appsv1.ReplicaSet{TypeMeta: o.TypeMeta, ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.ReplicaSetSpec{
			Template: corev1.PodTemplateSpec{Spec: imagesOnly(o.Spec.Template.Spec)}}}, nil
	case *appsv1.StatefulSet:
		return &appsv1.StatefulSet{TypeMeta: o.TypeMeta, ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.StatefulSetSpec{
			Template: corev1.PodTemplateSpec{Spec: imagesOnly(o.Spec.Template.Spec)}}}, nil
	case *appsv1.DaemonSet:
		return &appsv1.DaemonSet{TypeMeta: o.TypeMeta, ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.DaemonSetSpec{
			Template: corev1.PodTemplateSpec{Spec: imagesOnly(o.Spec.Template.Spec)}}}, nil
	case *batchv1.Job:
		// The cleanup reads its own jobs' status: conditions and times.
		return &batchv1.Job{TypeMeta: o.TypeMeta, ObjectMeta: meta(o.ObjectMeta), Spec: batchv1.JobSpec{
			Template: corev1.PodTemplateSpec{Spec: imagesOnly(o.Spec.Template.Spec)}}, Status: o.Status}, nil
	case *batchv1.CronJob:
		c := &batchv1.CronJob{TypeMeta: o.TypeMeta, ObjectMeta: meta(o.ObjectMeta)}
		c.Spec.JobTemplate.Spec.Template.Spec = imagesOnly(o.Spec.JobTemplate.Spec.Template.Spec)
		return c, nil
	case *corev1.Node:
		n := &corev1.Node{TypeMeta: o.TypeMeta, ObjectMeta: meta(o.ObjectMeta)}
		n.Status.NodeInfo.OperatingSystem, n.Status.NodeInfo.Architecture = o.Status.NodeInfo.OperatingSystem, o.Status.NodeInfo.Architecture
		return n, nil
	}
	return obj, nil
}

// imagesOnly is a pod spec with its containers' names and images, and
// its image volumes' names and references, alone.
func imagesOnly(spec corev1.PodSpec) corev1.PodSpec {
	strip := func(cs []corev1.Container) []corev1.Container {
		var out []corev1.Container
		for _, c := range cs {
			out = append(out, corev1.Container{Name: c.Name, Image: c.Image})
		}
		return out
	}
	var volumes []corev1.Volume
	for _, v := range spec.Volumes {
		if v.Image != nil {
			volumes = append(volumes, corev1.Volume{Name: v.Name, VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: v.Image.Reference}}})
		}
	}
	return corev1.PodSpec{Containers: strip(spec.Containers), InitContainers: strip(spec.InitContainers), Volumes: volumes}
}

// strippedStatus keeps what the pulled digest and a cleanup job's
// result need.
func strippedStatus(cs corev1.ContainerStatus) corev1.ContainerStatus {
	out := corev1.ContainerStatus{Name: cs.Name, Image: cs.Image, ImageID: cs.ImageID}
	if t := cs.State.Terminated; t != nil {
		out.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: t.ExitCode, Message: t.Message, FinishedAt: t.FinishedAt}
	}
	return out
}

// keepCacheOptions strip every kind spec.keep reads.
func keepCacheOptions(byObject map[client.Object]cache.ByObject) {
	for _, o := range []client.Object{&corev1.Pod{}, &corev1.Node{}, &appsv1.Deployment{}, &appsv1.ReplicaSet{}, &appsv1.StatefulSet{},
		&appsv1.DaemonSet{}, &batchv1.Job{}, &batchv1.CronJob{}} {
		b := byObject[o]
		b.Transform = keepTransform
		byObject[o] = b
	}
}
