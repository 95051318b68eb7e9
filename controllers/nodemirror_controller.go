package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/settings"
)

// NodeMirrorReconciler runs the node agents of each NodeMirror.
type NodeMirrorReconciler struct {
	client.Client
	// APIReader reads claims and agent pods straight from the API
	// server: a claim must be seen the moment it is made, and the
	// manager caches no Pods. Nil uses Client.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	// ProxyImage is what the node agents run, always: the operator's
	// own choice, never a tenant's.
	ProxyImage string
	// NodeNamespace runs the node agents (DefaultNodeNamespace when
	// empty).
	NodeNamespace string
}

func (r *NodeMirrorReconciler) live() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}

// agentRegistry is the registry the node agents' image comes from, as
// spec.registries names it; "" when the image cannot be parsed.
func (r *NodeMirrorReconciler) agentRegistry() string {
	ref, err := name.ParseReference(r.ProxyImage)
	if err != nil {
		return ""
	}
	reg := ref.Context().RegistryStr()
	if registryname.IsDockerHub(reg) {
		return registryname.DockerHub
	}
	return reg
}

func (r *NodeMirrorReconciler) nodeNamespace() string {
	if r.NodeNamespace != "" {
		return r.NodeNamespace
	}
	return DefaultNodeNamespace
}

// +kubebuilder:rbac:groups=depproxy.dev,resources=nodemirrors,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=depproxy.dev,resources=nodemirrors/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=depproxy.dev,resources=nodemirrors/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=daemonsets,verbs=get;list;watch;create;update;delete,namespace=depproxy-nodes
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=create
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create;update;delete

// Reconcile runs the agents for the registries a NodeMirror holds, and
// takes them out, restoring the nodes' files, when it goes.
func (r *NodeMirrorReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	nm := &depproxyv1.NodeMirror{}
	if err := r.Get(ctx, req.NamespacedName, nm); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !nm.DeletionTimestamp.IsZero() {
		return asReconcileError(r.finalize(ctx, nm)).result(ctrl.Result{})
	}
	before := nm.Status.DeepCopy()
	var agents []*appsv1.DaemonSet
	var holder string // the NodeMirror whose nodes share through the cache
	var shared *depproxyv1.SharingSummary
	defer func() {
		outcome := asReconcileError(retErr)
		computeNodeMirrorStatus(nm, agents, outcome)
		shareConditions(nm, holder, shared, outcome).applyTo(&nm.Status.Conditions)
		outcome.warn(r.Recorder, nm)
		result, retErr = outcome.result(result)
		if !equality.Semantic.DeepEqual(before, &nm.Status) {
			if err := r.Status().Update(ctx, nm); err != nil && retErr == nil {
				retErr = err
			}
		}
	}()

	if controllerutil.AddFinalizer(nm, nodeMirrorFinalizer) {
		if err := r.Update(ctx, nm); err != nil {
			return ctrl.Result{}, err
		}
	}
	dp := &depproxyv1.DependencyProxy{}
	err := r.Get(ctx, client.ObjectKey{Namespace: nm.Spec.Cache.Namespace, Name: nm.Spec.Cache.Name}, dp)
	if client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, err
	}
	if dp.Status.Cache != nil {
		shared = dp.Status.Cache.Sharing
	}
	nm.Status.Registries = nil
	if reg := r.agentRegistry(); reg != "" && slices.Contains(nm.Spec.Registries, reg) {
		// The agents run as root on every selected node, from their image's
		// registry: sent through the cache, whoever edits the cache would
		// choose what they run.
		if err := r.stopAgents(ctx, nm); err != nil {
			return ctrl.Result{}, err
		}
		if err := r.releaseDropped(ctx, nm, nil); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, stalled(depproxyv1.ReasonMirrorsAgentImage,
			"%s is the registry of the node agents' own image %s: the nodes may not pull it through a cache (whoever edits the cache would choose what the agents run as root); leave it out of spec.registries",
			reg, r.ProxyImage)
	}
	if err != nil || !dp.DeletionTimestamp.IsZero() {
		// No cache, no agents: they would only take the files out again.
		if err := r.stopAgents(ctx, nm); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, waiting(depproxyv1.ReasonCacheNotFound,
			"DependencyProxy %s/%s named by spec.cache does not exist: no node is configured", nm.Spec.Cache.Namespace, nm.Spec.Cache.Name)
	}
	if err := r.ensureNodeNamespace(ctx); err != nil {
		return ctrl.Result{}, err
	}
	held, err := r.claim(ctx, nm, dp)
	if err != nil {
		return ctrl.Result{}, err
	}
	key, holder, err := r.applyNodeKey(ctx, nm, dp, len(held) > 0)
	if err != nil {
		return ctrl.Result{}, err
	}
	if agents, err = r.applyAgents(ctx, nm, dp, held, key); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.releaseDropped(ctx, nm, held); err != nil {
		return ctrl.Result{}, err
	}
	if len(held) > 0 {
		nm.Status.HostsToml = nodeFilePreview(nm, dp, held[0], key != nil)
	}
	// The agents' DaemonSet reports the nodes: its changes wake this.
	return ctrl.Result{}, nil
}

