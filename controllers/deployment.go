package controllers

import (
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
)

// The proxy's Deployment: image, environment, security, volumes.

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

// deploymentChild applies the Deployment: its spec, but never the
// replica count an autoscaler set.
func deploymentChild(deploy *appsv1.Deployment) child {
	return child{obj: deploy, update: func(e, d client.Object) {
		ed, dd := e.(*appsv1.Deployment), d.(*appsv1.Deployment)
		replicas := ed.Spec.Replicas
		ed.Spec = dd.Spec
		if dd.Spec.Replicas == nil {
			ed.Spec.Replicas = replicas // the autoscaler's: never reset
		}
	}, same: sameDeployment}
}

// sameDeployment compares what is edited by hand in practice: the
// replica count, the config hash, the image and the args. (The rest of the
// spec gains server defaults, so whole-spec equality never holds.)
func sameDeployment(e, d client.Object) bool {
	es, ds := e.(*appsv1.Deployment).Spec, d.(*appsv1.Deployment).Spec
	if (ds.Replicas != nil && !equality.Semantic.DeepEqual(es.Replicas, ds.Replicas)) ||
		es.Template.Annotations[configHashKey] != ds.Template.Annotations[configHashKey] ||
		es.Template.Annotations[secretsHashKey] != ds.Template.Annotations[secretsHashKey] ||
		len(es.Template.Spec.Containers) != len(ds.Template.Spec.Containers) {
		return false
	}
	for i, c := range ds.Template.Spec.Containers {
		ec := es.Template.Spec.Containers[i]
		if ec.Image != c.Image || !equality.Semantic.DeepEqual(ec.Args, c.Args) {
			return false
		}
	}
	return true
}
