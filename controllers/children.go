package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/proxy/settings"
	"github.com/depproxy/depproxy/proxy/token"
)

const (
	// ProxyPort is where the proxy serves pulls, in the pod and on the
	// Service.
	ProxyPort = 5000
	// MetricsPort is where the proxy serves /metrics, its summary and its
	// probes, in the pod and on the Service (for the ServiceMonitor and
	// the operator's summary reads).
	MetricsPort = 9090
	// DefaultImage is the depproxy image run unless spec.image says
	// otherwise; the manager's --proxy-image flag overrides it. It is a
	// tag only because a release's digest is not known when this is
	// built: installs pin --proxy-image by digest (the manager warns
	// otherwise), since the node agents run it as root.
	DefaultImage = "ghcr.io/depproxy/depproxy:latest"

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
		Upstream:          upstreamKeys(dp, func(u depproxyv1.RegistryUpstream, _ int) string { return u.URL }),
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

// upstreamCredsDir is where an upstream's credentials are mounted: the
// one spec.upstream's where it always was, spec.upstreams' by index.
func upstreamCredsDir(dp *depproxyv1.DependencyProxy, i int) string {
	if len(dp.Spec.Upstreams) == 0 {
		return upstreamDir
	}
	return fmt.Sprintf("%s/%d", upstreamDir, i)
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

// hashOf is a short stable hash of anything rendered to strings.
func hashOf(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
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

func proxyImage(dp *depproxyv1.DependencyProxy, defaultImage string) string {
	if dp.Spec.Image != "" {
		return dp.Spec.Image
	}
	return defaultImage
}

// storageEnv passes the S3 credentials from the tenant's Secret.
func storageEnv(dp *depproxyv1.DependencyProxy) []corev1.EnvVar {
	ref := dp.Spec.Storage.CredentialsSecretRef
	env := []corev1.EnvVar{}
	for _, key := range []string{accessKeyEnv, secretKeyEnv} {
		env = append(env, corev1.EnvVar{Name: key, ValueFrom: &corev1.EnvVarSource{
			SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: ref, Key: key},
		}})
	}
	return env
}

// restrictedSecurity is the restricted Pod Security profile.
func restrictedSecurity() (*corev1.PodSecurityContext, *corev1.SecurityContext) {
	return &corev1.PodSecurityContext{
			RunAsNonRoot:   ptr.To(true),
			RunAsUser:      ptr.To[int64](65532),
			FSGroup:        ptr.To[int64](65532),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		}, &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		}
}

// hotVolume is each replica's disk for its hot tier: an emptyDir, or a
// volume of the class asked for, made with the pod. Its limit leaves room
// over the tier's size for the one copy being placed at a time.
func hotVolume(h *depproxyv1.HotTierSpec) corev1.Volume {
	limit := resource.NewQuantity(h.Size.Value()/4*5, resource.BinarySI)
	v := corev1.Volume{Name: "hot"}
	if h.StorageClassName == nil {
		v.EmptyDir = &corev1.EmptyDirVolumeSource{SizeLimit: limit}
		return v
	}
	v.Ephemeral = &corev1.EphemeralVolumeSource{VolumeClaimTemplate: &corev1.PersistentVolumeClaimTemplate{
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: h.StorageClassName,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *limit}},
		},
	}}
	return v
}

// proxyVolumes are what the proxy's pods mount: the config, the spool,
// the hot tier if any, the credential provider plugins and tokens if
// any, and the Secrets.
func proxyVolumes(dp *depproxyv1.DependencyProxy, pluginImage string) ([]corev1.Volume, []corev1.VolumeMount) {
	volumes, mounts := configVolumes(dp)
	cv, cm := credentialProviderVolumes(dp, pluginImage)
	volumes, mounts = append(volumes, cv...), append(mounts, cm...)
	if h := dp.Spec.Storage.Hot; h != nil {
		volumes = append(volumes, hotVolume(h))
		mounts = append(mounts, corev1.VolumeMount{Name: "hot", MountPath: hotMountPath})
	}
	sv, sm := secretVolumes(dp)
	return append(volumes, sv...), append(mounts, sm...)
}