// claim takes, for each registry of the spec that the cache serves, the
// registry's claim, unless another NodeMirror holds it; it returns the
// registries this one holds, and records the others' fate in status.
func (r *NodeMirrorReconciler) claim(ctx context.Context, nm *depproxyv1.NodeMirror, dp *depproxyv1.DependencyProxy) ([]settings.Keyed, error) {
	var held []settings.Keyed
	for _, registry := range nm.Spec.Registries {
		st := depproxyv1.RegistryMirrorStatus{Registry: registry}
		served, ok := servedRegistry(dp, registry)
		if !ok {
			st.Reason = depproxyv1.ReasonRegistryNotServed
			st.Message = fmt.Sprintf("%s is not a registry of DependencyProxy %s/%s: add it to its upstreams (or their mirrorOf), or leave it out of spec.registries",
				registry, dp.Namespace, dp.Name)
			nm.Status.Registries = append(nm.Status.Registries, st)
			continue
		}
		if how := privateUpstream(dp, registry); how != "" && !nm.Spec.AllowPrivateUpstreams {
			// The cache would pull with these credentials for any Pod of
			// the selected nodes: that is the cluster admin's choice.
			st.Reason = depproxyv1.ReasonPrivateUpstream
			st.Message = fmt.Sprintf("%s is pulled with credentials (DependencyProxy %s/%s's %s): through the nodes, every Pod could pull its private images, "+
				"whatever its imagePullSecrets; set spec.allowPrivateUpstreams: true to mirror it anyway, or leave it out of spec.registries",
				registry, dp.Namespace, dp.Name, how)
			nm.Status.Registries = append(nm.Status.Registries, st)
			continue
		}
		holder, err := r.claimOne(ctx, nm, registry)
		if err != nil {
			return nil, err
		}
		if holder != "" {
			st.HeldBy = holder
			st.Reason = depproxyv1.ReasonNodeMirrorConflict
			st.Message = fmt.Sprintf("the nodes' configuration for %s is NodeMirror %s's, which claimed it first: leave %s out of spec.registries, or remove it from %s",
				registry, holder, registry, holder)
		} else {
			held = append(held, served)
		}
		nm.Status.Registries = append(nm.Status.Registries, st)
	}
	return held, nil
}

// claimOne makes nm the holder of registry's claim if nobody holds it;
// it returns the holder's name when that is another NodeMirror. A claim
// whose holder is gone is removed, and taken on a later reconcile.
func (r *NodeMirrorReconciler) claimOne(ctx context.Context, nm *depproxyv1.NodeMirror, registry string) (string, error) {
	want := desiredClaim(nm, registry, r.nodeNamespace())
	if err := controllerutil.SetControllerReference(nm, want, r.Scheme); err != nil {
		return "", err
	}
	err := r.Create(ctx, want)
	if err == nil {
		r.Recorder.Eventf(nm, want, corev1.EventTypeNormal, depproxyv1.ReasonCreated, "Claim", "claimed the nodes' configuration for %s", registry)
		return "", nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("claiming %s: %w", registry, err)
	}
	got := &corev1.ConfigMap{}
	if err := r.live().Get(ctx, client.ObjectKeyFromObject(want), got); err != nil {
		return "", err
	}
	if got.Data[claimUIDKey] == string(nm.UID) {
		return "", nil
	}
	holder := &depproxyv1.NodeMirror{}
	err = r.live().Get(ctx, client.ObjectKey{Name: got.Data[claimHolderKey]}, holder)
	if client.IgnoreNotFound(err) != nil {
		return "", err
	}
	if err != nil || string(holder.UID) != got.Data[claimUIDKey] {
		// The holder is gone without releasing it (deleted while the
		// operator was down, its finalizer removed by hand).
		uid := got.UID
		if err := r.Delete(ctx, got, client.Preconditions{UID: &uid}); client.IgnoreNotFound(err) != nil {
			return "", err
		}
	}
	return got.Data[claimHolderKey], nil
}

