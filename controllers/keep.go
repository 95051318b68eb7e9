package controllers

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/access"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/routing"
)

// Where the keep ConfigMap's files are, in the proxy's pods and the
// cleanup's.
const (
	keepDir       = configDir + "/keep"
	pinnedKey     = "pinned"
	warmKey       = "warm"
	revisionLabel = "deployment.kubernetes.io/revision"
	// maxKeptBytes bounds each file, so that both fit a ConfigMap (1 MiB):
	// a cluster running more distinct images than that keeps the first
	// ones in order.
	maxKeptBytes = 480 << 10
)

// keeping: the spec asks the cache to pin or warm anything.
func keeping(dp *depproxyv1.DependencyProxy) bool {
	k := dp.Spec.Keep
	return k != nil && (k.InUse || k.Warm || k.Revisions > 0 || len(k.Images) > 0)
}

func keepName(dp *depproxyv1.DependencyProxy) string { return proxyName(dp) + "-keep" }

// workloads are what runs, or may run, where a cache serves: Pods and
// the pod templates of the controllers that make them.
type workloads struct {
	Pods         []corev1.Pod
	Deployments  []appsv1.Deployment
	ReplicaSets  []appsv1.ReplicaSet
	StatefulSets []appsv1.StatefulSet
	DaemonSets   []appsv1.DaemonSet
	Jobs         []batchv1.Job
	CronJobs     []batchv1.CronJob
}

// imageScope says which images a cache serves, and how it names them:
// those naming its endpoint in its own namespace, and those of the
// registries a NodeMirror sends through it, from the nodes it selects;
// never one its access rules refuse.
type imageScope struct {
	namespace string
	endpoints []string // host:port forms of the cache's Service
	// routes are the routing table of the settings the operator renders
	// for the cache: the proxy's own rule of which upstream serves a
	// name, under which repository.
	routes routing.Table
	// mirrored are the registries a NodeMirror naming this cache holds
	// (claimed, served by the cache, not refused), each with that
	// NodeMirror's nodeSelector: the nodes that pull it through the
	// cache.
	mirrored map[string]map[string]string
	nodes    map[string]labels.Set // the cluster's nodes' labels, by name
	rules    *access.Rules
	// refuseAll: the access rules do not parse; nothing is kept (the
	// cache itself refuses the spec).
	refuseAll bool
}

// source is where an image was named: a Pod (on node, "" while it is
// unscheduled) or a pod template, in namespace.
type source struct {
	namespace string
	node      string
	template  bool
}

func scopeOf(dp *depproxyv1.DependencyProxy, mirrors []depproxyv1.NodeMirror, nodes []corev1.Node) imageScope {
	svc := proxyName(dp) + "." + dp.Namespace
	port := ":" + strconv.Itoa(ProxyPort)
	sc := imageScope{namespace: dp.Namespace, endpoints: []string{svc + ".svc" + port, svc + ".svc.cluster.local" + port, svc + port},
		mirrored: map[string]map[string]string{}, nodes: map[string]labels.Set{}}
	conf := proxySettings(dp)
	routes, err := conf.Routes()
	sc.routes, sc.refuseAll = routes, err != nil
	for _, nm := range mirrors {
		if nm.Spec.Cache.Namespace != dp.Namespace || nm.Spec.Cache.Name != dp.Name || !nm.DeletionTimestamp.IsZero() {
			continue
		}
		for _, r := range heldRegistries(&nm) {
			if _, ok := servedRegistry(dp, r); ok {
				sc.mirrored[r] = nm.Spec.NodeSelector
			}
		}
	}
	for _, n := range nodes {
		sc.nodes[n.Name] = n.Labels
	}
	if a := dp.Spec.Access; a != nil {
		rules, err := access.Parse(a.Allow, a.Deny)
		sc.rules, sc.refuseAll = rules, sc.refuseAll || err != nil
	}
	return sc
}

// heldRegistries are the registries of a NodeMirror's spec that its
// status says it configures on the nodes: claimed by it, served by its
// cache, not refused. Another NodeMirror's registry, or one left out,
// tells its cache nothing of the cluster's workloads.
func heldRegistries(nm *depproxyv1.NodeMirror) []string {
	var out []string
	for _, st := range nm.Status.Registries {
		if st.HeldBy == "" && st.Message == "" && st.Reason == "" && slices.Contains(nm.Spec.Registries, st.Registry) {
			out = append(out, st.Registry)
		}
	}
	return out
}

