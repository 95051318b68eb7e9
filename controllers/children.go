package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

const (
	// ProxyPort is where the proxy serves pulls, in the pod and on the
	// Service.
	ProxyPort = 5000
	// MetricsPort is where the proxy serves /metrics, its summary and its
	// probes, in the pod and on the Service (for the ServiceMonitor and
	// the operator's summary reads).
	MetricsPort = 9090

	configDir      = "/etc/depproxy"
	configKey      = "config.yaml"
	configHashKey  = "depproxy.dev/config-hash"
	specHashKey    = "depproxy.dev/spec-hash"
	accessKeyEnv   = "AWS_ACCESS_KEY_ID"
	secretKeyEnv   = "AWS_SECRET_ACCESS_KEY"
	spoolMountPath = "/tmp"
	hotMountPath   = "/var/cache/depproxy"

	tokenKeyDir    = configDir + "/token"
	tokenKeyFile   = "key.pem"
	usersDir       = configDir + "/users"
	upstreamDir    = configDir + "/upstream"
	tlsDir         = configDir + "/tls"
	secretsHashKey = "depproxy.dev/secrets-hash"

	// preStopDelay: a stopping proxy pod is told to stop this long after
	// it is marked terminating, which takes its endpoint out of the
	// Services (and of the other replicas' view) while it still serves.
	preStopDelay = 5 * time.Second
	// shutdownDelay: then it says it is unready and serves on this long,
	// for kube-proxies that are slow to notice.
	shutdownDelay = 10 * time.Second
	// drainTime: then requests in flight, and the downloads they read,
	// have this long to finish.
	drainTime = 30 * time.Second

	// cleanupAppName is the app.kubernetes.io/name of cleanup CronJobs,
	// their Jobs and pods.
	cleanupAppName = "depproxy-cleanup"
)

// DefaultImage is the depproxy image run unless spec.image says
// otherwise; the manager's --proxy-image flag overrides it. The node
// agents run it as root on every selected node, so a release build
// (`make images`) pushes the depproxy image first and stamps its digest
// here (-ldflags -X): the manager it builds defaults to
// repository@sha256:…. A build without the stamp (go build, make run)
// keeps the tag, and the manager warns about it at start.
var DefaultImage = "ghcr.io/depproxy/depproxy:latest"

// proxyName names every child of a DependencyProxy.
func proxyName(dp *depproxyv1.DependencyProxy) string { return dp.Name + "-depproxy" }

// managedByLabel marks what the operator makes; the manager caches only
// the Secrets that carry it.
const managedByLabel, managedBy = "app.kubernetes.io/managed-by", "depproxy-operator"

func proxyLabels(dp *depproxyv1.DependencyProxy) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":     "depproxy",
		"app.kubernetes.io/instance": dp.Name,
		managedByLabel:               managedBy,
	}
}

func objectMeta(name, namespace string, labels map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels}
}

// tenantName is the token audience: a token of one tenant is refused by
// every other.
func tenantName(dp *depproxyv1.DependencyProxy) string { return dp.Namespace + "/" + dp.Name }

// tokenKeyName names the Secret holding the tenant's token signing key.
func tokenKeyName(dp *depproxyv1.DependencyProxy) string { return proxyName(dp) + "-token-key" }

// usersSecret is the Secret of users, if logins are on.
func usersSecret(dp *depproxyv1.DependencyProxy) string {
	if dp.Spec.Auth != nil && dp.Spec.Auth.UsersSecretRef != nil {
		return dp.Spec.Auth.UsersSecretRef.Name
	}
	return ""
}

func secretName(ref *corev1.LocalObjectReference) string {
	if ref == nil {
		return ""
	}
	return ref.Name
}

func ifSet(cond, v string) string {
	if cond == "" {
		return ""
	}
	return v
}

// sortedPairs flattens a map into key, value, key, value… in key order, so
// that its hash does not depend on map iteration.
func sortedPairs[V string | []byte](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		parts = append(parts, k, string(m[k]))
	}
	return parts
}

// hashOf is a short stable hash of anything rendered to strings.
func hashOf(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func toAny(m map[string]string) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// endpoint is the in-cluster address clients pull from.
func endpoint(dp *depproxyv1.DependencyProxy) string {
	return fmt.Sprintf("%s.%s.svc:%d", proxyName(dp), dp.Namespace, ProxyPort)
}
