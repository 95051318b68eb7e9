package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeRuntime is the container runtime whose configuration the node
// agents write.
// +kubebuilder:validation:Enum=containerd;cri-o
type NodeRuntime string

const (
	// RuntimeContainerd writes hosts.toml files under containerd's
	// config_path (/etc/containerd/certs.d by default).
	RuntimeContainerd NodeRuntime = "containerd"
	// RuntimeCRIO writes registries.conf.d drop-ins (CRI-O, podman),
	// under /etc/containers/registries.conf.d by default.
	RuntimeCRIO NodeRuntime = "cri-o"
)

// CacheReference names the DependencyProxy that serves the nodes.
type CacheReference struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// NodeMirrorSpec says which cache the nodes pull through, for which
// registries, on which nodes. It is a cluster admin's: nothing a tenant
// writes in its own namespace reaches the nodes.
// +kubebuilder:validation:XValidation:rule="!has(self.stargz) || !has(self.runtime) || self.runtime == 'containerd'",message="stargz is a containerd snapshotter: a cri-o node has none (CRI-O and podman lazy-pull with the stargz store)"
type NodeMirrorSpec struct {
	// Cache is the DependencyProxy the nodes pull through.
	Cache CacheReference `json:"cache"`

	// Registries the nodes pull through the cache: each one of the
	// cache's upstreams' registries (spec.upstreams[].registry, or the
	// host of spec.upstream.url) or their mirrorOf. A registry is
	// configured by one NodeMirror only: the first to claim it keeps it.
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern="^[A-Za-z0-9.-]+(:[0-9]+)?$"
	Registries []string `json:"registries"`

	// NodePort serves the cache on this port of every node's address,
	// where the nodes' runtime reaches it without cluster DNS. It must
	// lie in the cluster's NodePort range (30000-32767 by default).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	NodePort int32 `json:"nodePort"`

	// Runtime is the nodes' container runtime: containerd (hosts.toml)
	// or cri-o (registries.conf.d drop-ins, which podman reads too).
	// +optional
	// +kubebuilder:default=containerd
	Runtime NodeRuntime `json:"runtime,omitempty"`

	// ConfigPath is the node directory the agents write, the only one
	// they mount: containerd's config_path (default
	// /etc/containerd/certs.d) or /etc/containers/registries.conf.d.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern="^/"
	// +kubebuilder:validation:XValidation:rule="!self.matches('(^|/)[.][.]?(/|$)')",message="configPath is an absolute path without . or .. segments"
	// +kubebuilder:validation:XValidation:rule="self != '/'",message="configPath may not be the node's root directory"
	ConfigPath string `json:"configPath,omitempty"`

	// DialTimeout bounds the runtime's connect to the cache, so that a
	// cache that is down costs this long before the fallback to the
	// registry itself.
	// +optional
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m))+$"
	DialTimeout *metav1.Duration `json:"dialTimeout,omitempty"`

	// NodeSelector picks the nodes configured; all by default.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// Tolerations let the node agents run on tainted nodes.
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// Stargz also points the stargz snapshotter (containerd-stargz-grpc,
	// which pulls eStargz images lazily) at the cache. It fetches layers
	// itself, by the registry mirrors of its own config file, not by
	// hosts.toml: the agents write the cache first among each
	// registry's mirrors there, over the admin's other settings (kept
	// aside, and put back when the NodeMirror goes). The snapshotter
	// reads the file when it starts.
	// +optional
	Stargz *StargzSnapshotter `json:"stargz,omitempty"`

	// AllowPrivateUpstreams lets the NodeMirror send through the cache a
	// registry whose upstream pulls with credentials
	// (credentialsSecretRef or credentialProvider). The cache pulls with
	// them for every node: any Pod of the selected nodes then pulls the
	// registry's private images, whatever its imagePullSecrets, and the
	// kubelet's own check of pull credentials never sees it. Without
	// this, such a registry is left out, with a reason in status.
	// +optional
	AllowPrivateUpstreams bool `json:"allowPrivateUpstreams,omitempty"`

	// Share makes each node's agent that node's own mirror: the node's
	// runtime pulls through it first (on the node's loopback,
	// 127.0.0.1:5050), it keeps what the node pulled in a bounded store
	// on the node, and it serves those blobs to the other nodes of its
	// zone that the cache sends to it with a ticket. The agents then run
	// on the node's host network. The agents and the cache share a key
	// the operator makes (the nodes' trust domain): the cache named by
	// spec.cache must be in a namespace only cluster admins edit. One
	// NodeMirror per cache shares: the first by name.
	// +optional
	Share *NodeShare `json:"share,omitempty"`
}

// NodeShare is where the nodes keep what they pulled, and where their
// peers reach them.
// +kubebuilder:validation:XValidation:rule="self.peerPort != 5050 && self.peerPort != 9092",message="peerPort is taken on the node by the agent itself: 5050 is its local mirror, 9092 its readiness and metrics"
type NodeShare struct {
	// Store is the node directory the agent keeps blobs in.
	Store NodeStore `json:"store"`

	// PeerPort is the port of the node's own address where its agent
	// serves other nodes (with the cache's ticket only). The agents run
	// on the host network: the port must be free on every selected node,
	// open between nodes, and outside the cluster's NodePort range
	// (30000-32767 by default), where kube-proxy would send a NodePort
	// Service's traffic instead.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	PeerPort int32 `json:"peerPort"`
}

