// Command manager is the depproxy operator: it runs a pull-through cache
// for each DependencyProxy, a cleanup CronJob for each CleanupPolicy and
// node agents for each NodeMirror.
package main

import (
	"flag"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	depproxyv1 "github.com/depproxy/depproxy/api/v1alpha1"
	"github.com/depproxy/depproxy/controllers"
)

func main() {
	var metricsAddr, probeAddr, proxyImage, credentialProviderImage, nodeNamespace string
	var leaderElect bool
	var summaryInterval time.Duration
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address of the metrics endpoint, served over HTTPS to callers whose bearer token may get /metrics (401 without one, 403 without the right); 0 disables it")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect a leader, for more than one manager replica")
	flag.StringVar(&proxyImage, "proxy-image", controllers.DefaultImage, "depproxy image run by every NodeMirror's node agents (as root, on every selected node), and for a DependencyProxy without spec.image; pin it by digest (image@sha256:...): a tag is warned about at start")
	flag.StringVar(&credentialProviderImage, "credential-provider-image", "", "an image of kubelet credential provider plugins (ecr-credential-provider, ...), files at its root: mounted into the proxies whose upstreams name one (spec.upstreams[].credentialProvider); empty: none may")
	flag.StringVar(&nodeNamespace, "node-namespace", controllers.DefaultNodeNamespace, "namespace of the NodeMirrors' node agents and registry claims; made, admitting hostPath volumes, where missing")
	flag.DurationVar(&summaryInterval, "summary-interval", time.Minute, "how often each DependencyProxy is looked at again: its cache summary copied into its status, and changes to the Secrets it names picked up")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")

	if !strings.Contains(proxyImage, "@sha256:") {
		// The agents run it as root on every node a NodeMirror selects:
		// a tag is whatever the registry says it is today.
		log.Info("WARNING: --proxy-image is not pinned by digest; the node agents run it as root on every selected node: give image@sha256:...", "proxyImage", proxyImage)
	}

	scheme := runtime.NewScheme()
	must(clientgoscheme.AddToScheme(scheme), "registering the Kubernetes types")
	must(depproxyv1.AddToScheme(scheme), "registering the depproxy types")

	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                 scheme,
		Metrics:                controllers.MetricsOptions(metricsAddr),
		HealthProbeBindAddress: probeAddr,
		LeaderElection:         leaderElect,
		LeaderElectionID:       "manager.depproxy.dev",
		Cache:                  controllers.CacheOptions(),
		Client:                 controllers.ClientOptions(),
	})
	must(err, "creating the manager")

	// ServiceMonitors only where the Prometheus operator's CRD is installed.
	_, err = mgr.GetRESTMapper().RESTMapping(schema.GroupKind{Group: "monitoring.coreos.com", Kind: "ServiceMonitor"}, "v1")
	serviceMonitors := err == nil
	log.Info("ServiceMonitor support", "enabled", serviceMonitors)

	must((&controllers.DependencyProxyReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: scheme, Recorder: mgr.GetEventRecorder("depproxy"),
		ProxyImage: proxyImage, CredentialProviderImage: credentialProviderImage, ServiceMonitors: serviceMonitors,
		Summaries: controllers.HTTPSummaries{Services: mgr.GetClient()}, SummaryInterval: summaryInterval,
	}).SetupWithManager(mgr), "setting up the DependencyProxy controller")
	must((&controllers.NodeMirrorReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: scheme, Recorder: mgr.GetEventRecorder("depproxy"),
		ProxyImage: proxyImage, NodeNamespace: nodeNamespace,
	}).SetupWithManager(mgr), "setting up the NodeMirror controller")
	must((&controllers.CleanupPolicyReconciler{
		Client: mgr.GetClient(), Scheme: scheme, Recorder: mgr.GetEventRecorder("depproxy"), ProxyImage: proxyImage,
	}).SetupWithManager(mgr), "setting up the CleanupPolicy controller")
	must(mgr.AddHealthzCheck("healthz", healthz.Ping), "adding the health check")
	must(mgr.AddReadyzCheck("readyz", healthz.Ping), "adding the readiness check")

	log.Info("starting manager")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}

// must stops the manager at start, saying which step failed.
func must(err error, step string) {
	if err != nil {
		ctrl.Log.WithName("setup").Error(err, "cannot start", "step", step)
		os.Exit(1)
	}
}
