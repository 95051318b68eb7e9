package helmrepo

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"reflect"
	"testing"

	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
)

// TestMetadataIsHelms holds Metadata to Helm's: the same fields in the
// same order, with the same JSON names and types, so that the config
// blob's bytes are those of `helm push`. A Helm upgrade that adds a field
// fails here.
func TestMetadataIsHelms(t *testing.T) {
	for _, pair := range [][2]reflect.Type{
		{reflect.TypeFor[Metadata](), reflect.TypeFor[chart.Metadata]()},
		{reflect.TypeFor[Maintainer](), reflect.TypeFor[chart.Maintainer]()},
		{reflect.TypeFor[Dependency](), reflect.TypeFor[chart.Dependency]()},
	} {
		ours, helms := pair[0], pair[1]
		if ours.NumField() != helms.NumField() {
			t.Errorf("%s has %d fields, Helm's %d", ours, ours.NumField(), helms.NumField())
			continue
		}
		for i := range ours.NumField() {
			o, h := ours.Field(i), helms.Field(i)
			if o.Name != h.Name || o.Tag.Get("json") != h.Tag.Get("json") || shape(o.Type) != shape(h.Type) {
				t.Errorf("%s field %d: ours %s %s `json:%q`, Helm's %s %s `json:%q`", ours, i, o.Name, shape(o.Type), o.Tag.Get("json"), h.Name, shape(h.Type), h.Tag.Get("json"))
			}
		}
	}
}

// shape is a type's kind with its elements', named types by name.
func shape(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice:
		return t.Kind().String() + " " + shape(t.Elem())
	case reflect.Map:
		return "map " + shape(t.Key()) + " " + shape(t.Elem())
	case reflect.Struct:
		return t.Name()
	}
	return t.Kind().String()
}

// TestConfigAsHelmLoadsIt: the config of a chart is what Helm's loader
// makes of it, byte for byte.
func TestConfigAsHelmLoadsIt(t *testing.T) {
	cases := map[string]map[string]string{
		"v2, every field": {"Chart.yaml": `apiVersion: v2
name: web
version: 1.2.3+build.7
appVersion: "2.0"
description: "A web\tserver\u0007 with a bell"
home: https://example.com
icon: https://example.com/icon.png
sources: [https://example.com/src, https://example.com/mirror]
keywords: [web, "multi\nline"]
maintainers:
- {name: Ann, email: ann@example.com}
- {email: only@example.com}
- {name: Bob, url: https://bob.example}
annotations: {category: web, org.opencontainers.image.title: other}
kubeVersion: ">=1.30"
deprecated: true
type: application
dependencies:
- {name: db, version: 1.x, repository: https://charts.example.com, condition: db.enabled, tags: [x], import-values: [child, {child: a, parent: b}], alias: store}
`},
		"v1 with requirements.yaml": {
			"Chart.yaml":        "name: old\nversion: 0.1.0\n",
			"requirements.yaml": "dependencies:\n- name: redis\n  version: 1.0.0\n  repository: https://charts.example.com\n",
		},
		"library": {"Chart.yaml": "apiVersion: v2\nname: lib\nversion: 3.0.0\ntype: library\n"},
	}
	for name, files := range cases {
		t.Run(name, func(t *testing.T) {
			tgz := chartArchive(t, files)
			md, err := ReadMetadata(bytes.NewReader(tgz))
			if err != nil {
				t.Fatal(err)
			}
			ours, _ := json.Marshal(md)
			ch, err := loader.LoadArchive(bytes.NewReader(tgz))
			if err != nil {
				t.Fatal(err)
			}
			helms, _ := json.Marshal(ch.Metadata)
			if !bytes.Equal(ours, helms) {
				t.Errorf("config:\nours  %s\nHelm's %s", ours, helms)
			}
		})
	}
}

func TestNotAChart(t *testing.T) {
	for name, tgz := range map[string][]byte{
		"not gzip":      []byte("<html>"),
		"no Chart.yaml": chartArchive(t, map[string]string{"values.yaml": "a: 1\n"}),
		"no version":    chartArchive(t, map[string]string{"Chart.yaml": "name: x\n"}),
		"bad YAML":      chartArchive(t, map[string]string{"Chart.yaml": "name: [\n"}),
	} {
		if _, err := ReadMetadata(bytes.NewReader(tgz)); err == nil {
			t.Errorf("%s: read as a chart", name)
		}
	}
}

// chartArchive packs files as `helm package` does: under a directory
// named after the chart.
func chartArchive(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: "chart/" + name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
