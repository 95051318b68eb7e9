// Command bundle renders the OLM bundle (bundle/) from config/: the CRDs
// as they are, and a ClusterServiceVersion whose install strategy is the
// manager Deployment and RBAC that `kustomize build config/default` gives.
// The output is deterministic, so CI can check it is up to date.
//
//	go run ./hack/bundle -kustomize PATH -version 0.1.0
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/depproxy/depproxy/hack/kustomize"
)

type object = kustomize.Object

func main() {
	kustomize := flag.String("kustomize", "kustomize", "kustomize binary")
	version := flag.String("version", "0.1.0", "operator version")
	out := flag.String("out", "bundle", "bundle directory")
	flag.Parse()
	if err := run(*kustomize, *version, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bundle:", err)
		os.Exit(1)
	}
}

func run(bin, version, out string) error {
	install, err := kustomize.Build(bin, "config/default")
	if err != nil {
		return err
	}
	samples, err := kustomize.Build(bin, "config/samples")
	if err != nil {
		return err
	}
	manifests := filepath.Join(out, "manifests")
	os.RemoveAll(manifests)
	if err := os.MkdirAll(manifests, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(out, "metadata"), 0o755); err != nil {
		return err
	}

	var owned []any
	var deployments, clusterPerms, perms, elsewhere []any
	serviceAccount := ""
	for _, o := range install {
		kind, name := kustomize.Str(o, "kind"), kustomize.Str(o["metadata"].(object), "name")
		switch kind {
		case "CustomResourceDefinition":
			if err := write(filepath.Join(manifests, name+".yaml"), o); err != nil {
				return err
			}
			spec := o["spec"].(object)
			names := spec["names"].(object)
			v := spec["versions"].([]any)[0].(object)
			desc, _ := v["schema"].(object)["openAPIV3Schema"].(object)["description"].(string)
			owned = append(owned, object{"name": name, "kind": names["kind"], "version": v["name"],
				"displayName": names["kind"], "description": desc})
		case "Deployment":
			deployments = append(deployments, object{"name": name, "spec": o["spec"]})
		case "ClusterRole":
			if aggregated(o) || forOthers(o) {
				// The tenants' roles and the metrics readers', not the
				// operator's permissions: OLM installs them as they are.
				if err := write(filepath.Join(manifests, name+".clusterrole.yaml"), o); err != nil {
					return err
				}
				continue
			}
			clusterPerms = append(clusterPerms, object{"rules": o["rules"]})
		case "Role":
			if ns := kustomize.Meta(o, "namespace"); ns != installNamespace {
				// OLM grants a CSV's permissions in the namespace it
				// installs into, nowhere else: the manager's rights in
				// the node namespace become cluster-wide here, as
				// docs/security.md says.
				elsewhere = append(elsewhere, o["rules"].([]any)...)
				continue
			}
			perms = append(perms, object{"rules": o["rules"]})
		case "ServiceAccount":
			serviceAccount = name
		}
	}
	if len(elsewhere) > 0 {
		if len(clusterPerms) == 0 {
			return fmt.Errorf("config/default: Roles outside %s but no ClusterRole of the manager's to grant them in", installNamespace)
		}
		first := clusterPerms[0].(object)
		first["rules"] = append(first["rules"].([]any), elsewhere...)
	}
	for _, p := range append(clusterPerms, perms...) {
		p.(object)["serviceAccountName"] = serviceAccount
	}
	var examples []any
	for _, s := range samples {
		if strings.HasPrefix(kustomize.Str(s, "apiVersion"), "depproxy.dev/") {
			examples = append(examples, s)
		}
	}
	alm, _ := json.Marshal(examples)
	sort.Slice(owned, func(i, j int) bool { return owned[i].(object)["name"].(string) < owned[j].(object)["name"].(string) })

	csv := object{
		"apiVersion": "operators.coreos.com/v1alpha1",
		"kind":       "ClusterServiceVersion",
		"metadata": object{
			"name": "depproxy.v" + version,
			"annotations": object{
				"alm-examples":   string(alm),
				"capabilities":   "Basic Install",
				"categories":     "Developer Tools",
				"containerImage": "ghcr.io/depproxy/manager:latest",
				"description":    "Per-tenant pull-through caches for container images, kept in S3.",
			},
		},
		"spec": object{
			"displayName": "depproxy",
			"description": "depproxy runs a pull-through cache for container images for each DependencyProxy: " +
				"it serves the OCI /v2 pull API, fetches from Docker Hub or any registry on a miss, and keeps " +
				"manifests and blobs in S3 (MinIO). A CleanupPolicy expires what nobody pulled.",
			"version":                   version,
			"maturity":                  "alpha",
			"minKubeVersion":            "1.30.0",
			"keywords":                  []any{"registry", "cache", "docker", "oci", "mirror"},
			"provider":                  object{"name": "depproxy"},
			"links":                     []any{object{"name": "Source", "url": "https://github.com/depproxy/depproxy"}},
			"customresourcedefinitions": object{"owned": owned},
			"installModes": []any{
				object{"type": "OwnNamespace", "supported": true},
				object{"type": "SingleNamespace", "supported": true},
				object{"type": "MultiNamespace", "supported": false},
				object{"type": "AllNamespaces", "supported": true},
			},
			"install": object{
				"strategy": "deployment",
				"spec": object{
					"deployments":        deployments,
					"clusterPermissions": clusterPerms,
					"permissions":        perms,
				},
			},
		},
	}
	if err := write(filepath.Join(manifests, "depproxy.clusterserviceversion.yaml"), csv); err != nil {
		return err
	}
	return write(filepath.Join(out, "metadata", "annotations.yaml"), object{"annotations": object{
		"operators.operatorframework.io.bundle.mediatype.v1":       "registry+v1",
		"operators.operatorframework.io.bundle.manifests.v1":       "manifests/",
		"operators.operatorframework.io.bundle.metadata.v1":        "metadata/",
		"operators.operatorframework.io.bundle.package.v1":         "depproxy",
		"operators.operatorframework.io.bundle.channels.v1":        "alpha",
		"operators.operatorframework.io.bundle.channel.default.v1": "alpha",
	}})
}

// installNamespace is the one config/default installs the manager into;
// OLM's is the OperatorGroup's.
const installNamespace = "depproxy-system"

func write(path string, o object) error {
	raw, err := yaml.Marshal(o)
	if err != nil {
		return err
	}
	return os.WriteFile(path, append([]byte("# Generated by `make bundle` from config/; do not edit.\n"), raw...), 0o644)
}

// forOthers: a ClusterRole granting only non-resource URLs (the metrics
// reader's), for whoever scrapes the manager, not the manager itself.
func forOthers(o object) bool {
	rules, _ := o["rules"].([]any)
	for _, r := range rules {
		if _, ok := r.(object)["nonResourceURLs"]; !ok {
			return false
		}
	}
	return len(rules) > 0
}

// aggregated: a ClusterRole that the built-in admin, edit or view roles
// take in.
func aggregated(o object) bool {
	labels, _ := o["metadata"].(object)["labels"].(object)
	for k := range labels {
		if strings.HasPrefix(k, "rbac.authorization.k8s.io/aggregate-to-") {
			return true
		}
	}
	return false
}
