package controllers

import (
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
)

// The manager's metrics answer only callers the API server authenticates
// (TokenReview) and authorizes (SubjectAccessReview, get on /metrics).
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// MetricsOptions serve the manager's metrics at addr over HTTPS (a
// certificate of its own unless one is mounted), to callers whose
// bearer token the API server accepts and lets get the non-resource URL
// /metrics: without a token, 401; with one that may not, 403. Its
// metrics name every tenant's resources, and its endpoint must not be
// open to every Pod of the cluster.
func MetricsOptions(addr string) metricsserver.Options {
	return metricsserver.Options{BindAddress: addr, SecureServing: true, FilterProvider: filters.WithAuthenticationAndAuthorization}
}
