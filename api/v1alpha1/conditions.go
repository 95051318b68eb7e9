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
)

// Condition reasons; the same string is used for the event.
const (
	ReasonAvailable       = "Available"
	ReasonRollingOut      = "RollingOut"
	ReasonReconciled      = "Reconciled"
	ReasonSecretNotFound  = "SecretNotFound"
	ReasonTargetNotFound  = "TargetNotFound"
	ReasonInvalidSecret   = "InvalidSecret"
	ReasonScheduled       = "Scheduled"
	ReasonSuspended       = "Suspended"
	ReasonConfigRolled    = "ConfigRolled"
	ReasonCreated         = "Created"
	ReasonReconcileFailed = "ReconcileFailed"
)

// GetConditions returns the status conditions.
func (dp *DependencyProxy) GetConditions() []metav1.Condition { return dp.Status.Conditions }

// GetConditions returns the status conditions.
func (cp *CleanupPolicy) GetConditions() []metav1.Condition { return cp.Status.Conditions }
