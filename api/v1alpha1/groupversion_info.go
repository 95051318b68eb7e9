// Package v1alpha1 holds the depproxy.dev/v1alpha1 API: DependencyProxy,
// a tenant's pull-through cache, and CleanupPolicy, its expiry schedule.
// +kubebuilder:object:generate=true
// +groupName=depproxy.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the API group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "depproxy.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
