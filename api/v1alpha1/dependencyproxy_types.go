package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AutoscalingSpec scales the proxy on CPU.
// +kubebuilder:validation:XValidation:rule="self.minReplicas <= self.maxReplicas",message="autoscaling: minReplicas may not exceed maxReplicas"
type AutoscalingSpec struct {
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=50
	MinReplicas int32 `json:"minReplicas"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=50
	MaxReplicas int32 `json:"maxReplicas"`
	// TargetCPUUtilizationPercentage of the containers' CPU request;
	// set resources.requests.cpu for it to mean something.
	// +optional
	// +kubebuilder:default=70
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	TargetCPUUtilizationPercentage int32 `json:"targetCPUUtilizationPercentage,omitempty"`
}

// DependencyProxySpec is a tenant's pull-through cache.
// +kubebuilder:validation:XValidation:rule="!has(self.upstreams) || size(self.upstreams) == 0 || (self.upstream.url == 'https://registry-1.docker.io' && !has(self.upstream.credentialsSecretRef) && !has(self.upstream.mirrorOf))",message="set either upstream (one registry) or upstreams (several), not both"
// +kubebuilder:validation:XValidation:rule="!has(self.nodeMirror)",message="spec.nodeMirror is no longer a DependencyProxy's: what the nodes pull through is a cluster admin's decision, made with a cluster-scoped NodeMirror whose spec.cache names this DependencyProxy; remove spec.nodeMirror"
// +kubebuilder:validation:XValidation:rule="!has(self.nodePort)",message="spec.nodePort is no longer a DependencyProxy's: a cluster admin's NodeMirror (spec.nodePort) serves the cache on the nodes; remove spec.nodePort"
type DependencyProxySpec struct {
	// Upstream is the registry pulled through; Docker Hub by default.
	// +optional
	// +kubebuilder:default={}
	// +kubebuilder:validation:XValidation:rule="!has(self.url) || self.url.matches('^https?://[^/?#]+/?$')",message="upstream.url must be a scheme and host, like https://registry-1.docker.io"
	Upstream UpstreamSpec `json:"upstream"`

	// Upstreams are several registries pulled through by one cache; the
	// first is the default for requests that name no registry. Set this
	// or upstream, not both.
	// +optional
	// +listType=map
	// +listMapKey=registry
	// +kubebuilder:validation:MaxItems=16
	Upstreams []RegistryUpstream `json:"upstreams,omitempty"`

	// NodeMirror is refused: node mirroring is the cluster-scoped
	// NodeMirror kind's. The field stays in the schema only so that a
	// resource still carrying it gets a message saying so, not a silent
	// prune.
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:validation:Type=object
	RemovedNodeMirror *apiextensionsv1.JSON `json:"nodeMirror,omitempty"`

	// NodePort is refused, as nodeMirror is: a NodeMirror serves the
	// cache on the nodes' port.
	// +optional
	RemovedNodePort *int32 `json:"nodePort,omitempty"`

	// Storage is the S3 bucket (MinIO) the cache keeps manifests and blobs in.
	Storage StorageSpec `json:"storage"`

	// Auth says who may pull.
	// +optional
	// +kubebuilder:default={anonymous: true}
	Auth *AuthSpec `json:"auth,omitempty"`

	// Replicas of the proxy; they share the bucket, and each cold blob
	// and tag is downloaded once, by the replica that owns it. Ignored
	// with autoscaling.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=50
	Replicas *int32 `json:"replicas,omitempty"`

	// Autoscaling runs between minReplicas and maxReplicas replicas,
	// scaled on CPU by a HorizontalPodAutoscaler; the Deployment's
	// replica count is then the autoscaler's alone.
	// +optional
	Autoscaling *AutoscalingSpec `json:"autoscaling,omitempty"`

	// Resources of the proxy container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// RecheckInterval is how long a tag confirmed with the upstream is
	// served without asking again; "0s" sends one HEAD per tag request.
	// +optional
	// +kubebuilder:default="0s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
	RecheckInterval metav1.Duration `json:"recheckInterval,omitempty"`

	// PrefetchPlatforms are platforms (os/arch[/variant]) whose images are
	// cached as soon as their index is.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:Pattern="^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$"
	PrefetchPlatforms []string `json:"prefetchPlatforms,omitempty"`

	// Access says what the cache may pull: images not allowed, or
	// denied, are refused with DENIED before anything is read or
	// fetched, cached ones too. A change applies without the pods
	// rolling, once the kubelet updates their config file.
	// +optional
	Access *AccessSpec `json:"access,omitempty"`

	// Keep says which images the cache keeps whatever its cleanup says
	// (pins), and caches before any node pulls them (warming).
	// +optional
	Keep *KeepSpec `json:"keep,omitempty"`

	// Image overrides the depproxy image of the cache's own pods and
	// cleanup jobs, in this namespace; the node agents of a NodeMirror
	// always run the operator's.
	// +optional
	Image string `json:"image,omitempty"`

	// TLS serves the registry port with HTTPS, from a kubernetes.io/tls
	// Secret (cert-manager's, say). A renewed certificate is picked up
	// without restarting the pods.
	// +optional
	TLS *TLSSpec `json:"tls,omitempty"`

	// Audit writes the pull audit log to the proxy's standard output, a
	// JSON line each with "stream":"audit" (its own logs go to standard
	// error): who pulled which tag and digest, from where, and whether
	// the cache or the upstream answered; refused requests too.
	// +optional
	Audit *AuditSpec `json:"audit,omitempty"`

	// Verify checks the signatures of the images the cache serves, once
	// per manifest digest, before any byte of it is served: in enforce
	// mode an image a rule matches and no key, keyless identity or
	// notation trust of it signed is refused (403 DENIED, naming the rule
	// and the reason); in audit mode it is served, logged and counted.
	// The keys come from Secrets, the trusted roots, notation trust
	// stores and trust policies from ConfigMaps, of this namespace only.
	// +optional
	Verify *VerifySpec `json:"verify,omitempty"`
}

// VerifyMode says what a failed verification does.
// +kubebuilder:validation:Enum=enforce;audit
type VerifyMode string

const (
	// VerifyEnforce refuses the pull.
	VerifyEnforce VerifyMode = "enforce"
	// VerifyAudit serves it, and logs and counts the failure.
	VerifyAudit VerifyMode = "audit"
)

// VerifySpec is a cache's signature policy.
type VerifySpec struct {
	// Mode is enforce (refuse what fails) or audit (serve it, log and
	// count it); enforce by default.
	// +optional
	// +kubebuilder:default=enforce
	Mode VerifyMode `json:"mode,omitempty"`

	// Rules are tried in order; the first whose images match an image
	// decides it. Images no rule matches are served unchecked.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	Rules []VerifyRule `json:"rules"`
}

// VerifyRule says which images must be signed, and by which keys,
// which keyless identity or which notation trust.
// +kubebuilder:validation:XValidation:rule="[has(self.keys), has(self.keyless), has(self.notation)].filter(x, x).size() == 1",message="a verify rule names keys, a keyless identity or notation trust: exactly one of keys, keyless, notation"
// +kubebuilder:validation:XValidation:rule="!(has(self.keyless) || has(self.notation)) || !has(self.ignoreTlog) || !self.ignoreTlog",message="ignoreTlog is for key rules: a keyless certificate holds only with its transparency-log proof, and notation has no log"
// +kubebuilder:validation:XValidation:rule="!has(self.trustedRootRef) || has(self.keys)",message="trustedRootRef is for key rules (a keyless rule names its own in keyless.trustedRootRef)"
// +kubebuilder:validation:XValidation:rule="!has(self.trustedRootRef) || !has(self.ignoreTlog) || !self.ignoreTlog",message="ignoreTlog and trustedRootRef: one or the other (a log proof is either checked against the root or not asked for)"
type VerifyRule struct {
	// Images are patterns over registry/repository, as in spec.access
	// (nginx is docker.io/library/nginx; * within a path component, **
	// across), without a tag: a signature is of a digest, which any tag
	// may name.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=512
	// +kubebuilder:validation:items:Pattern=`^[^\s@]+$`
	// +kubebuilder:validation:XValidation:rule="self.all(p, !p.matches(':[^/]*$'))",message="a verify rule's images name repositories (ghcr.io/org/**), not tags: a signature is of a digest, which any tag may name"
	Images []string `json:"images"`

	// Keys are cosign public keys; an image signed by any of them passes.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	Keys []VerifyKey `json:"keys,omitempty"`

	// Keyless is the signer's identity in place of keys: a cosign
	// keyless signature (a v3 bundle) whose short-lived certificate,
	// transparency-log proof and timestamp verify against the trusted
	// root, offline, and whose certificate names this issuer and
	// subject.
	// +optional
	Keyless *VerifyKeyless `json:"keyless,omitempty"`

	// IgnoreTlog accepts a key signature without a transparency-log
	// proof, as cosign verify --insecure-ignore-tlog does; without it, a
	// key signature needs its log proof.
	// +optional
	IgnoreTlog bool `json:"ignoreTlog,omitempty"`

	// TrustedRootRef names the ConfigMap holding the trusted root
	// (trusted_root.json) whose log keys a key signature's
	// transparency-log proof is checked against, offline, in the
	// resource's own namespace. For key rules; not with ignoreTlog.
	// +optional
	TrustedRootRef *ConfigMapKeyRef `json:"trustedRootRef,omitempty"`

	// Notation is the rule's trust in place of cosign's: notation
	// signatures, verified as notation verify does against a trust
	// store and a trust policy, both from ConfigMaps of the resource's
	// own namespace.
	// +optional
	Notation *VerifyNotation `json:"notation,omitempty"`
}

// VerifyNotation is notation's trust: the CA certificates of a trust
// store and the OCI trust policy naming it.
type VerifyNotation struct {
	// TrustStoreRef names the ConfigMap whose every key is a PEM CA
	// certificate: the trust store ca:<storeName> of the trust policy.
	TrustStoreRef NotationTrustStoreRef `json:"trustStoreRef"`
	// TrustPolicyRef names the ConfigMap key holding the OCI trust
	// policy (notation's trustpolicy.json); its statements' trustStores
	// name ca:<storeName> only.
	TrustPolicyRef TrustPolicyRef `json:"trustPolicyRef"`
}

// NotationTrustStoreRef is a ConfigMap of the resource's namespace
// whose keys are CA certificates, as a named notation trust store.
type NotationTrustStoreRef struct {
	// Name of the ConfigMap.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// StoreName is the trust store's name, as the trust policy names it
	// (ca:<storeName>); the ConfigMap's name by default.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern="^[-._a-zA-Z0-9]+$"
	// +kubebuilder:validation:XValidation:rule="self != '.' && !self.startsWith('..')",message="a trust store's name may not be . or begin with .."
	StoreName string `json:"storeName,omitempty"`
}

// TrustPolicyRef is one key of a ConfigMap in the resource's namespace
// holding a notation trust policy.
type TrustPolicyRef struct {
	// Name of the ConfigMap.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// Key of the ConfigMap's data holding the trust policy;
	// trustpolicy.json by default.
	// +optional
	// +kubebuilder:default="trustpolicy.json"
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern="^[-._a-zA-Z0-9]+$"
	// +kubebuilder:validation:XValidation:rule="self != '.' && !self.startsWith('..')",message="a ConfigMap's key may not be . or begin with .."
	Key string `json:"key,omitempty"`
}

// VerifyKeyless is a keyless signer: who the certificate names, and the
// trusted root its CA, log and timestamp authority are checked against.
// Issuer and subject are each an exact value or a regular expression
// (Go syntax, unanchored, as cosign's --certificate-identity-regexp).
// +kubebuilder:validation:XValidation:rule="has(self.issuer) != has(self.issuerRegExp)",message="keyless: exactly one of issuer, issuerRegExp"
// +kubebuilder:validation:XValidation:rule="has(self.subject) != has(self.subjectRegExp)",message="keyless: exactly one of subject, subjectRegExp"
type VerifyKeyless struct {
	// Issuer is the OIDC issuer the certificate names, exactly
	// (https://token.actions.githubusercontent.com).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	Issuer string `json:"issuer,omitempty"`
	// IssuerRegExp matches the issuer.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	IssuerRegExp string `json:"issuerRegExp,omitempty"`
	// Subject is the identity the certificate names, exactly (a
	// workflow's URL, an e-mail address).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	Subject string `json:"subject,omitempty"`
	// SubjectRegExp matches the subject.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	SubjectRegExp string `json:"subjectRegExp,omitempty"`
	// TrustedRootRef names the ConfigMap holding the trusted root
	// (trusted_root.json, as cosign trusted-root create writes it, or
	// the public-good instance's from its TUF repository), in the
	// resource's own namespace. Nothing else is trusted, and nothing is
	// fetched.
	TrustedRootRef ConfigMapKeyRef `json:"trustedRootRef"`
}

// ConfigMapKeyRef is one key of a ConfigMap in the resource's namespace.
type ConfigMapKeyRef struct {
	// Name of the ConfigMap.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// Key of the ConfigMap's data holding the trusted root;
	// trusted_root.json by default.
	// +optional
	// +kubebuilder:default="trusted_root.json"
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern="^[-._a-zA-Z0-9]+$"
	// +kubebuilder:validation:XValidation:rule="self != '.' && !self.startsWith('..')",message="a ConfigMap's key may not be . or begin with .."
	Key string `json:"key,omitempty"`
}

// VerifyKey is a public key.
type VerifyKey struct {
	// SecretRef names the Secret holding the key, in the resource's own
	// namespace (there is no other: a key elsewhere must be copied here
	// by someone who may read it).
	SecretRef SecretKeyRef `json:"secretRef"`
}

// SecretKeyRef is one key of a Secret in the resource's namespace.
type SecretKeyRef struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// Key of the Secret's data holding the PEM public key; cosign.pub
	// (as cosign generate-key-pair and cosign's k8s:// keys name it) by
	// default.
	// +optional
	// +kubebuilder:default="cosign.pub"
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern="^[-._a-zA-Z0-9]+$"
	// +kubebuilder:validation:XValidation:rule="self != '.' && !self.startsWith('..')",message="a Secret's key may not be . or begin with .."
	Key string `json:"key,omitempty"`
}

// AuditSpec says what the audit log holds.
type AuditSpec struct {
	// Enabled writes the audit log.
	Enabled bool `json:"enabled"`
	// Blobs logs every blob request too (many per pull).
	// +optional
	Blobs bool `json:"blobs,omitempty"`
}

// TLSSpec names the certificate a cache serves.
type TLSSpec struct {
	// SecretRef names a kubernetes.io/tls Secret (keys tls.crt and
	// tls.key) in the resource's namespace.
	SecretRef corev1.LocalObjectReference `json:"secretRef"`
}

// UpstreamSpec is the registry a cache pulls through.
type UpstreamSpec struct {
	// URL is the registry's scheme and host.
	// +optional
	// +kubebuilder:default="https://registry-1.docker.io"
	// +kubebuilder:validation:MaxLength=2048
	// (A registry's URL is a scheme and a host: checked where the spec
	// uses it, since a Helm repository's has a path.)
	URL string `json:"url,omitempty"`

	// CredentialsSecretRef names a Secret with the upstream's credentials,
	// for private registries.
	// +optional
	CredentialsSecretRef *corev1.LocalObjectReference `json:"credentialsSecretRef,omitempty"`

	// MirrorOf names the registries this upstream stands in for, as
	// containerd names them when the proxy is a node's mirror (its ?ns=
	// parameter), besides the upstream's own host: docker.io when the
	// upstream is an internal mirror of Docker Hub, say. Requests for any
	// other registry are refused.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern="^[A-Za-z0-9.-]+(:[0-9]+)?$"
	MirrorOf []string `json:"mirrorOf,omitempty"`

	// CredentialProvider gets the upstream's credentials from a kubelet
	// credential provider plugin (ecr-credential-provider,
	// auth-provider-gcp, acr-credential-provider), as the kubelet would,
	// instead of a Secret. The plugins are the cluster admin's: those of
	// the image the operator was given (--credential-provider-image).
	// +optional
	CredentialProvider *CredentialProviderSpec `json:"credentialProvider,omitempty"`
}

// CredentialProviderSpec names a plugin and what it is given.
type CredentialProviderSpec struct {
	// Name is the plugin's, a file of the cluster admin's plugin image.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern="^[A-Za-z0-9._-]+$"
	Name string `json:"name"`

	// ServiceAccountTokenAudience, when set, gives the plugin a
	// service-account token of the proxy's pods for this audience (a
	// projected token: sts.amazonaws.com for ECR with IRSA), and the
	// annotations of their ServiceAccount.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	ServiceAccountTokenAudience string `json:"serviceAccountTokenAudience,omitempty"`

	// Args are the plugin's arguments (ecr-credential-provider wants
	// get-credentials).
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=256
	Args []string `json:"args,omitempty"`

	// CacheDuration is how long the plugin's answer is used when it does
	// not say; 5m by default.
	// +optional
	CacheDuration *metav1.Duration `json:"cacheDuration,omitempty"`
}

// RegistryUpstream is one of several registries a cache pulls through.
// +kubebuilder:validation:XValidation:rule="!has(self.url) || (has(self.kind) && self.kind == 'helm') || self.url.matches('^https?://[^/?#]+/?$')",message="a registry's url must be a scheme and host, like https://ghcr.io (a Helm repository's, with kind: helm, may have a path)"
// +kubebuilder:validation:XValidation:rule="!has(self.kind) || self.kind != 'helm' || (has(self.url) && self.url.matches('^https?://[^?#@]+$'))",message="a Helm repository's url is where its index.yaml is, like https://charts.example.com/stable"
// +kubebuilder:validation:XValidation:rule="!has(self.kind) || self.kind != 'helm' || (!has(self.credentialProvider) && !has(self.mirrorOf))",message="a Helm repository takes credentialsSecretRef (a username and password), neither credentialProvider nor mirrorOf"
type RegistryUpstream struct {
	// Registry is the name images use for it (docker.io, ghcr.io): what
	// containerd sends as ?ns=, the path prefix, and the directory of its
	// hosts.toml on the nodes.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern="^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?$"
	Registry string `json:"registry"`

	// Kind is what the upstream is: a registry (the default), or helm, a
	// classic Helm chart repository (its index.yaml at url) served as OCI
	// charts: helm pull oci://CACHE/REGISTRY/CHART --version V.
	// +optional
	// +kubebuilder:validation:Enum=registry;helm
	Kind string `json:"kind,omitempty"`

	UpstreamSpec `json:",inline"`
}

// UpstreamKindHelm is a RegistryUpstream that is a Helm chart repository.
const UpstreamKindHelm = "helm"

// StorageSpec is an S3 bucket.
type StorageSpec struct {
	// Endpoint is the S3 endpoint's host:port, e.g. minio.storage:9000.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="!self.contains('/')",message="storage.endpoint is host:port, without a scheme or path"
	Endpoint string `json:"endpoint"`

	// Bucket holds the cache; it is created if missing.
	// +kubebuilder:validation:Pattern="^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
	Bucket string `json:"bucket"`

	// Prefix keeps this cache apart from others in the same bucket. No
	// two caches may use overlapping prefixes of one bucket: the one
	// created later is refused with a StorageConflict condition.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern="^[A-Za-z0-9._/-]*$"
	// +kubebuilder:validation:XValidation:rule="!self.matches('(^|/)[.][.]?(/|$)')",message="storage.prefix may not contain . or .. path segments"
	Prefix string `json:"prefix,omitempty"`

	// CredentialsSecretRef names a Secret with the keys AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY.
	CredentialsSecretRef corev1.LocalObjectReference `json:"credentialsSecretRef"`

	// Insecure talks plain HTTP to the endpoint.
	// +optional
	Insecure bool `json:"insecure,omitempty"`

	// MaxSize is the storage budget: over it, whole images are evicted,
	// least recently pulled first and never a pinned one, down to 90% of
	// it, within minutes.
	// +optional
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('0'))",message="storage.maxSize must be more than 0"
	MaxSize *resource.Quantity `json:"maxSize,omitempty"`

	// Hot keeps the blobs each replica fetched or served recently on its
	// own disk, and serves them from there: a rollout's nodes pulling one
	// new image are served at the disk's speed, not the bucket's. The
	// bucket stays the truth and what the replicas share.
	// +optional
	Hot *HotTierSpec `json:"hot,omitempty"`
}

// AccessSpec: patterns over registry/repository[:tag], names as clients
// write them (nginx is docker.io/library/nginx); * within a path
// component, ** across.
type AccessSpec struct {
	// Allow: only these may be pulled; none allows all not denied.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=512
	Allow []string `json:"allow,omitempty"`
	// Deny: never pulled; deny wins over allow.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=512
	Deny []string `json:"deny,omitempty"`
}

// KeepSpec: what the cluster runs stays pullable.
type KeepSpec struct {
	// InUse pins the images of the workloads the cache serves: those in
	// its own namespace whose images name its endpoint, and, when a
	// NodeMirror names this cache, every workload in the cluster whose
	// image registry that NodeMirror mirrors. A running Pod pins the
	// digest its node pulled (status.containerStatuses[].imageID); Pods
	// not running yet, Deployments, StatefulSets, DaemonSets, Jobs and
	// CronJobs pin their templates' images.
	// +optional
	InUse bool `json:"inUse,omitempty"`

	// Revisions pins also the images of the last this many ReplicaSets
	// of each Deployment (scaled to 0 or not): a rollback pulls.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Revisions int32 `json:"revisions,omitempty"`

	// Warm caches the images of those workloads as soon as a workload
	// appears or its template changes, for the platforms of the
	// cluster's nodes, before a Pod pulls them.
	// +optional
	Warm bool `json:"warm,omitempty"`

	// Images are pinned and warmed by name (docker.io/library/postgres:16,
	// ghcr.io/org/tool@sha256:...).
	// +optional
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MaxLength=512
	Images []string `json:"images,omitempty"`
}

// HotTierSpec is each replica's local disk in front of the bucket.
type HotTierSpec struct {
	// Size is the most each replica keeps there (e.g. 20Gi), least
	// recently read out first.
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('0'))",message="storage.hot.size must be more than 0"
	Size resource.Quantity `json:"size"`

	// StorageClassName gives each replica a volume of this class (a
	// generic ephemeral volume, made and deleted with its pod) instead
	// of an emptyDir on the node's disk.
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`
}

