// Package kustomize runs `kustomize build` for the generators in hack/
// (the OLM bundle, the Helm chart), which render what config/ builds.
package kustomize

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"

	"sigs.k8s.io/yaml"
)

// Object is one built object, as YAML decodes it.
type Object = map[string]any

// Build returns the objects `kustomize build dir` gives, in its order.
func Build(kustomize, dir string) ([]Object, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(kustomize, "build", dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w\n%s", dir, err, stderr.String())
	}
	var objs []Object
	for _, doc := range strings.Split(stdout.String(), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var o Object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
		}
		objs = append(objs, o)
	}
	return objs, nil
}

// Str is a string field of o, "" when missing.
func Str(o Object, key string) string { s, _ := o[key].(string); return s }

// Meta is a string field of o's metadata.
func Meta(o Object, key string) string {
	m, _ := o["metadata"].(Object)
	return Str(m, key)
}
