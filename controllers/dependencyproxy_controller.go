// Package controllers reconciles DependencyProxy and CleanupPolicy
// resources into the objects that run them. Children are built by the pure
// functions in children.go, their conditions by those in status.go;
// reconcilers fetch, apply and report.
package controllers

import (
	"context"
	"fmt"
	"sort"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// SummaryReader asks a running proxy what it holds.
type SummaryReader interface {
	Summary(ctx context.Context, dp *depproxyv1.DependencyProxy) (*depproxyv1.CacheSummary, error)
}

// DependencyProxyReconciler runs a proxy for each DependencyProxy.
type DependencyProxyReconciler struct {
	client.Client
	// APIReader reads Secrets straight from the API server, by name:
	// the manager caches none (see ClientOptions). Nil uses Client.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	// ProxyImage is run unless a resource names its own.
	ProxyImage string
	// CredentialProviderImage holds the cluster admin's credential
	// provider plugins, mounted into the proxies whose upstreams name one;
	// empty: none may.
	CredentialProviderImage string
	// ServiceMonitors is true where the Prometheus operator's CRD exists.
	ServiceMonitors bool
	// Summaries, when set, fills status.cache from the running proxy.
	Summaries SummaryReader
	// SummaryInterval is how often a Ready proxy's summary is refreshed,
	// and how soon a change to a Secret the spec names rolls the pods
	// (those Secrets are read, not watched).
	SummaryInterval time.Duration
}

// CacheOptions are the manager's cache: workloads stripped to what
// spec.keep reads. It holds no Secret at all (see ClientOptions).
func CacheOptions() cache.Options {
	byObject := map[client.Object]cache.ByObject{}
	keepCacheOptions(byObject)
	return cache.Options{ByObject: byObject}
}

// ClientOptions make the manager's client read Secrets straight from the
// API server, by name: a cache of Secrets would list and watch them
// cluster-wide, every tenant's credentials, and the operator's RBAC
// grants no such list.
func ClientOptions() client.Options {
	return client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}}
}

func (r *DependencyProxyReconciler) secrets() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}

func (r *DependencyProxyReconciler) resync() time.Duration {
	if r.SummaryInterval > 0 {
		return r.SummaryInterval
	}
	return time.Minute
}

// +kubebuilder:rbac:groups=depproxy.dev,resources=dependencyproxies,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=depproxy.dev,resources=dependencyproxies/finalizers,verbs=update
// +kubebuilder:rbac:groups=depproxy.dev,resources=dependencyproxies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups="",resources=configmaps;services;serviceaccounts,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create
// +kubebuilder:rbac:groups=monitoring.coreos.com,resources=servicemonitors,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=list;watch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=autoscaling,resources=horizontalpodautoscalers,verbs=get;list;watch;create;update;delete

// Reconcile brings a DependencyProxy's children in line with its spec and
// reports how they are doing.
func (r *DependencyProxyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	dp := &depproxyv1.DependencyProxy{}
	if err := r.Get(ctx, req.NamespacedName, dp); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !dp.DeletionTimestamp.IsZero() {
		// Children go with it, by owner references.
		return ctrl.Result{}, nil
	}
	before := dp.Status.DeepCopy()
	var deploy *appsv1.Deployment
	defer func() {
		outcome := asReconcileError(retErr)
		r.computeStatus(dp, deploy, outcome)
		outcome.warn(r.Recorder, dp)
		result, retErr = outcome.result(result)
		if !equality.Semantic.DeepEqual(before, &dp.Status) {
			if err := r.Status().Update(ctx, dp); err != nil && retErr == nil {
				retErr = err
			}
		}
	}()

	if err := r.checkStorage(ctx, dp); err != nil {
		return ctrl.Result{}, err
	}
	secrets, err := r.checkSecrets(ctx, dp)
	if err != nil {
		return ctrl.Result{}, err
	}
	key, err := r.ensureTokenKey(ctx, dp)
	if err != nil {
		return ctrl.Result{}, err
	}
	nodeKey, err := r.nodeKey(ctx, dp)
	if err != nil {
		return ctrl.Result{}, err
	}
	problems, err := r.verifyKeyProblems(ctx, dp)
	if err != nil {
		return ctrl.Result{}, err
	}
	rootProblems, err := r.verifyRootProblems(ctx, dp)
	if err != nil {
		return ctrl.Result{}, err
	}
	notation, err := r.verifyNotationConfigMaps(ctx, dp)
	if err != nil {
		return ctrl.Result{}, err
	}
	verify, err := renderVerify(dp, problems, rootProblems, notation)
	if err != nil {
		return ctrl.Result{}, err
	}
	deploy, err = r.applyChildren(ctx, dp, secretsHash(append(secrets, key, nodeKey)...), nodeKey, verify)
	if err != nil {
		return ctrl.Result{}, err
	}
	var summary *depproxyv1.CacheSummary // nil: not read this time
	if r.Summaries != nil && ready(dp, deploy) && !recentlyReported(dp) {
		if s, err := r.Summaries.Summary(ctx, dp); err != nil {
			log.FromContext(ctx).Info("cache summary unavailable", "error", err.Error())
		} else {
			dp.Status.Cache, summary = s, s
			if c := throttledCondition(s, dp.Generation); c.Status == metav1.ConditionTrue && !meta.IsStatusConditionTrue(dp.Status.Conditions, c.Type) {
				r.Recorder.Eventf(dp, nil, corev1.EventTypeWarning, c.Reason, "Throttle", "%s", c.Message)
			}
		}
	}
	conds := cacheConditions(dp, summary)
	var dropped []string
	if verify != nil {
		dropped = verify.dropped
	}
	conds.add(verifyConditions(dp, summary, dropped))
	conds.applyTo(&dp.Status.Conditions)
	return ctrl.Result{RequeueAfter: r.resync()}, nil
}