func configVolumes(dp *depproxyv1.DependencyProxy) ([]corev1.Volume, []corev1.VolumeMount) {
	volumes, mounts := baseVolumes(dp)
	if keeping(dp) {
		// The pins and warm files, re-read by the proxy when the kubelet
		// updates them.
		volumes = append(volumes, corev1.Volume{Name: "keep", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: keepName(dp)},
		}}})
		mounts = append(mounts, corev1.VolumeMount{Name: "keep", MountPath: keepDir, ReadOnly: true})
	}
	return volumes, mounts
}

func baseVolumes(dp *depproxyv1.DependencyProxy) ([]corev1.Volume, []corev1.VolumeMount) {
	return []corev1.Volume{
			{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: proxyName(dp)},
			}}},
			// Blobs being downloaded are spooled here, not in memory.
			{Name: "spool", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		}, []corev1.VolumeMount{
			{Name: "config", MountPath: configDir, ReadOnly: true},
			{Name: "spool", MountPath: spoolMountPath},
		}
}

// secretVolumes mount the token key, the users and the upstream
// credentials, each where the config file says.
func secretVolumes(dp *depproxyv1.DependencyProxy) ([]corev1.Volume, []corev1.VolumeMount) {
	var vols []corev1.Volume
	var mounts []corev1.VolumeMount
	add := func(name, secret, path string) {
		if secret == "" {
			return
		}
		vols = append(vols, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: secret, DefaultMode: ptr.To[int32](0o440)}}})
		mounts = append(mounts, corev1.VolumeMount{Name: name, MountPath: path, ReadOnly: true})
	}
	add("token-key", tokenKeyName(dp), tokenKeyDir)
	add("users", usersSecret(dp), usersDir)
	for i, u := range upstreams(dp) {
		name := "upstream-credentials"
		if len(dp.Spec.Upstreams) > 0 {
			name = fmt.Sprintf("upstream-credentials-%d", i)
		}
		add(name, secretName(u.CredentialsSecretRef), upstreamCredsDir(dp, i))
	}
	add("tls", tlsSecret(dp), tlsDir)
	return vols, mounts
}

// desiredDeployment runs the proxy with the rendered config.
//
// pluginImage is the cluster admin's image of credential provider
// plugins, mounted when an upstream uses one.
func desiredDeployment(dp *depproxyv1.DependencyProxy, defaultImage, pluginImage, cfgHash, secHash string) *appsv1.Deployment {
	labels := proxyLabels(dp)
	podSec, sec := restrictedSecurity()
	volumes, mounts := proxyVolumes(dp, pluginImage)
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: path, Port: intstr.FromString("metrics"),
		}}, PeriodSeconds: 10, TimeoutSeconds: 2}
	}
	d := &appsv1.Deployment{
		ObjectMeta: objectMeta(proxyName(dp), dp.Namespace, labels),
		Spec: appsv1.DeploymentSpec{
			Replicas: dp.Spec.Replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{configHashKey: cfgHash, secretsHashKey: secHash}},
				Spec: corev1.PodSpec{
					ServiceAccountName:            proxyName(dp),
					SecurityContext:               podSec,
					Volumes:                       volumes,
					TerminationGracePeriodSeconds: ptr.To(int64((preStopDelay + shutdownDelay + drainTime) / time.Second)),
					Containers: []corev1.Container{{
						Name:  "depproxy",
						Image: proxyImage(dp, defaultImage),
						Args:  []string{"serve", "--config", configDir + "/" + configKey},
						Env:   storageEnv(dp),
						Ports: []corev1.ContainerPort{
							{Name: "http", ContainerPort: ProxyPort, Protocol: corev1.ProtocolTCP},
							{Name: "metrics", ContainerPort: MetricsPort, Protocol: corev1.ProtocolTCP},
						},
						LivenessProbe:  probe("/healthz"),
						ReadinessProbe: probe("/readyz"),
						Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{
							Sleep: &corev1.SleepAction{Seconds: int64(preStopDelay / time.Second)}}},
						Resources:       dp.Spec.Resources,
						SecurityContext: sec,
						VolumeMounts:    mounts,
					}},
				},
			},
		},
	}
	if replicated(dp) {
		replicate(dp, d)
	}
	return d
}

