package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"sigs.k8s.io/yaml"
)

// The committed bundle lists the three CRDs, a sample of each, installs
// the manager with its permissions, and ships the tenants' aggregated
// roles as they are (not as the manager's permissions).
func TestCommittedBundle(t *testing.T) {
	root := filepath.Join("..", "..", "bundle")
	raw, err := os.ReadFile(filepath.Join(root, "manifests", "depproxy.clusterserviceversion.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var csv struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec struct {
			CRDs struct {
				Owned []struct{ Name, Kind string } `json:"owned"`
			} `json:"customresourcedefinitions"`
			Install struct {
				Spec struct {
					Deployments        []struct{ Name string } `json:"deployments"`
					ClusterPermissions []struct {
						ServiceAccountName string `json:"serviceAccountName"`
						Rules              []any  `json:"rules"`
					} `json:"clusterPermissions"`
				} `json:"spec"`
			} `json:"install"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &csv); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, o := range csv.Spec.CRDs.Owned {
		kinds[o.Kind] = true
		if _, err := os.Stat(filepath.Join(root, "manifests", o.Name+".yaml")); err != nil {
			t.Errorf("CRD %s is listed but not in the bundle: %v", o.Name, err)
		}
	}
	var examples []struct{ Kind string }
	if err := json.Unmarshal([]byte(csv.Metadata.Annotations["alm-examples"]), &examples); err != nil {
		t.Fatalf("alm-examples: %v", err)
	}
	for _, e := range examples {
		if !kinds[e.Kind] {
			t.Errorf("sample of %s, which the CSV does not own", e.Kind)
		}
		delete(kinds, e.Kind)
	}
	if len(csv.Spec.CRDs.Owned) != 3 || len(kinds) != 0 {
		t.Errorf("owned %+v; kinds without a sample: %v", csv.Spec.CRDs.Owned, kinds)
	}
	d := csv.Spec.Install.Spec
	if len(d.Deployments) != 1 || d.Deployments[0].Name != "depproxy-controller-manager" ||
		len(d.ClusterPermissions) != 1 || d.ClusterPermissions[0].ServiceAccountName != "depproxy-controller-manager" || len(d.ClusterPermissions[0].Rules) == 0 {
		t.Errorf("install strategy: %+v", d)
	}
	// OLM grants a CSV's permissions only in its install namespace: the
	// manager's Role in the node namespace (writing the agents'
	// DaemonSets) is granted cluster-wide, as docs/security.md says.
	writesDaemonSets := false
	for _, p := range d.ClusterPermissions {
		for _, r := range p.Rules {
			rule, _ := json.Marshal(r)
			var pr struct{ Resources, Verbs []string }
			json.Unmarshal(rule, &pr)
			if slices.Contains(pr.Resources, "daemonsets") && slices.Contains(pr.Verbs, "create") {
				writesDaemonSets = true
			}
		}
	}
	if !writesDaemonSets {
		t.Error("the bundle's manager may not create the node agents' DaemonSets")
	}
	for _, role := range []string{"depproxy-tenant-edit", "depproxy-tenant-view"} {
		var cr struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
		}
		raw, err := os.ReadFile(filepath.Join(root, "manifests", role+".clusterrole.yaml"))
		if err == nil {
			err = yaml.Unmarshal(raw, &cr)
		}
		if err != nil || cr.Kind != "ClusterRole" || len(cr.Metadata.Labels) == 0 {
			t.Errorf("%s: %v %+v", role, err, cr)
		}
	}
}
