// Package chart checks the Helm chart in dist/chart with the real helm:
// it lints, renders with every option, refuses values its schema does not
// allow, and its objects are the kustomize build's, so that `helm
// install` and `make deploy` install the same operator.
package chart

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/depproxy/depproxy/test/testenv"
)

const chartDir = "../../dist/chart"

type object = map[string]any

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.Tool(t, "helm"), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if err != nil {
		return stderr.String() + out.String(), err
	}
	return out.String(), nil
}

// render is `helm template` of the chart, as installed in depproxy-system.
func render(t *testing.T, args ...string) map[string]object {
	t.Helper()
	out, err := helm(t, append([]string{"template", "depproxy", chartDir, "--namespace", "depproxy-system"}, args...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, out)
	}
	return objects(t, out)
}

func objects(t *testing.T, stream string) map[string]object {
	t.Helper()
	out := map[string]object{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(stream, -1) {
		var o object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		if o == nil {
			continue
		}
		out[key(o)] = o
	}
	return out
}

func key(o object) string {
	m := o["metadata"].(object)
	ns, _ := m["namespace"].(string)
	return o["kind"].(string) + " " + ns + "/" + m["name"].(string)
}

func get(o object, path ...string) any {
	var v any = o
	for _, p := range path {
		m, ok := v.(object)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func container(t *testing.T, objs map[string]object) object {
	t.Helper()
	d := objs["Deployment depproxy-system/depproxy-controller-manager"]
	if d == nil {
		t.Fatalf("no manager Deployment among %d objects", len(objs))
	}
	return get(d, "spec", "template", "spec", "containers").([]any)[0].(object)
}

func TestChartLints(t *testing.T) {
	for _, args := range [][]string{nil, everyOption} {
		if out, err := helm(t, append([]string{"lint", "--strict", chartDir}, args...)...); err != nil {
			t.Errorf("helm lint --strict %v: %v\n%s", args, err, out)
		}
	}
}

// The chart installs what `kustomize build config/default` does: the
// same kinds and names, the same images, the same RBAC rules and CRDs.
// (Not the release's Namespace: Helm installs into it, and whoever
// installs makes it, with its Pod Security label. The node namespace,
// where the manager's Role on the agents' DaemonSets is bound, the chart
// makes too.)
func TestChartIsTheKustomizeBuild(t *testing.T) {
	cmd := exec.Command(testenv.Tool(t, "kustomize"), "build", "../../config/default")
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("kustomize build: %v", err)
	}
	want := objects(t, string(raw))
	delete(want, "Namespace /depproxy-system")
	got := render(t)
	for k := range want {
		if got[k] == nil {
			t.Errorf("the chart lacks %s", k)
		}
	}
	for k := range got {
		if want[k] == nil {
			t.Errorf("the chart has %s, which the kustomize build does not", k)
		}
	}
	for k, w := range want {
		g := got[k]
		if g == nil {
			continue
		}
		for _, field := range [][]string{{"rules"}, {"roleRef"}, {"subjects"}, {"spec"}, {"aggregationRule"}, {"metadata", "labels", "rbac.authorization.k8s.io/aggregate-to-edit"}} {
			if w["kind"] == "Deployment" && field[0] == "spec" {
				continue // shaped by values: compared below
			}
			if !reflect.DeepEqual(get(g, field...), get(w, field...)) {
				t.Errorf("%s: %s differs from the kustomize build's", k, strings.Join(field, "."))
			}
		}
	}
	wc, gc := container(t, want), container(t, got)
	if gc["image"] != wc["image"] {
		t.Errorf("manager image %v, the kustomize build's %v", gc["image"], wc["image"])
	}
	for _, a := range wc["args"].([]any) {
		if !contains(gc["args"].([]any), a) {
			t.Errorf("the chart's manager lacks %v", a)
		}
	}
	// By default neither names the agents' image: the manager's built-in
	// default applies, which a release build stamps with the depproxy
	// image's digest.
	for _, args := range [][]any{wc["args"].([]any), gc["args"].([]any)} {
		for _, a := range args {
			if strings.HasPrefix(fmt.Sprint(a), "--proxy-image") {
				t.Errorf("by default the manager is given %v, not its built-in digest", a)
			}
		}
	}
	for _, f := range []string{"securityContext", "resources", "ports", "livenessProbe", "readinessProbe"} {
		if !reflect.DeepEqual(gc[f], wc[f]) {
			t.Errorf("manager %s: %v, the kustomize build's %v", f, gc[f], wc[f])
		}
	}
	wd, gd := want["Deployment depproxy-system/depproxy-controller-manager"], got["Deployment depproxy-system/depproxy-controller-manager"]
	for _, f := range [][]string{{"spec", "selector"}, {"spec", "template", "metadata", "labels"}, {"spec", "template", "spec", "serviceAccountName"}, {"spec", "template", "spec", "securityContext"}} {
		if !reflect.DeepEqual(get(gd, f...), get(wd, f...)) {
			t.Errorf("manager Deployment %s differs from the kustomize build's", strings.Join(f, "."))
		}
	}
}

func contains(list []any, v any) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

var everyOption = []string{
	"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
	"--set", "metrics.grafanaDashboard.enabled=true", "--set", "crds.keep=false", "--set", "replicas=2",
	"--set", "image.repository=registry.internal/depproxy/manager", "--set", "image.tag=0.1.0",
	"--set", "proxyImage=registry.internal/depproxy/depproxy:0.1.0", "--set", "nodeNamespace=mirrors",
	"--set", "summaryInterval=30s", "--set", "nodeSelector.pool=system", "--set", "tolerations[0].key=dedicated",
	"--set", "tolerations[0].operator=Exists",
}

// Every option on: each shows in what is rendered.
func TestChartOptions(t *testing.T) {
	objs := render(t, everyOption...)
	for _, k := range []string{"ServiceMonitor depproxy-system/depproxy-controller-manager-metrics", "Service depproxy-system/depproxy-controller-manager-metrics",
		"PrometheusRule depproxy-system/depproxy", "ConfigMap depproxy-system/depproxy-dashboard"} {
		if objs[k] == nil {
			t.Errorf("with every option on, no %s", k)
		}
	}
	dashboard, err := os.ReadFile("../../config/prometheus/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if got := get(objs["ConfigMap depproxy-system/depproxy-dashboard"], "data", "dashboard.json"); got != string(dashboard) {
		t.Error("the dashboard ConfigMap is not config/prometheus/dashboard.json byte for byte")
	}
	for k, o := range objs {
		if o["kind"] == "CustomResourceDefinition" && get(o, "metadata", "annotations", "helm.sh/resource-policy") != nil {
			t.Errorf("%s is kept on uninstall with crds.keep=false", k)
		}
	}
	c := container(t, objs)
	for _, a := range []string{"--leader-elect", "--proxy-image=registry.internal/depproxy/depproxy:0.1.0", "--node-namespace=mirrors", "--summary-interval=30s"} {
		if !contains(c["args"].([]any), a) {
			t.Errorf("manager args %v lack %s", c["args"], a)
		}
	}
	// The manager's rights on the node agents follow nodeNamespace.
	for _, k := range []string{"Namespace /mirrors", "Role mirrors/depproxy-manager-role", "RoleBinding mirrors/depproxy-manager-rolebinding"} {
		if objs[k] == nil {
			t.Errorf("with nodeNamespace=mirrors, no %s", k)
		}
	}
	if get(objs["Namespace /mirrors"], "metadata", "annotations", "helm.sh/resource-policy") != "keep" {
		t.Error("the node namespace is not kept on uninstall")
	}
	if objs := render(t, "--set", "createNodeNamespace=false"); objs["Namespace /depproxy-nodes"] != nil || objs["RoleBinding depproxy-nodes/depproxy-manager-rolebinding"] == nil {
		t.Error("createNodeNamespace=false: the node namespace is still made, or its RoleBinding left out")
	}
	d := objs["Deployment depproxy-system/depproxy-controller-manager"]
	if c["image"] != "registry.internal/depproxy/manager:0.1.0" || get(d, "spec", "replicas") != 2.0 ||
		get(d, "spec", "template", "spec", "nodeSelector", "pool") != "system" || get(d, "spec", "template", "spec", "tolerations") == nil {
		t.Errorf("values not rendered: image %v, %v", c["image"], get(d, "spec"))
	}
	defaults := render(t)
	for k, o := range defaults {
		if o["kind"] == "CustomResourceDefinition" && get(o, "metadata", "annotations", "helm.sh/resource-policy") != "keep" {
			t.Errorf("%s is not kept on uninstall by default", k)
		}
		if strings.Contains(k, "ServiceMonitor") || strings.Contains(k, "PrometheusRule") {
			t.Errorf("%s rendered with its option off", k)
		}
	}
	if get(defaults["CustomResourceDefinition /dependencyproxies.depproxy.dev"], "spec") == nil {
		t.Error("no DependencyProxy CRD by default")
	}
	if len(render(t, "--set", "crds.install=false")) != len(defaults)-3 {
		t.Error("crds.install=false does not leave out the three CRDs")
	}
}

// Values the schema does not allow are refused, naming what is wrong.
func TestChartRefusesBadValues(t *testing.T) {
	for _, c := range []struct {
		values, want string
	}{
		{"replicas: two\n", "replicas"},
		{"proxyimage: x\n", "proxyimage"},
		{"metrics:\n  serviceMonitor:\n    enabled: yes please\n", "enabled"},
		{"image:\n  pullPolicy: Sometimes\n", "pullPolicy"},
		{"summaryInterval: a minute\n", "summaryInterval"},
		{"replicas: 2\nleaderElection: false\n", "replicas above 1 need leaderElection"},
	} {
		f := filepath.Join(t.TempDir(), "values.yaml")
		os.WriteFile(f, []byte(c.values), 0o644)
		out, err := helm(t, "template", "depproxy", chartDir, "-f", f)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("values %q: %v, want an error naming %q:\n%s", c.values, err, c.want, out)
		}
	}
}

// The chart's version and appVersion are the operator's.
func TestChartVersion(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^VERSION \?= (\S+)$`).FindSubmatch(mk)
	raw, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil || m == nil {
		t.Fatalf("%v %v", err, m)
	}
	var chart struct{ Version, AppVersion string }
	if err := yaml.Unmarshal(raw, &chart); err != nil {
		t.Fatal(err)
	}
	if chart.Version != string(m[1]) || chart.AppVersion != string(m[1]) {
		t.Errorf("Chart.yaml version %s, appVersion %s; the operator's is %s", chart.Version, chart.AppVersion, m[1])
	}
}