// recentlyReported: a keeping cache's summary in the status is under
// 10 s old. It is woken by every change to the workloads it serves;
// asking its proxy each time would cost it a summary per Pod event.
func recentlyReported(dp *depproxyv1.DependencyProxy) bool {
	c := dp.Status.Cache
	return keeping(dp) && c != nil && time.Since(c.ReportedAt.Time) < 10*time.Second && dp.Status.ObservedGeneration == dp.Generation
}

// referencedSecrets are the Secrets a spec names, by the field naming them.
func referencedSecrets(dp *depproxyv1.DependencyProxy) map[string]string {
	refs := map[string]string{"storage.credentialsSecretRef": dp.Spec.Storage.CredentialsSecretRef.Name}
	if name := secretName(dp.Spec.Upstream.CredentialsSecretRef); name != "" {
		refs["upstream.credentialsSecretRef"] = name
	}
	for i, u := range dp.Spec.Upstreams {
		if name := secretName(u.CredentialsSecretRef); name != "" {
			refs[fmt.Sprintf("upstreams[%d].credentialsSecretRef", i)] = name
		}
	}
	if name := usersSecret(dp); name != "" {
		refs["auth.usersSecretRef"] = name
	}
	if name := tlsSecret(dp); name != "" {
		refs["tls.secretRef"] = name
	}
	return refs
}

// checkSecrets refuses to roll out pods that could only crash-loop, and
// returns the Secrets the pods read (their contents roll the pods).
func (r *DependencyProxyReconciler) checkSecrets(ctx context.Context, dp *depproxyv1.DependencyProxy) ([]*corev1.Secret, error) {
	refs := referencedSecrets(dp)
	fields := make([]string, 0, len(refs))
	for f := range refs {
		fields = append(fields, f)
	}
	sort.Strings(fields)
	var out []*corev1.Secret
	for _, field := range fields {
		name := refs[field]
		s := &corev1.Secret{}
		err := r.secrets().Get(ctx, client.ObjectKey{Namespace: dp.Namespace, Name: name}, s)
		if client.IgnoreNotFound(err) != nil {
			return nil, err
		}
		if err != nil {
			return nil, waiting(depproxyv1.ReasonSecretNotFound,
				"Secret %q named by spec.%s does not exist in namespace %s", name, field, dp.Namespace)
		}
		if field == "auth.usersSecretRef" && len(s.Data) == 0 {
			return nil, stalled(depproxyv1.ReasonInvalidSecret,
				"Secret %q named by spec.auth.usersSecretRef has no users: add keys user=password", name)
		}
		if field == "tls.secretRef" && (len(s.Data[corev1.TLSCertKey]) == 0 || len(s.Data[corev1.TLSPrivateKeyKey]) == 0) {
			return nil, stalled(depproxyv1.ReasonInvalidSecret,
				"Secret %q named by spec.tls.secretRef lacks tls.crt or tls.key: make it a kubernetes.io/tls Secret", name)
		}
		// Storage credentials reach the pods as environment, as they
		// always have; a renewed certificate is re-read by the proxy
		// itself. Neither rolls the pods.
		if field != "storage.credentialsSecretRef" && field != "tls.secretRef" {
			out = append(out, s)
		}
	}
	return out, nil
}

