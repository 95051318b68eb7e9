package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CleanupPolicySpec expires what a cache's tenants no longer pull.
type CleanupPolicySpec struct {
	// Target is the DependencyProxy, in the same namespace, whose cache is
	// cleaned.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Target string `json:"target"`

	// TTLDays: manifests and blobs not pulled for this many days are
	// deleted (a blob only once no kept manifest references it).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=3650
	TTLDays int32 `json:"ttlDays"`

	// Schedule in cron format, e.g. "17 3 * * *".
	// +optional
	// +kubebuilder:default="17 3 * * *"
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^ *[^ ]+( +[^ ]+){4} *$') || self.matches('^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$')",message="schedule must be a cron expression of five fields, like \"17 3 * * *\", or a macro like @daily"
	Schedule string `json:"schedule,omitempty"`

	// Suspend stops scheduling runs; a run in progress finishes.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// CleanupPolicyStatus is what the last runs did.
type CleanupPolicyStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// LastScheduleTime is when a run last started.
	// +optional
	LastScheduleTime *metav1.Time `json:"lastScheduleTime,omitempty"`

	// NextScheduleTime is when the next run starts; empty while suspended.
	// +optional
	NextScheduleTime *metav1.Time `json:"nextScheduleTime,omitempty"`

	// LastResult is what the last finished run reported.
	// +optional
	LastResult *CleanupResult `json:"lastResult,omitempty"`
}

// CleanupResult is the summary a cleanup run prints.
type CleanupResult struct {
	// FinishedAt is when the run ended.
	FinishedAt metav1.Time `json:"finishedAt"`
	// Succeeded is false when the run failed; Message says why.
	Succeeded bool `json:"succeeded"`
	// DeletedManifests counts manifests deleted.
	// +optional
	DeletedManifests int64 `json:"deletedManifests,omitempty"`
	// Deleted counts everything deleted: tags, manifests and blobs.
	// +optional
	Deleted int64 `json:"deleted,omitempty"`
	// DeletedBlobs counts blobs deleted.
	// +optional
	DeletedBlobs int64 `json:"deletedBlobs,omitempty"`
	// FreedBytes is the size of what was deleted.
	// +optional
	FreedBytes int64 `json:"freedBytes,omitempty"`
	// Freed is FreedBytes for people.
	// +optional
	Freed string `json:"freed,omitempty"`
	// Message is the run's own words on failure.
	// +optional
	Message string `json:"message,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=cleanup,categories=depproxy
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.spec.target`
// +kubebuilder:printcolumn:name="TTL Days",type=integer,JSONPath=`.spec.ttlDays`
// +kubebuilder:printcolumn:name="Schedule",type=string,JSONPath=`.spec.schedule`
// +kubebuilder:printcolumn:name="Last Run",type=date,JSONPath=`.status.lastScheduleTime`
// +kubebuilder:printcolumn:name="Deleted",type=integer,JSONPath=`.status.lastResult.deleted`
// +kubebuilder:printcolumn:name="Freed",type=string,JSONPath=`.status.lastResult.freed`
// +kubebuilder:printcolumn:name="Next Run",type=date,JSONPath=`.status.nextScheduleTime`

// CleanupPolicy deletes what a DependencyProxy's tenants stopped pulling.
type CleanupPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   CleanupPolicySpec   `json:"spec,omitempty"`
	Status CleanupPolicyStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// CleanupPolicyList is a list of CleanupPolicy.
type CleanupPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CleanupPolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&CleanupPolicy{}, &CleanupPolicyList{})
}
