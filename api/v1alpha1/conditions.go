package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// Condition types.
const (
	// ConditionReady: the cache serves (enough replicas available).
	ConditionReady = "Ready"
	// ConditionProgressing: a change is rolling out.
	ConditionProgressing = "Progressing"
	// ConditionDegraded: the spec cannot be carried out as it stands.
	ConditionDegraded = "Degraded"
	// ConditionReconciling and ConditionStalled are what kstatus (Flux,
	// Argo CD, kubectl wait) reads: Reconciling is True while a change
	// rolls out or the operator waits for something the spec names;
	// Stalled is True when the spec cannot work until someone changes it.
	// Both are absent otherwise.
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
	// ConditionUpstreamThrottled: an upstream's rate limit is nearly
	// spent, or it answered 429; cached tags are served without asking
	// it until the time its message gives.
	ConditionUpstreamThrottled = "UpstreamThrottled"
	// ConditionOverBudget: with spec.storage.maxSize, what is stored is
	// over the budget after eviction: pinned images alone exceed it.
	ConditionOverBudget = "OverBudget"
	// ConditionUpstreamCredentials: every credential provider plugin of
	// the upstreams gave credentials the last time it was asked; False
	// names the hosts whose did not, and what it said (cached tags are
	// served meanwhile).
	ConditionUpstreamCredentials = "UpstreamCredentials"
	// ConditionWarmed: every image spec.keep names is cached; False
	// names those that are not, and why (each is tried again).
	ConditionWarmed = "Warmed"
	// ConditionSharing: with spec.share, the NodeMirror's agents serve
	// their nodes' stores to each other (status.sharing of them ready);
	// False says why not.
	ConditionSharing = "Sharing"
	// ConditionVerified: with spec.verify, no image failed verification
	// in the last hour; False names the last one that did, and why.
	// Unknown until the cache reports.
	ConditionVerified = "Verified"
)