// ensureTokenKey makes the tenant's signing key once; it is never
// updated, only recreated after someone deletes it (rotation).
func (r *DependencyProxyReconciler) ensureTokenKey(ctx context.Context, dp *depproxyv1.DependencyProxy) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	err := r.secrets().Get(ctx, client.ObjectKey{Namespace: dp.Namespace, Name: tokenKeyName(dp)}, s)
	if err == nil || client.IgnoreNotFound(err) != nil {
		return s, err
	}
	s, err = desiredTokenKey(dp)
	if err != nil {
		return nil, err
	}
	if err := controllerutil.SetControllerReference(dp, s, r.Scheme); err != nil {
		return nil, err
	}
	if err := r.Create(ctx, s); err != nil {
		return nil, fmt.Errorf("creating the token signing key: %w", err)
	}
	r.Recorder.Eventf(dp, s, corev1.EventTypeNormal, depproxyv1.ReasonCreated, "Create", "created token signing key Secret %s", s.Name)
	return s, nil
}

// applyChildren creates or updates every child; it returns the
// Deployment as the API server has it.
//
// nodeKey, when a NodeMirror's nodes share through dp, is its key's copy
// in dp's namespace: the pods mount it and the config names it. verify
// is spec.verify rendered (nil without it): the policy goes in the
// ConfigMap, its keys are mounted.
func (r *DependencyProxyReconciler) applyChildren(ctx context.Context, dp *depproxyv1.DependencyProxy, secHash string, nodeKey *corev1.Secret, verify *verifyRendering) (*appsv1.Deployment, error) {
	a := applier{client: r.Client, scheme: r.Scheme}
	var platforms, pinned, warm []string
	if keeping(dp) {
		w, mirrors, nodes, err := r.observe(ctx, dp)
		if err != nil {
			return nil, err
		}
		pinned, warm = keptImages(dp, scopeOf(dp, mirrors, nodes), w)
		platforms = nodePlatforms(nodes)
	}
	var sa *corev1.ServiceAccount
	if usesCredentialProviders(dp) {
		if r.CredentialProviderImage == "" {
			return nil, stalled(depproxyv1.ReasonNoCredentialProviders,
				"an upstream names a credential provider plugin, and the cluster admin gave the operator none (its --credential-provider-image)")
		}
		sa = &corev1.ServiceAccount{}
		if err := r.Get(ctx, client.ObjectKey{Namespace: dp.Namespace, Name: proxyName(dp)}, sa); err != nil {
			sa = nil // made below; its annotations come on the next look
		}
	}
	cm, err := desiredConfigMap(dp, platforms, sa)
	if err != nil {
		return nil, err
	}
	if nodeKey != nil {
		if cm, err = withNodeKey(cm); err != nil {
			return nil, err
		}
	}
	if cm, err = withVerify(cm, verify); err != nil {
		return nil, err
	}
	deploy := desiredDeployment(dp, r.ProxyImage, r.CredentialProviderImage, configHash(cm), secHash)
	if nodeKey != nil {
		mountNodeKey(deploy, nodeKey.Name)
	}
	mountVerifyKeys(deploy, verify)
	children := []child{serviceAccountChild(desiredServiceAccount(dp)), dataChild(cm), deploymentChild(deploy), serviceChild(desiredService(dp))}
	if r.ServiceMonitors {
		children = append(children, serviceMonitorChild(desiredServiceMonitor(dp)))
	}
	// What several replicas need, there only while they may run; the
	// autoscaler only with spec.autoscaling.
	optional := []struct {
		want bool
		child
	}{
		{replicated(dp), peerServiceChild(desiredPeerService(dp))},
		{replicated(dp), peerRoleChild(desiredPeerRole(dp))},
		{replicated(dp), peerRoleBindingChild(desiredPeerRoleBinding(dp))},
		{replicated(dp), pdbChild(desiredPDB(dp))},
		{keeping(dp), dataChild(desiredKeepConfigMap(dp, pinned, warm))},
		{dp.Spec.Autoscaling != nil, hpaChild(desiredHPA(dp))},
	}
	for _, o := range optional {
		if o.want {
			children = append(children, o.child)
			continue
		}
		if err := a.remove(ctx, dp, o.obj); err != nil {
			return nil, err
		}
	}
	for _, c := range children {
		op, err := a.apply(ctx, dp, c)
		if err != nil {
			return nil, err
		}
		r.recordChange(dp, c.obj, op)
	}
	got := &appsv1.Deployment{}
	if err := r.Get(ctx, client.ObjectKeyFromObject(deploy), got); err != nil {
		return nil, err
	}
	return got, nil
}

// nodeKey is the nodes' key for dp's pods, when the nodes of a
// NodeMirror share through dp: that NodeMirror's copy of its key in dp's
// namespace, once it is there (the NodeMirror's status changes when it
// is made, which wakes this). Nil otherwise.
func (r *DependencyProxyReconciler) nodeKey(ctx context.Context, dp *depproxyv1.DependencyProxy) (*corev1.Secret, error) {
	mirrors := &depproxyv1.NodeMirrorList{}
	if err := r.List(ctx, mirrors); err != nil {
		return nil, err
	}
	nm := sharer(dp, mirrors.Items)
	if nm == nil {
		return nil, nil
	}
	s := &corev1.Secret{}
	err := r.secrets().Get(ctx, client.ObjectKey{Namespace: dp.Namespace, Name: nodeKeyName(nm.Name)}, s)
	if err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	return usableNodeKey(s, nm), nil
}