// NodeStore is a directory on each node, and the most it may hold.
type NodeStore struct {
	// Path is the node directory (a hostPath), made if missing; the agent
	// mounts it and nothing else of the node for the store. Give it a
	// directory of its own: the agent evicts what it did not write.
	// +kubebuilder:validation:MinLength=2
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern="^/"
	// +kubebuilder:validation:XValidation:rule="!self.matches('(^|/)[.][.]?(/|$)')",message="share.store.path is an absolute path without . or .. segments"
	// +kubebuilder:validation:XValidation:rule="self != '/' && !self.matches('^/+$')",message="share.store.path may not be the node's root directory"
	Path string `json:"path"`

	// Size is the most the store keeps (e.g. 50Gi), least recently read
	// out first; the agent also leaves 5% of the disk (at most 1 GiB)
	// free.
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('0'))",message="share.store.size must be more than 0"
	Size resource.Quantity `json:"size"`
}

// StargzSnapshotter is where a node's stargz snapshotter keeps its config.
type StargzSnapshotter struct {
	// ConfigPath is the snapshotter's config file on the node; the agents
	// mount its directory.
	// +optional
	// +kubebuilder:default="/etc/containerd-stargz-grpc/config.toml"
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern="^/.*[^/]$"
	// +kubebuilder:validation:XValidation:rule="!self.matches('(^|/)[.][.]?(/|$)')",message="stargz.configPath is an absolute file path without . or .. segments"
	// +kubebuilder:validation:XValidation:rule="self.split('/').size() > 2",message="stargz.configPath is a file in a directory of its own, not in the node's root directory"
	ConfigPath string `json:"configPath,omitempty"`
}

// StargzConfigPath is the stargz snapshotter's config file, or "" when
// the NodeMirror leaves it alone.
func (s *NodeMirrorSpec) StargzConfigPath() string {
	switch {
	case s.Stargz == nil:
		return ""
	case s.Stargz.ConfigPath != "":
		return s.Stargz.ConfigPath
	default:
		return "/etc/containerd-stargz-grpc/config.toml"
	}
}

// ConfigDir is the node directory written: spec.configPath, else the
// runtime's own.
func (s *NodeMirrorSpec) ConfigDir() string {
	switch {
	case s.ConfigPath != "":
		return s.ConfigPath
	case s.Runtime == RuntimeCRIO:
		return "/etc/containers/registries.conf.d"
	default:
		return "/etc/containerd/certs.d"
	}
}

// RegistryMirrorStatus is how one registry of a NodeMirror fares.
type RegistryMirrorStatus struct {
	// Registry, as in spec.registries.
	Registry string `json:"registry"`
	// Configured is how many nodes pull it through the cache now.
	Configured int32 `json:"configured"`
	// HeldBy names the NodeMirror that configures this registry on the
	// nodes instead of this one; empty when this one does.
	// +optional
	HeldBy string `json:"heldBy,omitempty"`
	// Reason is why the registry is not configured, in one word (a
	// condition's reason), when it is not.
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message says why the registry is not configured, when it is not.
	// +optional
	Message string `json:"message,omitempty"`
}

// NodeMirrorStatus is how far the nodes are configured.
type NodeMirrorStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready (every selected node is configured for every
	// registry), Degraded, and kstatus' Reconciling and Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Nodes is how many nodes the agents run on.
	Nodes int32 `json:"nodes"`
	// Configured is how many of them pull through the cache now.
	Configured int32 `json:"configured"`
	// Sharing is how many nodes' agents are ready to serve their store
	// (spec.share): each is its node's mirror, and serves the peers the
	// cache sends to it.
	// +optional
	Sharing int32 `json:"sharing,omitempty"`
	// Shared is what the sharing nodes hold, and the bytes they got from
	// each other against those they got from the cache, as their agents
	// told the cache. Each node's own figures are in its agent's
	// metrics, on port 9092: depproxy_node_bytes_total by source (store,
	// peer, cache), depproxy_node_peer_served_bytes_total,
	// depproxy_proxy_hot_bytes (the store).
	// +optional
	Shared *SharingSummary `json:"shared,omitempty"`
	// Summary is Configured/Nodes, for the printer column.
	Summary string `json:"summary"`

	// Registries, one entry per spec.registries.
	// +optional
	// +listType=map
	// +listMapKey=registry
	Registries []RegistryMirrorStatus `json:"registries,omitempty"`

	// HostsToml is the file written for the first configured registry,
	// with the node's address as <node>.
	// +optional
	HostsToml string `json:"hostsToml,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=nm,categories=depproxy
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 52",message="a NodeMirror's name is at most 52 characters: its node agent DaemonSet and NodePort Service are named after it"
// +kubebuilder:printcolumn:name="Cache",type=string,JSONPath=`.spec.cache.name`
// +kubebuilder:printcolumn:name="Cache Namespace",type=string,JSONPath=`.spec.cache.namespace`
// +kubebuilder:printcolumn:name="Registries",type=string,JSONPath=`.spec.registries`
// +kubebuilder:printcolumn:name="Nodes Configured",type=string,JSONPath=`.status.summary`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// NodeMirror makes the nodes' container runtime pull registries through a
// DependencyProxy: the operator runs a node agent DaemonSet that writes
// each node's hosts.toml (or registries.conf.d drop-in) once the cache
// answers there, takes it out while the cache stays unreachable, and
// restores what was there when the NodeMirror goes. Cluster-scoped: only
// cluster admins decide what the nodes pull through.
type NodeMirror struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   NodeMirrorSpec   `json:"spec,omitempty"`
	Status NodeMirrorStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// NodeMirrorList is a list of NodeMirror.
type NodeMirrorList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeMirror `json:"items"`
}

// GetConditions returns the status conditions.
func (nm *NodeMirror) GetConditions() []metav1.Condition { return nm.Status.Conditions }

func init() {
	SchemeBuilder.Register(&NodeMirror{}, &NodeMirrorList{})
}
