package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

func mirrorProxy(t *testing.T, ns string, nodePort int32) *depproxyv1.DependencyProxy {
	t.Helper()
	storageSecret(t, ns, "minio", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
	dp := &depproxyv1.DependencyProxy{
		ObjectMeta: metav1.ObjectMeta{Name: "cluster-mirror", Namespace: ns},
		Spec: depproxyv1.DependencyProxySpec{
			Upstreams: []depproxyv1.RegistryUpstream{
				{Registry: "docker.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://registry-1.docker.io"}},
				{Registry: "ghcr.io", UpstreamSpec: depproxyv1.UpstreamSpec{URL: "https://ghcr.io"}},
			},
			Storage: depproxyv1.StorageSpec{Endpoint: "minio:9000", Bucket: "cache", Prefix: ns,
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "minio"}},
			NodePort:   ptr.To(nodePort),
			NodeMirror: &depproxyv1.NodeMirrorSpec{},
		},
	}
	if err := k8sClient.Create(context.Background(), dp); err != nil {
		t.Fatal(err)
	}
	return dp
}

// spec.upstreams and spec.nodeMirror: the config names every registry,
// the node agents run in their own namespace with the node's directory,
// a second resource claiming a registry's nodes is refused naming the
// first, and deleting the resource waits for the agents to stop.
func TestNodeMirror(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	dp := mirrorProxy(t, ns, 30511)
	r, _ := newProxyReconciler(k8sClient)
	r.NodeNamespace = "nodes-" + ns
	reconcileProxy(t, r, dp)

	cm := &corev1.ConfigMap{}
	k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cluster-mirror-depproxy"}, cm)
	if !strings.Contains(cm.Data["config.yaml"], "- docker.io=https://registry-1.docker.io\n- ghcr.io=https://ghcr.io\n") {
		t.Errorf("config.yaml does not name both upstreams:\n%s", cm.Data["config.yaml"])
	}
	nodeNS := &corev1.Namespace{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Name: r.NodeNamespace}, nodeNS); err != nil || nodeNS.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Fatalf("the node agents' namespace: %v %v", err, nodeNS.Labels)
	}
	ds := &appsv1.DaemonSet{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: r.NodeNamespace, Name: ns + "-cluster-mirror-node"}, ds); err != nil {
		t.Fatalf("no node agent DaemonSet: %v", err)
	}
	args := strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " ")
	for _, want := range []string{"node --endpoint http://$(NODE_IP):30511", "--dir /etc/containerd/certs.d", "--dial-timeout 1s",
		"--registry docker.io --server docker.io=https://registry-1.docker.io", "--registry ghcr.io --server ghcr.io=https://ghcr.io"} {
		if !strings.Contains(args, want) {
			t.Errorf("node agent args %q lack %q", args, want)
		}
	}
	if hp := ds.Spec.Template.Spec.Volumes[0].HostPath; hp == nil || hp.Path != "/etc/containerd/certs.d" {
		t.Errorf("the node's directory is not mounted: %+v", ds.Spec.Template.Spec.Volumes)
	}
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	if !controllerutil.ContainsFinalizer(dp, nodeMirrorFinalizer) || dp.Status.NodeMirror == nil || dp.Status.NodeMirror.Summary != "0/0" {
		t.Fatalf("finalizer %v, status %+v", dp.Finalizers, dp.Status.NodeMirror)
	}
	if h := dp.Status.NodeMirror.HostsToml; !strings.Contains(h, `server = "https://registry-1.docker.io"`) || !strings.Contains(h, `[host."http://<node>:30511"]`) {
		t.Errorf("status.nodeMirror.hostsToml:\n%s", h)
	}

	// Another resource may not write the nodes' docker.io configuration.
	time.Sleep(1100 * time.Millisecond) // creation times have a second's resolution
	ns2 := namespace(t)
	other := mirrorProxy(t, ns2, 30512)
	reconcileProxy(t, r, other)
	k8sClient.Get(ctx, client.ObjectKeyFromObject(other), other)
	c := assertCondition(t, other, depproxyv1.ConditionReady, metav1.ConditionFalse, depproxyv1.ReasonNodeMirrorConflict)
	if !strings.Contains(c.Message, ns+"/cluster-mirror") {
		t.Errorf("the condition does not name the other resource: %q", c.Message)
	}

	// Deleting it stops the agents first; the resource goes after.
	if err := k8sClient.Delete(ctx, dp); err != nil {
		t.Fatal(err)
	}
	k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp)
	reconcileProxy(t, r, dp)
	if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(ds), ds); !apierrors.IsNotFound(err) {
		t.Errorf("the node agents were not stopped: %v", err)
	}
	reconcileProxy(t, r, dp)
	if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(dp), dp); !apierrors.IsNotFound(err) {
		t.Errorf("the resource is held after its node agents stopped: %v, finalizers %v", err, dp.Finalizers)
	}
}