// Condition reasons. The same string is the reason of the event that
// reports the same outcome.
const (
	// ReasonAvailable: every replica the spec asks for is serving.
	ReasonAvailable = "Available"
	// ReasonRollingOut: the Deployment has not yet made the spec's
	// replicas available (a new resource, a changed spec, a rolling pod).
	ReasonRollingOut = "RollingOut"
	// ReasonReconciled: every child object matches the spec.
	ReasonReconciled = "Reconciled"
	// ReasonSecretNotFound: a Secret the spec names does not exist yet;
	// the operator looks again when it appears.
	ReasonSecretNotFound = "SecretNotFound"
	// ReasonTargetNotFound: the DependencyProxy a CleanupPolicy targets
	// does not exist yet.
	ReasonTargetNotFound = "TargetNotFound"
	// ReasonInvalidSecret: a Secret the spec names exists but cannot be
	// used as it is (a users Secret without users); fix the Secret.
	ReasonInvalidSecret = "InvalidSecret"
	// ReasonStorageConflict: another DependencyProxy, created earlier,
	// keeps its cache in an overlapping prefix of the same bucket; two
	// caches there would serve and delete each other's objects.
	ReasonStorageConflict = "StorageConflict"
	// ReasonNodeMirrorConflict: another NodeMirror holds the claim on a
	// registry this one names; the message names the holder.
	ReasonNodeMirrorConflict = "NodeMirrorConflict"
	// ReasonNodesUnconfiguring: the NodeMirror is going (or its cache
	// is), and the node agents are taking the nodes' files out.
	ReasonNodesUnconfiguring = "NodesUnconfiguring"
	// ReasonNodesConfiguring: the node agents run, and not every
	// selected node pulls through the cache yet (it must answer first).
	ReasonNodesConfiguring = "NodesConfiguring"
	// ReasonNodesConfigured: every selected node pulls every registry
	// the NodeMirror holds through the cache.
	ReasonNodesConfigured = "NodesConfigured"
	// ReasonCacheNotFound: the DependencyProxy a NodeMirror names does
	// not exist (or is going); no node is configured.
	ReasonCacheNotFound = "CacheNotFound"
	// ReasonRegistryNotServed: a registry a NodeMirror names is not one
	// of its cache's upstreams or their mirrorOf.
	ReasonRegistryNotServed = "RegistryNotServed"
	// ReasonPrivateUpstream: a registry a NodeMirror names pulls with
	// its upstream's credentials, and the NodeMirror does not say
	// allowPrivateUpstreams: it is left out.
	ReasonPrivateUpstream = "PrivateUpstream"
	// ReasonMirrorsAgentImage: a NodeMirror names the registry of the
	// node agents' own image (the manager's --proxy-image): whoever edits
	// the cache would choose what the root agents run. Nothing is
	// rendered to the nodes.
	ReasonMirrorsAgentImage = "MirrorsAgentImage"
	// ReasonNodesSharing: the agents have the nodes' key, their store and
	// their peer listener; the cache has the key.
	ReasonNodesSharing = "NodesSharing"
	// ReasonShareConflict: another NodeMirror's nodes share through the
	// same cache, which takes one key: this one's agents do not share.
	ReasonShareConflict = "ShareConflict"
	// ReasonScheduled: the cleanup CronJob runs on the policy's schedule.
	ReasonScheduled = "Scheduled"
	// ReasonSuspended: the policy is suspended; no new runs start.
	ReasonSuspended = "Suspended"
	// ReasonConfigRolled: the proxy's config changed and its pods roll.
	ReasonConfigRolled = "ConfigRolled"
	// ReasonRateLimited: an upstream's rate limit is down to the reserve,
	// or it answered 429.
	ReasonRateLimited = "RateLimited"
	// ReasonWithinRateLimit: no upstream is being spared.
	ReasonWithinRateLimit = "WithinRateLimit"
	// ReasonWithinBudget and ReasonPinnedOverBudget: the storage budget
	// holds, or pinned images alone exceed it.
	ReasonWithinBudget     = "WithinBudget"
	ReasonPinnedOverBudget = "PinnedOverBudget"
	// ReasonCredentialsProvided and ReasonCredentialProviderFailed:
	// ConditionUpstreamCredentials'.
	ReasonCredentialsProvided      = "CredentialsProvided"
	ReasonCredentialProviderFailed = "CredentialProviderFailed"
	// ReasonNoCredentialProviders: an upstream names a credential
	// provider plugin, and the operator was given none.
	ReasonNoCredentialProviders = "NoCredentialProviders"
	// ReasonAllWarmed and ReasonWarmFailed: ConditionWarmed's.
	ReasonAllWarmed  = "AllWarmed"
	ReasonWarmFailed = "WarmFailed"
	// ReasonNameTaken: an object of the name a child would have exists
	// and is not the resource's; the operator leaves it alone.
	ReasonNameTaken = "NameTaken"
	// ReasonInvalidSettings: the spec passed the API server's checks
	// but makes settings the proxy refuses; the message says why.
	ReasonInvalidSettings = "InvalidSettings"
	// ReasonVerifyKeyMissing: a key spec.verify names is not there (its
	// Secret, or the key in it) or is not a PEM public key, or a rule's
	// trusted root is not there (its ConfigMap, or the key in it) or is
	// not JSON, or a notation rule's trust store (a ConfigMap of PEM
	// certificates) or trust policy is not there or not right. In
	// enforce mode nothing is rolled out until it is (the running proxy
	// keeps the policy it has); in audit mode the key is left out of the
	// policy, and a rule without its root, trust store or trust policy.
	ReasonVerifyKeyMissing = "VerifyKeyMissing"
	// ReasonAllVerified, ReasonImageRefused, ReasonUnverifiedServed and
	// ReasonVerificationNotReported: ConditionVerified's. Refused is
	// enforce mode's failure, UnverifiedServed audit mode's.
	ReasonAllVerified             = "AllVerified"
	ReasonImageRefused            = "ImageRefused"
	ReasonUnverifiedServed        = "UnverifiedServed"
	ReasonVerificationNotReported = "VerificationNotReported"
	// ReasonCreated: the operator created a child object.
	ReasonCreated = "Created"
	// ReasonReconcileFailed: a transient failure talking to the API
	// server; the operator retries with backoff.
	ReasonReconcileFailed = "ReconcileFailed"
)

// GetConditions returns the status conditions.
func (dp *DependencyProxy) GetConditions() []metav1.Condition { return dp.Status.Conditions }

// GetConditions returns the status conditions.
func (cp *CleanupPolicy) GetConditions() []metav1.Condition { return cp.Status.Conditions }