// AuthSpec says who may pull from a cache.
// +kubebuilder:validation:XValidation:rule="has(self.usersSecretRef) != (has(self.anonymous) && self.anonymous)",message="auth: set exactly one of usersSecretRef (pulls need a login) or anonymous: true (anyone may pull)"
type AuthSpec struct {
	// UsersSecretRef names a Secret whose keys are user names and whose
	// values are their passwords.
	// +optional
	UsersSecretRef *corev1.LocalObjectReference `json:"usersSecretRef,omitempty"`

	// Anonymous lets anyone pull without logging in.
	// +optional
	Anonymous bool `json:"anonymous,omitempty"`
}

// DependencyProxyStatus is what the operator and the proxy report.
type DependencyProxyStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready, Progressing, Degraded, UpstreamThrottled, and
	// kstatus' Reconciling and Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Endpoint is where clients pull from, inside the cluster.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// Cache summarises what the proxy holds, as it last reported.
	// +optional
	Cache *CacheSummary `json:"cache,omitempty"`
}

// CacheSummary is a bounded view of a cache's contents.
type CacheSummary struct {
	// Images are the most recently cached tags, at most 50.
	// +optional
	// +kubebuilder:validation:MaxItems=50
	Images []CachedImage `json:"images,omitempty"`

	// ImageCount is the number of cached tags, all of them.
	ImageCount int64 `json:"imageCount"`

	// Bytes is the size of all cached blobs and manifests.
	Bytes int64 `json:"bytes"`

	// Size is Bytes for people (e.g. 1.2Gi).
	Size string `json:"size"`

	// HitRatio is the share of requests served from the cache since the
	// proxy started, e.g. "0.93".
	// +optional
	HitRatio string `json:"hitRatio,omitempty"`

	// ReportedAt is when the proxy reported this.
	ReportedAt metav1.Time `json:"reportedAt"`

	// Throttled are the upstreams whose rate limit is nearly spent (or
	// that answered 429): until the time given, cached tags are served
	// without asking them.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	Throttled []ThrottledUpstream `json:"throttled,omitempty"`

	// Budget is spec.storage.maxSize for people, when set; BudgetBytes
	// the same in bytes.
	// +optional
	Budget string `json:"budget,omitempty"`
	// +optional
	BudgetBytes int64 `json:"budgetBytes,omitempty"`

	// OverBudget: after the last eviction, what is stored is still over
	// the budget, all of it pinned (or being written). The budget is too
	// small for what the cluster runs.
	// +optional
	OverBudget bool `json:"overBudget,omitempty"`

	// LastEvicted are the images the last eviction took (the last few),
	// at LastEvictionTime.
	// +optional
	// +kubebuilder:validation:MaxItems=20
	LastEvicted []string `json:"lastEvicted,omitempty"`
	// +optional
	LastEvictionTime *metav1.Time `json:"lastEvictionTime,omitempty"`

	// CredentialErrors are the upstream hosts whose credential provider
	// plugin failed the last time, and what it said.
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	CredentialErrors map[string]string `json:"credentialErrors,omitempty"`

	// Denied counts the requests spec.access refused since the proxy
	// started.
	// +optional
	Denied int64 `json:"denied,omitempty"`

	// Kept are the images pinned or warmed (spec.keep), at most 100, and
	// how caching them went.
	// +optional
	// +kubebuilder:validation:MaxItems=100
	Kept []KeptImage `json:"kept,omitempty"`
	// KeptCount is the number of images pinned or warmed, all of them.
	// +optional
	KeptCount int `json:"keptCount,omitempty"`

	// Sharing is what the nodes of the NodeMirror that shares through
	// this cache (spec.share) told it; the NodeMirror's status shows it.
	// +optional
	Sharing *SharingSummary `json:"sharing,omitempty"`

	// Verification is what spec.verify decided, as the replica asked
	// last counted since it started.
	// +optional
	Verification *VerificationSummary `json:"verification,omitempty"`
}

