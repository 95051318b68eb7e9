package controllers

import (
	corev1 "k8s.io/api/core/v1"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/token"
)

// The tenant's token signing key, and the hash of the Secrets the pods
// mount.

// desiredTokenKey is the tenant's signing key, made once: deleting the
// Secret rotates it (the operator makes a new one and the pods roll), and
// tokens signed with the old one stop working.
func desiredTokenKey(dp *depproxyv1.DependencyProxy) (*corev1.Secret, error) {
	_, pemBytes, err := token.NewSigningKey()
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		ObjectMeta: objectMeta(tokenKeyName(dp), dp.Namespace, proxyLabels(dp)),
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{tokenKeyFile: pemBytes},
	}, nil
}

// secretsHash changes when any Secret the pods read changes: it is a pod
// template annotation, so new users or a new key roll the pods.
func secretsHash(secrets ...*corev1.Secret) string {
	parts := []string{}
	for _, s := range secrets {
		if s != nil {
			parts = append(append(parts, s.Name), sortedPairs(s.Data)...)
		}
	}
	return hashOf(parts...)
}