// line is the pins file's line for an image a workload names, as the
// cache's clients name it (registry/repository:tag or @digest); false
// when the cache does not serve it to where it was named, or its access
// rules refuse it.
func (sc imageScope) line(src source, image string) (string, bool) {
	ref, err := name.ParseReference(image)
	if err != nil {
		return "", false
	}
	host := ref.Context().RegistryStr()
	if registryname.IsDockerHub(host) {
		host = registryname.DockerHub
	}
	repo := ref.Context().RepositoryStr()
	registry := ""
	switch {
	case src.namespace == sc.namespace && slices.Contains(sc.endpoints, host):
		// Through the endpoint: routed as the proxy routes the path (a
		// first element that is a registry the cache serves, else the
		// default's; one it does not serve is refused there).
		to, err := sc.routes.Route("", repo)
		if err != nil {
			return "", false
		}
		registry, repo = to.Named, to.Repository
		if registry == "" {
			registry = sc.routes[to.Upstream].Registry
		}
	case sc.onMirroredNode(host, src):
		registry = host
	default:
		return "", false
	}
	l := registry + "/" + repo + ":" + ref.Identifier()
	if d, ok := ref.(name.Digest); ok {
		l = registry + "/" + repo + "@" + d.DigestStr()
	}
	return l, sc.allowed(l)
}

// onMirroredNode: host is a registry a NodeMirror sends through the
// cache, and src runs on a node it selects. With a nodeSelector, only a
// scheduled Pod on a selected node counts: where a template's Pods will
// run is not known.
func (sc imageScope) onMirroredNode(host string, src source) bool {
	selector, ok := sc.mirrored[host]
	switch {
	case !ok:
		return false
	case len(selector) == 0:
		return true
	case src.template || src.node == "":
		return false
	}
	nodeLabels, known := sc.nodes[src.node]
	return known && labels.SelectorFromSet(selector).Matches(nodeLabels)
}

// allowed: the cache's access rules let it pull the line's image. A
// line they refuse is neither fetched nor pinned by the cache, so it is
// left out.
func (sc imageScope) allowed(line string) bool {
	if sc.refuseAll {
		return false
	}
	if sc.rules.Empty() {
		return true
	}
	named, _, _ := strings.Cut(line, "@")
	repoTag, tag := access.Normalize(named)
	registry, repo, _ := strings.Cut(repoTag, "/")
	to, err := sc.routes.Route(registry, repo)
	if err != nil {
		return false // the cache does not serve it
	}
	return sc.rules.Denied(sc.routes.Names(to), to.Repository, tag) == ""
}

// keptImages are the pins file and the warm file of a cache: sorted,
// each image once.
func keptImages(dp *depproxyv1.DependencyProxy, sc imageScope, w workloads) (pinned, warm []string) {
	k := dp.Spec.Keep
	if k == nil {
		return nil, nil
	}
	used := map[string]bool{}
	add := func(src source, image string) {
		if l, ok := sc.line(src, image); ok {
			used[l] = true
		}
	}
	addTemplate := func(namespace string, spec corev1.PodSpec) {
		for _, c := range allContainers(spec) {
			add(source{namespace: namespace, template: true}, c.Image)
		}
		for _, ref := range volumeImages(spec) {
			add(source{namespace: namespace, template: true}, ref)
		}
	}
	for _, p := range w.Pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		src := source{namespace: p.Namespace, node: p.Spec.NodeName}
		pulled := map[string]bool{}
		for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			// The digest the node pulled, named as the Pod names its
			// image: the tag may have moved since.
			if d := digestOf(cs.ImageID); d != "" {
				if ref, err := name.ParseReference(cs.Image); err == nil {
					add(src, ref.Context().String()+"@"+d)
					pulled[cs.Name] = true
				}
			}
		}
		for _, c := range allContainers(p.Spec) {
			if !pulled[c.Name] {
				add(src, c.Image)
			}
		}
		for _, ref := range volumeImages(p.Spec) {
			add(src, ref)
		}
	}
	for _, d := range w.Deployments {
		addTemplate(d.Namespace, d.Spec.Template.Spec)
	}
	for _, rs := range lastRevisions(w.ReplicaSets, int(k.Revisions)) {
		addTemplate(rs.Namespace, rs.Spec.Template.Spec)
	}
	for _, s := range w.StatefulSets {
		addTemplate(s.Namespace, s.Spec.Template.Spec)
	}
	for _, d := range w.DaemonSets {
		addTemplate(d.Namespace, d.Spec.Template.Spec)
	}
	for _, j := range w.Jobs {
		if j.Status.CompletionTime == nil {
			addTemplate(j.Namespace, j.Spec.Template.Spec)
		}
	}
	for _, c := range w.CronJobs {
		addTemplate(c.Namespace, c.Spec.JobTemplate.Spec.Template.Spec)
	}
	var workloadImages []string
	for l := range used {
		workloadImages = append(workloadImages, l)
	}
	explicit := map[string]bool{}
	for _, img := range k.Images {
		// Written by the tenant, as the cache's clients name images:
		// only its access rules decide.
		if sc.allowed(img) {
			explicit[img] = true
		}
	}
	if k.InUse || k.Revisions > 0 {
		pinned = append(pinned, workloadImages...)
	}
	if k.Warm {
		warm = append(warm, workloadImages...)
	}
	for img := range explicit {
		pinned = append(pinned, img)
	}
	return bounded(pinned), bounded(warm)
}

