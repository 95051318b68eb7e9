package controllers

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/registryname"
	"github.com/depproxy/depproxy/proxy/settings"
)

// The proxy's settings as the operator renders them for a spec: the
// ConfigMap the proxy reads, and the hash that rolls its pods.

// proxySettings are the proxy's settings for this spec, rendered as its
// config file.
func proxySettings(dp *depproxyv1.DependencyProxy) settings.Settings {
	s := dp.Spec.Storage
	storage := "s3://" + s.Bucket
	if p := strings.Trim(s.Prefix, "/"); p != "" {
		storage += "/" + p
	}
	conf := settings.Settings{
		Listen:            fmt.Sprintf(":%d", ProxyPort),
		MetricsListen:     fmt.Sprintf(":%d", MetricsPort),
		ShutdownDelay:     settings.Duration(shutdownDelay),
		Upstream:          upstreamKeys(dp, upstreamURL),
		Storage:           storage,
		S3Endpoint:        s.Endpoint,
		S3Insecure:        s.Insecure,
		RecheckInterval:   settings.Duration(dp.Spec.RecheckInterval.Duration),
		PrefetchPlatforms: strings.Join(dp.Spec.PrefetchPlatforms, ","),
		Tenant:            tenantName(dp),
		TokenKey:          tokenKeyDir + "/" + tokenKeyFile,
		Users:             ifSet(usersSecret(dp), usersDir),
		UpstreamCreds: upstreamKeys(dp, func(u depproxyv1.RegistryUpstream, i int) string {
			return ifSet(secretName(u.CredentialsSecretRef), upstreamCredsDir(dp, i))
		}),
		UpstreamMirrorOf: upstreamKeys(dp, func(u depproxyv1.RegistryUpstream, _ int) string { return strings.Join(u.MirrorOf, ",") }),
		TLSCert:          ifSet(tlsSecret(dp), tlsDir+"/"+corev1.TLSCertKey),
		TLSKey:           ifSet(tlsSecret(dp), tlsDir+"/"+corev1.TLSPrivateKeyKey),
	}
	if replicated(dp) {
		conf.PeerService, conf.PeerDeployment = peersName(dp), proxyName(dp)
	}
	if a := dp.Spec.Audit; a != nil && a.Enabled {
		conf.AuditLog, conf.AuditBlobs = "-", a.Blobs
	}
	if a := dp.Spec.Access; a != nil {
		conf.Allow, conf.Deny = a.Allow, a.Deny
	}
	if keeping(dp) {
		conf.Pinned, conf.Warm = keepDir+"/"+pinnedKey, keepDir+"/"+warmKey
	}
	if m := s.MaxSize; m != nil {
		conf.MaxSize = settings.Size(m.Value())
	}
	if h := s.Hot; h != nil {
		// Downloads stay in the spool's own volume, which has no limit;
		// on the node's disk with the hot volume, keeping one is a link.
		conf.HotDir, conf.HotSize, conf.SpoolDir = hotMountPath, settings.Size(h.Size.Value()), spoolMountPath+"/depproxy"
	}
	return conf
}

// tlsSecret is the Secret of the certificate served, if any.
func tlsSecret(dp *depproxyv1.DependencyProxy) string {
	if dp.Spec.TLS != nil {
		return dp.Spec.TLS.SecretRef.Name
	}
	return ""
}

// upstreams are the registries a spec pulls through: spec.upstreams, or
// the one spec.upstream (registry "": the proxy names it after its URL).
func upstreams(dp *depproxyv1.DependencyProxy) []depproxyv1.RegistryUpstream {
	if len(dp.Spec.Upstreams) > 0 {
		return dp.Spec.Upstreams
	}
	return []depproxyv1.RegistryUpstream{{UpstreamSpec: dp.Spec.Upstream}}
}

// upstreamKeys renders one setting for every upstream, REGISTRY=VALUE,
// or a bare VALUE for the one spec.upstream; empty values are left out.
func upstreamKeys(dp *depproxyv1.DependencyProxy, value func(u depproxyv1.RegistryUpstream, i int) string) settings.KeyedList {
	var l settings.KeyedList
	for i, u := range upstreams(dp) {
		if v := value(u, i); v != "" {
			l.Items = append(l.Items, settings.Keyed{Registry: u.Registry, Value: v})
		}
	}
	return l
}