// VerificationSummary counts signature verifications (one per manifest
// digest and policy: a verdict reused is not counted again), and names
// the last failures.
type VerificationSummary struct {
	// Verified passed.
	Verified int64 `json:"verified"`
	// Refused failed in enforce mode: not served.
	Refused int64 `json:"refused"`
	// Audited failed in audit mode: served all the same.
	Audited int64 `json:"audited"`
	// LastRefusals are the last failures, the most recent first.
	// +optional
	// +kubebuilder:validation:MaxItems=10
	LastRefusals []VerificationRefusal `json:"lastRefusals,omitempty"`
}

// VerificationRefusal is one image that failed verification.
type VerificationRefusal struct {
	// Image is registry/repository@digest.
	Image string `json:"image"`
	// Rule is the policy's rule that matched it (rule N (its images)).
	Rule string `json:"rule"`
	// Reason it failed: no signature, signed by another key, ...
	Reason string `json:"reason"`
	// Audited: it was served all the same (audit mode).
	// +optional
	Audited bool `json:"audited,omitempty"`
	// At is when it failed.
	At metav1.Time `json:"at"`
}

// SharingSummary is what the nodes that share hold and where their bytes
// came from, as their agents last told the cache (each with every
// request it signs), over the nodes heard from in the last day. Bytes
// fetched count since each agent started.
type SharingSummary struct {
	// Nodes is how many nodes' agents told the cache.
	Nodes int32 `json:"nodes"`
	// StoreBytes is what their stores hold, and Store the same for people.
	StoreBytes int64  `json:"storeBytes"`
	Store      string `json:"store,omitempty"`
	// FromPeersBytes are the blob bytes the nodes got from each other:
	// the cache's egress sharing saved.
	FromPeersBytes int64 `json:"fromPeersBytes"`
	// FromCacheBytes are the blob bytes the nodes got from the cache.
	FromCacheBytes int64 `json:"fromCacheBytes"`
	// ReportedAt is when the operator last read it from the cache.
	ReportedAt metav1.Time `json:"reportedAt"`
}