func bounded(lines []string) []string {
	sort.Strings(lines)
	lines = slices.Compact(lines)
	size := 0
	for i, l := range lines {
		if size += len(l) + 1; size > maxKeptBytes {
			return lines[:i]
		}
	}
	return lines
}

// lastRevisions are the n newest ReplicaSets of each Deployment, by the
// revision the Deployment controller gave them.
func lastRevisions(rss []appsv1.ReplicaSet, n int) []appsv1.ReplicaSet {
	if n <= 0 {
		return nil
	}
	byOwner := map[string][]appsv1.ReplicaSet{}
	for _, rs := range rss {
		for _, o := range rs.OwnerReferences {
			if o.Kind == "Deployment" && o.Controller != nil && *o.Controller {
				byOwner[rs.Namespace+"/"+o.Name] = append(byOwner[rs.Namespace+"/"+o.Name], rs)
			}
		}
	}
	var out []appsv1.ReplicaSet
	for _, list := range byOwner {
		sort.Slice(list, func(i, j int) bool { return revision(list[i]) > revision(list[j]) })
		out = append(out, list[:min(n, len(list))]...)
	}
	return out
}

func revision(rs appsv1.ReplicaSet) int64 {
	r, _ := strconv.ParseInt(rs.Annotations[revisionLabel], 10, 64)
	return r
}

func allContainers(spec corev1.PodSpec) []corev1.Container {
	return append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
}

// volumeImages are the OCI artifacts and images a pod mounts as volumes
// (spec.volumes[].image.reference, on by default since Kubernetes 1.35):
// pulled through the same runtime path as its containers' images, kept
// the same way.
func volumeImages(spec corev1.PodSpec) []string {
	var out []string
	for _, v := range spec.Volumes {
		if v.Image != nil && v.Image.Reference != "" {
			out = append(out, v.Image.Reference)
		}
	}
	return out
}

// digestOf is the digest of a container status' imageID
// (docker.io/library/nginx@sha256:..., or docker-pullable://...); "" for
// an image ID that names no repository digest.
func digestOf(imageID string) string {
	_, d, ok := strings.Cut(imageID, "@")
	if !ok || !strings.HasPrefix(d, "sha256:") {
		return ""
	}
	return d
}

// desiredKeepConfigMap holds the pins file and the warm file.
func desiredKeepConfigMap(dp *depproxyv1.DependencyProxy, pinned, warm []string) *corev1.ConfigMap {
	file := func(lines []string) string {
		return fmt.Sprintf("# written by the depproxy operator from spec.keep: %d images\n", len(lines)) + strings.Join(lines, "\n") + "\n"
	}
	return &corev1.ConfigMap{
		ObjectMeta: objectMeta(keepName(dp), dp.Namespace, proxyLabels(dp)),
		Data:       map[string]string{pinnedKey: file(pinned), warmKey: file(warm)},
	}
}
