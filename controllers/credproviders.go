package controllers

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeletconfigv1 "k8s.io/kubelet/config/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/settings"
)

// Where the proxy finds the credential provider plugins, their config and
// its service-account tokens.
const (
	credProvidersKey      = "credential-providers.yaml"
	saAnnotationsKey      = "serviceaccount-annotations.json"
	credProvidersBinDir   = "/var/lib/depproxy/credential-providers"
	credProvidersTokenDir = "/var/run/secrets/depproxy/tokens"
	defaultPluginCache    = 5 * time.Minute
	lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"
	dockerHubHost         = "index.docker.io"
)

// usesCredentialProviders: an upstream gets its credentials from a plugin.
func usesCredentialProviders(dp *depproxyv1.DependencyProxy) bool {
	return slices.ContainsFunc(upstreams(dp), func(u depproxyv1.RegistryUpstream) bool { return u.CredentialProvider != nil })
}

// tokenAudiences are the audiences the plugins want tokens for, sorted.
func tokenAudiences(dp *depproxyv1.DependencyProxy) []string {
	var out []string
	for _, u := range upstreams(dp) {
		if cp := u.CredentialProvider; cp != nil && cp.ServiceAccountTokenAudience != "" && !slices.Contains(out, cp.ServiceAccountTokenAudience) {
			out = append(out, cp.ServiceAccountTokenAudience)
		}
	}
	sort.Strings(out)
	return out
}

// credentialProviderBindings bind each upstream that names a plugin to
// it (--upstream-credential-provider): with them, an upstream that names
// none gets no plugin's credentials, whatever its name or host.
func credentialProviderBindings(dp *depproxyv1.DependencyProxy) settings.KeyedList {
	return upstreamKeys(dp, func(u depproxyv1.RegistryUpstream, _ int) string {
		if u.CredentialProvider == nil {
			return ""
		}
		return u.CredentialProvider.Name
	})
}

// credentialProviderConfig is the kubelet's CredentialProviderConfig for
// the spec's plugins: one provider per plugin, matching its upstreams'
// hosts (and their names, where a name is not its host: the proxy wants
// both to match), given the ServiceAccount's annotations (keys) when it
// takes a token.
func credentialProviderConfig(dp *depproxyv1.DependencyProxy, annotationKeys []string) ([]byte, error) {
	cfg := kubeletconfigv1.CredentialProviderConfig{TypeMeta: metav1.TypeMeta{APIVersion: "kubelet.config.k8s.io/v1", Kind: "CredentialProviderConfig"}}
	byName := map[string]*kubeletconfigv1.CredentialProvider{}
	for _, u := range upstreams(dp) {
		cp := u.CredentialProvider
		if cp == nil {
			continue
		}
		url, ok := registryname.ServerURL(u.URL)
		if !ok {
			return nil, fmt.Errorf("upstream %s: not a URL", u.URL)
		}
		match := []string{url.Host}
		if registryname.IsDockerHub(url.Host) {
			// The proxy sends Docker Hub's credentials to index.docker.io.
			match = []string{dockerHubHost}
		}
		if name := upstreamName(u); name != url.Host {
			match = append(match, name)
		}
		if p := byName[cp.Name]; p != nil {
			audience := ""
			if p.TokenAttributes != nil {
				audience = p.TokenAttributes.ServiceAccountTokenAudience
			}
			if audience != cp.ServiceAccountTokenAudience {
				return nil, fmt.Errorf("the credential provider %s is given two token audiences (%q and %q): one plugin, one audience", cp.Name, audience, cp.ServiceAccountTokenAudience)
			}
			for _, m := range match {
				if !slices.Contains(p.MatchImages, m) {
					p.MatchImages = append(p.MatchImages, m)
				}
			}
			continue
		}
		d := defaultPluginCache
		if cp.CacheDuration != nil {
			d = cp.CacheDuration.Duration
		}
		p := &kubeletconfigv1.CredentialProvider{Name: cp.Name, MatchImages: match, DefaultCacheDuration: &metav1.Duration{Duration: d},
			APIVersion: "credentialprovider.kubelet.k8s.io/v1", Args: cp.Args}
		if cp.ServiceAccountTokenAudience != "" {
			p.TokenAttributes = &kubeletconfigv1.ServiceAccountTokenAttributes{ServiceAccountTokenAudience: cp.ServiceAccountTokenAudience,
				CacheType: kubeletconfigv1.ServiceAccountServiceAccountTokenCacheType, RequireServiceAccount: ptr.To(true),
				OptionalServiceAccountAnnotationKeys: annotationKeys}
		}
		byName[cp.Name] = p
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		cfg.Providers = append(cfg.Providers, *byName[n])
	}
	return yaml.Marshal(cfg)
}

// upstreamName is the name the proxy gives an upstream: its registry, or
// for the one spec.upstream, its URL's.
func upstreamName(u depproxyv1.RegistryUpstream) string {
	if u.Registry != "" {
		return u.Registry
	}
	return registryname.Of(u.URL)
}

// serviceAccountAnnotations are the annotations of the proxy's
// ServiceAccount a plugin is given (a tenant's `kubectl annotate`, say,
// an IAM role), as JSON, and their keys.
func serviceAccountAnnotations(sa *corev1.ServiceAccount) ([]byte, []string) {
	out := map[string]string{}
	var keys []string
	if sa != nil {
		for k, v := range sa.Annotations {
			if k != lastAppliedAnnotation {
				out[k] = v
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	raw, _ := json.Marshal(out)
	return raw, keys
}

// credentialProviderVolumes are the cluster admin's plugins (an image
// volume of the operator's --credential-provider-image) and the
// projected tokens with the ServiceAccount's annotations beside them.
func credentialProviderVolumes(dp *depproxyv1.DependencyProxy, pluginImage string) ([]corev1.Volume, []corev1.VolumeMount) {
	if !usesCredentialProviders(dp) {
		return nil, nil
	}
	vols := []corev1.Volume{{Name: "credential-providers", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{
		Reference: pluginImage, PullPolicy: corev1.PullIfNotPresent}}}}
	mounts := []corev1.VolumeMount{{Name: "credential-providers", MountPath: credProvidersBinDir, ReadOnly: true}}
	audiences := tokenAudiences(dp)
	if len(audiences) == 0 {
		return vols, mounts
	}
	sources := []corev1.VolumeProjection{{ConfigMap: &corev1.ConfigMapProjection{
		LocalObjectReference: corev1.LocalObjectReference{Name: proxyName(dp)},
		Items:                []corev1.KeyToPath{{Key: saAnnotationsKey, Path: saAnnotationsKey}}}}}
	for _, a := range audiences {
		sources = append(sources, corev1.VolumeProjection{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience: a, ExpirationSeconds: ptr.To[int64](3600), Path: a + "/token"}})
	}
	vols = append(vols, corev1.Volume{Name: "provider-tokens", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: sources}}})
	mounts = append(mounts, corev1.VolumeMount{Name: "provider-tokens", MountPath: credProvidersTokenDir, ReadOnly: true})
	return vols, mounts
}