func (r *DependencyProxyReconciler) recordChange(dp *depproxyv1.DependencyProxy, obj client.Object, op controllerutil.OperationResult) {
	kind := kindOf(obj, r.Scheme)
	switch {
	case op == controllerutil.OperationResultCreated:
		r.Recorder.Eventf(dp, obj, corev1.EventTypeNormal, depproxyv1.ReasonCreated, "Create", "created %s %s", kind, obj.GetName())
	case op == controllerutil.OperationResultUpdated:
		if _, ok := obj.(*corev1.ConfigMap); ok {
			r.Recorder.Eventf(dp, obj, corev1.EventTypeNormal, depproxyv1.ReasonConfigRolled, "Update", "proxy config changed; rolling the pods")
		}
	}
}

// ready: the spec's pods serve, and only they. While pods of an older
// spec are still up, requests may meet the old config (another
// registry's tags, say): the rollout is not over.
func ready(dp *depproxyv1.DependencyProxy, d *appsv1.Deployment) bool {
	if d == nil {
		return false
	}
	want := int32(1)
	switch {
	case dp.Spec.Autoscaling != nil && d.Spec.Replicas != nil:
		// Serving once the autoscaler's minimum is (scaling up beyond it is
		// not a rollout).
		want = min(*d.Spec.Replicas, dp.Spec.Autoscaling.MinReplicas)
	case dp.Spec.Replicas != nil:
		want = *dp.Spec.Replicas
	}
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas >= want && d.Status.AvailableReplicas >= want &&
		d.Status.Replicas == d.Status.UpdatedReplicas
}

// computeStatus sets the conditions from the reconcile's outcome and the
// Deployment's state.
func (r *DependencyProxyReconciler) computeStatus(dp *depproxyv1.DependencyProxy, d *appsv1.Deployment, outcome *reconcileError) {
	dp.Status.ObservedGeneration = dp.Generation
	if outcome == nil {
		dp.Status.Endpoint = endpoint(dp)
	}
	proxyConditions(dp.Generation, outcome, ready(dp, d)).applyTo(&dp.Status.Conditions)
}

// SetupWithManager watches DependencyProxies and the children they own.
// The Secrets a spec names are not watched (that would cache every
// Secret in the cluster): each resource is looked at again every
// SummaryInterval, which rolls the pods on new users and unblocks a
// resource whose Secret came late. A DependencyProxy going away wakes
// those whose storage overlapped its own.
func (r *DependencyProxyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	byStorage := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		changed, ok := o.(*depproxyv1.DependencyProxy)
		if !ok {
			return nil
		}
		list := &depproxyv1.DependencyProxyList{}
		if err := r.List(ctx, list); err != nil {
			return nil
		}
		var reqs []reconcile.Request
		for i := range list.Items {
			// The same bucket is enough to look again: each checks
			// its own place.
			if list.Items[i].UID != changed.UID && list.Items[i].Spec.Storage.Bucket == changed.Spec.Storage.Bucket {
				reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
			}
		}
		return reqs
	})
	// A NodeMirror's nodes sharing through a cache give it their key.
	byMirror := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		nm, ok := o.(*depproxyv1.NodeMirror)
		if !ok {
			return nil
		}
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: nm.Spec.Cache.Namespace, Name: nm.Spec.Cache.Name}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&depproxyv1.DependencyProxy{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&rbacv1.Role{}).
		Owns(&rbacv1.RoleBinding{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		Owns(&autoscalingv2.HorizontalPodAutoscaler{}).
		Watches(&depproxyv1.DependencyProxy{}, byStorage).
		Watches(&corev1.Pod{}, r.keepWatches()).
		Watches(&appsv1.Deployment{}, r.keepWatches()).
		Watches(&appsv1.ReplicaSet{}, r.keepWatches()).
		Watches(&appsv1.StatefulSet{}, r.keepWatches()).
		Watches(&appsv1.DaemonSet{}, r.keepWatches()).
		Watches(&batchv1.Job{}, r.keepWatches()).
		Watches(&batchv1.CronJob{}, r.keepWatches()).
		Watches(&corev1.Node{}, r.keepWatches()).
		Watches(&depproxyv1.NodeMirror{}, r.keepWatches()).
		Watches(&depproxyv1.NodeMirror{}, byMirror).
		Complete(r)
}