// claims are the claim ConfigMaps nm holds.
func (r *NodeMirrorReconciler) claims(ctx context.Context, nm *depproxyv1.NodeMirror) ([]corev1.ConfigMap, error) {
	list := &corev1.ConfigMapList{}
	if err := r.live().List(ctx, list, client.InNamespace(r.nodeNamespace()),
		client.MatchingLabels{claimLabel: "true", nodeMirrorUIDLabel: string(nm.UID)}); err != nil {
		return nil, err
	}
	return list.Items, nil
}

// agentPods are nm's node agents, stopping ones included.
func (r *NodeMirrorReconciler) agentPods(ctx context.Context, nm *depproxyv1.NodeMirror) ([]corev1.Pod, error) {
	pods := &corev1.PodList{}
	if err := r.live().List(ctx, pods, client.InNamespace(r.nodeNamespace()), client.MatchingLabels(nodeAgentLabels(nm))); err != nil {
		return nil, err
	}
	return pods.Items, nil
}

// releaseDropped gives up the claims on registries nm no longer holds,
// once no agent pod of it may still write or remove their files (the
// next holder's agents would fight it).
func (r *NodeMirrorReconciler) releaseDropped(ctx context.Context, nm *depproxyv1.NodeMirror, held []settings.Keyed) error {
	claims, err := r.claims(ctx, nm)
	if err != nil {
		return err
	}
	pods, err := r.agentPods(ctx, nm)
	if err != nil {
		return err
	}
	for i := range claims {
		registry := claims[i].Data[claimRegistryKey]
		if slices.ContainsFunc(held, func(k settings.Keyed) bool { return k.Registry == registry }) {
			continue
		}
		if slices.ContainsFunc(pods, func(p corev1.Pod) bool {
			return slices.Contains(strings.Split(p.Annotations[registriesAnnotation], ","), registry)
		}) {
			continue // released on a later reconcile, when that pod is gone
		}
		if err := r.Delete(ctx, &claims[i]); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("releasing the claim on %s: %w", registry, err)
		}
	}
	return nil
}

// applyAgents makes the NodePort Service and the agents' DaemonSets
// match what nm holds; with nothing held, neither runs. key is the
// nodes' key when they share (nil: they do not).
func (r *NodeMirrorReconciler) applyAgents(ctx context.Context, nm *depproxyv1.NodeMirror, dp *depproxyv1.DependencyProxy, held []settings.Keyed, key *corev1.Secret) ([]*appsv1.DaemonSet, error) {
	if len(held) == 0 {
		return nil, r.stopAgents(ctx, nm)
	}
	a := applier{client: r.Client, scheme: r.Scheme}
	svc := desiredNodePortService(nm, dp)
	if err := r.removeStaleServices(ctx, nm, svc); err != nil {
		return nil, err
	}
	spec := nm
	var zones []string
	if key != nil {
		nodes := &corev1.NodeList{}
		if err := r.List(ctx, nodes); err != nil {
			return nil, err
		}
		zones = selectedZones(nm, nodes.Items)
	} else if nm.Spec.Share != nil {
		// Asked for, not granted (another NodeMirror shares through
		// the cache): the agents run as without it.
		spec = nm.DeepCopy()
		spec.Spec.Share = nil
	}
	dss := desiredNodeAgents(spec, dp, held, r.ProxyImage, r.nodeNamespace(), zones)
	withNodeKeyHash(dss, key)
	children := []child{nodePortServiceChild(svc)}
	for _, ds := range dss {
		children = append(children, daemonSetChild(ds))
	}
	for _, c := range children {
		op, err := a.apply(ctx, nm, c)
		if err != nil {
			return nil, err
		}
		if op == controllerutil.OperationResultCreated {
			r.Recorder.Eventf(nm, c.obj, corev1.EventTypeNormal, depproxyv1.ReasonCreated, "Create", "created %s %s/%s",
				kindOf(c.obj, r.Scheme), c.obj.GetNamespace(), c.obj.GetName())
		}
	}
	if err := r.removeStaleAgents(ctx, nm, dss); err != nil {
		return nil, err
	}
	var got []*appsv1.DaemonSet
	for _, ds := range dss {
		g := &appsv1.DaemonSet{}
		if err := r.Get(ctx, client.ObjectKeyFromObject(ds), g); err != nil {
			return nil, err
		}
		got = append(got, g)
	}
	return got, nil
}