// upstreamURL is an upstream's URL as the proxy takes it: a Helm
// repository's marked as one.
func upstreamURL(u depproxyv1.RegistryUpstream, _ int) string {
	if u.Kind == depproxyv1.UpstreamKindHelm {
		return registryname.HelmScheme + u.URL
	}
	return u.URL
}

// upstreamCredsDir is where an upstream's credentials are mounted: the
// one spec.upstream's where it always was, spec.upstreams' by index.
func upstreamCredsDir(dp *depproxyv1.DependencyProxy, i int) string {
	if len(dp.Spec.Upstreams) == 0 {
		return upstreamDir
	}
	return fmt.Sprintf("%s/%d", upstreamDir, i)
}

// desiredConfigMap holds the proxy's config file, read back as the proxy
// will read it: a spec the API server let through but the proxy would
// refuse stalls here, with the proxy's reason, not in a crash-looping pod.
// platforms are the cluster's nodes' (os/arch), which what spec.keep
// names is cached for.
//
// sa is the proxy's ServiceAccount as it is (nil before it exists): a
// credential provider plugin is given its annotations.
func desiredConfigMap(dp *depproxyv1.DependencyProxy, platforms []string, sa *corev1.ServiceAccount) (*corev1.ConfigMap, error) {
	conf := proxySettings(dp)
	if keeping(dp) {
		conf.WarmPlatforms = strings.Join(platforms, ",")
	}
	data := map[string]string{}
	if usesCredentialProviders(dp) {
		annotations, keys := serviceAccountAnnotations(sa)
		providers, err := credentialProviderConfig(dp, keys)
		if err != nil {
			return nil, stalled(depproxyv1.ReasonInvalidSettings, "%v", err)
		}
		data[credProvidersKey], data[saAnnotationsKey] = string(providers), string(annotations)
		conf.CredProviderConfig, conf.CredProviderBinDir = configDir+"/"+credProvidersKey, credProvidersBinDir
		conf.UpstreamProvider = credentialProviderBindings(dp)
		if len(tokenAudiences(dp)) > 0 {
			conf.CredProviderTokens = credProvidersTokenDir
		}
	}
	raw, err := conf.Marshal()
	if err != nil {
		return nil, err
	}
	read, err := settings.Parse(raw)
	if err == nil {
		err = read.Validate()
	}
	if err != nil {
		return nil, stalled(depproxyv1.ReasonInvalidSettings, "the proxy would refuse the settings this spec makes: %v", err)
	}
	data[configKey] = string(raw)
	return &corev1.ConfigMap{
		ObjectMeta: objectMeta(proxyName(dp), dp.Namespace, proxyLabels(dp)),
		Data:       data,
	}, nil
}

// configHash changes whenever the config file does, but for its access
// rules: it is a pod template annotation, so a new config rolls the pods,
// while new rules are applied by the proxy from the file, once the
// kubelet updates it.
func configHash(cm *corev1.ConfigMap) string {
	data := map[string]string{}
	for k, v := range cm.Data {
		switch k {
		case saAnnotationsKey:
			continue // re-read by the proxy on each plugin run
		case verifyPolicyKey:
			// Re-read by the proxy; a key it names that is new is a new
			// volume, which rolls the pods by itself.
			continue
		case configKey:
			if s, err := settings.Parse([]byte(v)); err == nil {
				s.Allow, s.Deny = nil, nil
				raw, _ := s.Marshal()
				v = string(raw)
			}
		}
		data[k] = v
	}
	return hashOf(sortedPairs(data)...)
}

// dataChild applies a ConfigMap's data (the proxy's config, the keep
// files), and sees a hand edit of it.
func dataChild(cm *corev1.ConfigMap) child {
	return child{obj: cm, update: func(e, d client.Object) { e.(*corev1.ConfigMap).Data = d.(*corev1.ConfigMap).Data },
		same: func(e, d client.Object) bool {
			return equality.Semantic.DeepEqual(e.(*corev1.ConfigMap).Data, d.(*corev1.ConfigMap).Data)
		}}
}