// KeptImage is an image spec.keep names.
type KeptImage struct {
	// Image is the reference (registry/repository:tag or @digest).
	Image string `json:"image"`
	// Pinned: kept whatever its last pull; else only warmed.
	Pinned bool `json:"pinned"`
	// Digest is the manifest it names, once cached; Children the
	// children of an index cached for the nodes' platforms.
	// +optional
	Digest string `json:"digest,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxItems=16
	Children []string `json:"children,omitempty"`
	// Warmed: cached, index, children and blobs.
	Warmed bool `json:"warmed"`
	// Error is why the last try failed; it is tried again with backoff.
	// +optional
	Error string `json:"error,omitempty"`
	// Denied is why spec.access refuses the image: it is neither
	// fetched nor pinned.
	// +optional
	Denied string `json:"denied,omitempty"`
}

// ThrottledUpstream is an upstream spared until a time.
type ThrottledUpstream struct {
	Registry string      `json:"registry"`
	Until    metav1.Time `json:"until"`
	// Remaining is what the upstream said is left of its rate limit.
	// +optional
	Remaining int32 `json:"remaining,omitempty"`
}

// CachedImage is a cached tag; for an index, its platform images too.
type CachedImage struct {
	// Registry the tag belongs to, e.g. docker.io.
	// +optional
	Registry string `json:"registry,omitempty"`
	// Repository, e.g. library/alpine.
	Repository string `json:"repository"`
	// Tag, e.g. 3.20.
	Tag string `json:"tag"`
	// Digest the tag pointed at when cached.
	Digest string `json:"digest"`
	// MediaType of that manifest.
	MediaType string `json:"mediaType"`
	// Platforms are an index's children.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Platforms []PlatformImage `json:"platforms,omitempty"`
}

// PlatformImage is one child of an index.
type PlatformImage struct {
	// Platform as os/arch[/variant], or "unknown/unknown" for attestations.
	Platform string `json:"platform"`
	// Digest of the child manifest.
	Digest string `json:"digest"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=dp,categories=depproxy
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.endpoint`
// +kubebuilder:printcolumn:name="Images",type=integer,JSONPath=`.status.cache.imageCount`
// +kubebuilder:printcolumn:name="Size",type=string,JSONPath=`.status.cache.size`
// +kubebuilder:printcolumn:name="Budget",type=string,JSONPath=`.status.cache.budget`
// +kubebuilder:printcolumn:name="Hit Ratio",type=string,JSONPath=`.status.cache.hitRatio`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// DependencyProxy is a tenant's pull-through cache.
type DependencyProxy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DependencyProxySpec   `json:"spec,omitempty"`
	Status DependencyProxyStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// DependencyProxyList is a list of DependencyProxy.
type DependencyProxyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DependencyProxy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&DependencyProxy{}, &DependencyProxyList{})
}