// removeStaleAgents deletes nm's agents' DaemonSets other than keep: a
// zone whose nodes are gone, or sharing turned off.
func (r *NodeMirrorReconciler) removeStaleAgents(ctx context.Context, nm *depproxyv1.NodeMirror, keep []*appsv1.DaemonSet) error {
	list := &appsv1.DaemonSetList{}
	if err := r.List(ctx, list, client.InNamespace(r.nodeNamespace()), client.MatchingLabels{nodeMirrorUIDLabel: string(nm.UID)}); err != nil {
		return err
	}
	a := applier{client: r.Client, scheme: r.Scheme}
	for i := range list.Items {
		ds := &list.Items[i]
		if slices.ContainsFunc(keep, func(k *appsv1.DaemonSet) bool { return k.Name == ds.Name }) {
			continue
		}
		if err := a.remove(ctx, nm, ds, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
			return err
		}
	}
	return nil
}

// applyNodeKey makes, while nm's nodes share through dp (run is false
// while no agent runs), the nodes' key in the node namespace (random,
// made once; deleting it makes a new one, which rolls the agents and the
// cache) and its copy in the cache's namespace, and returns the key.
// Otherwise it takes both out and returns nil. holder is the NodeMirror
// whose nodes share through dp, if any.
func (r *NodeMirrorReconciler) applyNodeKey(ctx context.Context, nm *depproxyv1.NodeMirror, dp *depproxyv1.DependencyProxy, run bool) (key *corev1.Secret, holder string, err error) {
	a := applier{client: r.Client, scheme: r.Scheme}
	orig := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: r.nodeNamespace(), Name: nodeKeyName(nm.Name)}}
	cp := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: dp.Namespace, Name: nodeKeyName(nm.Name)}}
	shares := false
	if run && sharing(nm) {
		mirrors := &depproxyv1.NodeMirrorList{}
		if err := r.List(ctx, mirrors); err != nil {
			return nil, holder, err
		}
		if s := sharer(dp, append(mirrors.Items, *nm)); s != nil {
			holder = s.Name
		}
		shares = holder == nm.Name
	}
	if !shares {
		for _, s := range []*corev1.Secret{cp, orig} {
			if err := a.remove(ctx, nm, s); err != nil {
				return nil, holder, err
			}
		}
		return nil, holder, nil
	}
	err = r.live().Get(ctx, client.ObjectKeyFromObject(orig), orig)
	if apierrors.IsNotFound(err) {
		if orig, err = desiredNodeKey(nm, r.nodeNamespace()); err != nil {
			return nil, holder, err
		}
		if err := controllerutil.SetControllerReference(nm, orig, r.Scheme); err != nil {
			return nil, holder, err
		}
		if err := r.Create(ctx, orig); err != nil {
			return nil, holder, fmt.Errorf("creating the nodes' key: %w", err)
		}
		r.Recorder.Eventf(nm, orig, corev1.EventTypeNormal, depproxyv1.ReasonCreated, "Create", "created the nodes' key Secret %s/%s", orig.Namespace, orig.Name)
	} else if err != nil {
		return nil, holder, err
	}
	if !metav1.IsControlledBy(orig, nm) {
		return nil, holder, waiting(depproxyv1.ReasonNameTaken,
			"Secret %s/%s exists and is not this NodeMirror's (a NodeMirror of the same name, deleted, may still own it): remove it, and the operator makes the nodes' key",
			orig.Namespace, orig.Name)
	}
	if !validNodeKey(orig) {
		return nil, holder, waiting(depproxyv1.ReasonInvalidSecret,
			"Secret %s/%s holds no usable key (%q of at least 16 bytes): delete it, and the operator makes a new one", orig.Namespace, orig.Name, nodeKeyFile)
	}
	if _, err := a.apply(ctx, nm, secretChild(desiredNodeKeyCopy(nm, dp, orig.Data[nodeKeyFile]))); err != nil {
		return nil, holder, err
	}
	return orig, holder, nil
}