func desiredService(dp *depproxyv1.DependencyProxy) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: objectMeta(proxyName(dp), dp.Namespace, proxyLabels(dp)),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: proxyLabels(dp),
			Ports: []corev1.ServicePort{
				{Name: "http", Port: ProxyPort, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "metrics", Port: MetricsPort, TargetPort: intstr.FromString("metrics"), Protocol: corev1.ProtocolTCP},
			},
		},
	}
	return svc
}

func desiredServiceAccount(dp *depproxyv1.DependencyProxy) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: objectMeta(proxyName(dp), dp.Namespace, proxyLabels(dp)),
		AutomountServiceAccountToken: ptr.To(false)}
}

// desiredServiceMonitor scrapes the proxy's /metrics, for clusters running
// the Prometheus operator. Unstructured, so that the operator needs no
// dependency on its Go types.
func desiredServiceMonitor(dp *depproxyv1.DependencyProxy) *unstructured.Unstructured {
	sm := &unstructured.Unstructured{Object: map[string]any{
		"spec": map[string]any{
			"selector":  map[string]any{"matchLabels": toAny(proxyLabels(dp))},
			"endpoints": []any{map[string]any{"port": "metrics", "path": "/metrics"}},
		},
	}}
	sm.SetAPIVersion("monitoring.coreos.com/v1")
	sm.SetKind("ServiceMonitor")
	sm.SetName(proxyName(dp))
	sm.SetNamespace(dp.Namespace)
	sm.SetLabels(proxyLabels(dp))
	return sm
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

// cleanupName names a CleanupPolicy's CronJob.
func cleanupName(cp *depproxyv1.CleanupPolicy) string { return cp.Name + "-cleanup" }

// desiredCronJob runs `depproxy cleanup` on the target's storage, with the
// target's own config file and credentials.
func desiredCronJob(cp *depproxyv1.CleanupPolicy, dp *depproxyv1.DependencyProxy, defaultImage string) *batchv1.CronJob {
	labels := map[string]string{
		"app.kubernetes.io/name":     cleanupAppName,
		"app.kubernetes.io/instance": cp.Name,
		managedByLabel:               managedBy,
	}
	podSec, sec := restrictedSecurity()
	volumes, mounts := configVolumes(dp)
	return &batchv1.CronJob{
		ObjectMeta: objectMeta(cleanupName(cp), cp.Namespace, labels),
		Spec: batchv1.CronJobSpec{
			Schedule:                   cp.Spec.Schedule,
			Suspend:                    ptr.To(cp.Spec.Suspend),
			ConcurrencyPolicy:          batchv1.ForbidConcurrent,
			SuccessfulJobsHistoryLimit: ptr.To[int32](3),
			FailedJobsHistoryLimit:     ptr.To[int32](3),
			JobTemplate: batchv1.JobTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: batchv1.JobSpec{
					BackoffLimit: ptr.To[int32](2),
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec: corev1.PodSpec{
							RestartPolicy:      corev1.RestartPolicyNever,
							ServiceAccountName: proxyName(dp),
							SecurityContext:    podSec,
							Volumes:            volumes,
							Containers: []corev1.Container{{
								Name:  "cleanup",
								Image: proxyImage(dp, defaultImage),
								Args: []string{"cleanup", "--config", configDir + "/" + configKey,
									"--ttl", fmt.Sprintf("%dh", 24*cp.Spec.TTLDays), "--summary-file", "/dev/termination-log"},
								Env:             storageEnv(dp),
								SecurityContext: sec,
								VolumeMounts:    mounts,
								// The summary goes to the termination message
								// (--summary-file); a failed run leaves its
								// log's tail there instead.
								TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
							}},
						},
					},
				},
			},
		},
	}
}