// removeStaleServices deletes nm's NodePort Service in any namespace but
// the cache's: spec.cache was changed to another namespace.
func (r *NodeMirrorReconciler) removeStaleServices(ctx context.Context, nm *depproxyv1.NodeMirror, keep *corev1.Service) error {
	list := &corev1.ServiceList{}
	if err := r.List(ctx, list, client.MatchingLabels{nodeMirrorUIDLabel: string(nm.UID)}); err != nil {
		return err
	}
	a := applier{client: r.Client, scheme: r.Scheme}
	for i := range list.Items {
		if list.Items[i].Namespace != keep.Namespace {
			if err := a.remove(ctx, nm, &list.Items[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// stopAgents deletes nm's agents and NodePort Services; the agents take
// their files out as they stop. It returns a waiting error while any
// agent pod remains.
func (r *NodeMirrorReconciler) stopAgents(ctx context.Context, nm *depproxyv1.NodeMirror) error {
	if err := r.removeStaleAgents(ctx, nm, nil); err != nil {
		return err
	}
	if err := r.removeStaleServices(ctx, nm, &corev1.Service{}); err != nil {
		return err
	}
	pods, err := r.agentPods(ctx, nm)
	if err != nil {
		return err
	}
	if len(pods) > 0 {
		e := waiting(depproxyv1.ReasonNodesUnconfiguring, "taking the nodes' configuration out: %d node agents still stopping", len(pods))
		e.after = 2 * time.Second
		return e
	}
	return nil
}

// finalize stops the agents, then releases the claims and lets the
// NodeMirror go.
func (r *NodeMirrorReconciler) finalize(ctx context.Context, nm *depproxyv1.NodeMirror) error {
	if !controllerutil.ContainsFinalizer(nm, nodeMirrorFinalizer) {
		return nil
	}
	if err := r.stopAgents(ctx, nm); err != nil {
		return err
	}
	if err := r.releaseDropped(ctx, nm, nil); err != nil {
		return err
	}
	controllerutil.RemoveFinalizer(nm, nodeMirrorFinalizer)
	return r.Update(ctx, nm)
}

// ensureNodeNamespace makes the node agents' namespace where it is
// missing, admitting the hostPath volume they need; an existing one is
// left as the cluster admin has it.
func (r *NodeMirrorReconciler) ensureNodeNamespace(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.nodeNamespace(), Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "privileged", managedByLabel: managedBy}}}
	if err := r.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s for the node agents: %w", ns.Name, err)
	}
	return nil
}

// computeNodeMirrorStatus sets the conditions and counts from the
// reconcile's outcome, the registries' fate and the agents' state.
func computeNodeMirrorStatus(nm *depproxyv1.NodeMirror, agents []*appsv1.DaemonSet, outcome *reconcileError) {
	gen := nm.Generation
	st := &nm.Status
	st.ObservedGeneration = gen
	st.Nodes, st.Configured = 0, 0
	settled := len(agents) > 0
	for _, ds := range agents {
		st.Nodes += ds.Status.DesiredNumberScheduled
		st.Configured += ds.Status.NumberReady
		settled = settled && ds.Status.ObservedGeneration >= ds.Generation
	}
	st.Summary = fmt.Sprintf("%d/%d", st.Configured, st.Nodes)
	for i := range st.Registries {
		st.Registries[i].Configured = 0
		if st.Registries[i].Message == "" {
			st.Registries[i].Configured = st.Configured
		}
	}
	if len(agents) == 0 {
		st.HostsToml = ""
	}
	settled = settled && st.Configured == st.Nodes
	mirrorConditions(nm, outcome, settled).applyTo(&st.Conditions)
}

// SetupWithManager watches NodeMirrors, their children, the caches they
// name and the registry claims (a released claim wakes those refused).
func (r *NodeMirrorReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	enqueue := func(match func(nm *depproxyv1.NodeMirror, o client.Object) bool) handler.EventHandler {
		return handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			list := &depproxyv1.NodeMirrorList{}
			if err := r.List(ctx, list); err != nil {
				return nil
			}
			var reqs []reconcile.Request
			for i := range list.Items {
				if match(&list.Items[i], o) {
					reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
				}
			}
			return reqs
		})
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&depproxyv1.NodeMirror{}).
		Owns(&appsv1.DaemonSet{}).
		Owns(&corev1.Service{}).
		// A sharing NodeMirror runs one DaemonSet per zone of its nodes.
		Watches(&corev1.Node{}, enqueue(func(nm *depproxyv1.NodeMirror, _ client.Object) bool { return nm.Spec.Share != nil }),
			builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Watches(&corev1.ConfigMap{}, enqueue(func(*depproxyv1.NodeMirror, client.Object) bool { return true }),
			builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetLabels()[claimLabel] == "true" }))).
		Watches(&depproxyv1.DependencyProxy{}, enqueue(func(nm *depproxyv1.NodeMirror, o client.Object) bool {
			return nm.Spec.Cache.Namespace == o.GetNamespace() && nm.Spec.Cache.Name == o.GetName()
		})).
		Complete(r)
}
