package helmrepo

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"sigs.k8s.io/yaml"
)

// The media types of a chart in a registry, as Helm's push writes them
// (helm.sh/helm/v4/pkg/registry).
const (
	ConfigMediaType     = "application/vnd.cncf.helm.config.v1+json"
	ChartLayerMediaType = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
	ProvLayerMediaType  = "application/vnd.cncf.helm.chart.provenance.v1.prov"
)

// ErrNotChart is a .tgz that is not a chart Helm would push.
var ErrNotChart = errors.New("not a Helm chart")

// Metadata is a chart's Chart.yaml as Helm's push writes it into the
// config blob: the fields, their order and their JSON names are those of
// Helm's chart.Metadata (held to it by this package's tests), so that the
// config's digest is the one `helm push` gives the same .tgz. Helm's own
// chart package is not linked: it registers every Kubernetes API type of
// client-go at start, 10 MiB more memory in every replica.
type Metadata struct {
	Name         string            `json:"name,omitempty"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []*Maintainer     `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []*Dependency     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// Maintainer is one of Chart.yaml's maintainers.
type Maintainer struct {
	Name  string `json:"name,omitempty"`
	Email string `json:"email,omitempty"`
	URL   string `json:"url,omitempty"`
}

// Dependency is one of Chart.yaml's dependencies.
type Dependency struct {
	Name         string   `json:"name"`
	Version      string   `json:"version,omitempty"`
	Repository   string   `json:"repository"`
	Condition    string   `json:"condition,omitempty"`
	Tags         []string `json:"tags,omitempty"`
	Enabled      bool     `json:"enabled,omitempty"`
	ImportValues []any    `json:"import-values,omitempty"`
	Alias        string   `json:"alias,omitempty"`
}

// maxMetadataFile bounds Chart.yaml and requirements.yaml.
const maxMetadataFile = 1 << 20

// ReadMetadata reads a chart archive's metadata as Helm's loader leaves
// it: Chart.yaml, a v1 chart's requirements.yaml merged in, apiVersion v1
// when it says none, and its strings cleaned of what is not printable.
func ReadMetadata(tgz io.Reader) (*Metadata, error) {
	zr, err := gzip.NewReader(tgz)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotChart, err)
	}
	var chartYAML, requirements []byte
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNotChart, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		// The archive's first directory is the chart's name; the rest is
		// the chart.
		name := strings.ReplaceAll(h.Name, `\`, "/")
		_, rest, ok := strings.Cut(path.Clean(name), "/")
		if !ok {
			continue
		}
		var into *[]byte
		switch rest {
		case "Chart.yaml":
			into = &chartYAML
		case "requirements.yaml":
			into = &requirements
		default:
			continue
		}
		if *into, err = io.ReadAll(io.LimitReader(tr, maxMetadataFile+1)); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNotChart, err)
		}
		if len(*into) > maxMetadataFile {
			return nil, fmt.Errorf("%w: its %s is larger than 1 MiB", ErrNotChart, rest)
		}
	}
	if chartYAML == nil {
		return nil, fmt.Errorf("%w: it has no Chart.yaml", ErrNotChart)
	}
	md := &Metadata{}
	if err := yaml.Unmarshal(chartYAML, md); err != nil {
		return nil, fmt.Errorf("%w: Chart.yaml: %w", ErrNotChart, err)
	}
	if md.APIVersion == "" {
		md.APIVersion = "v1"
	}
	if requirements != nil {
		if err := yaml.Unmarshal(requirements, md); err != nil {
			return nil, fmt.Errorf("%w: requirements.yaml: %w", ErrNotChart, err)
		}
	}
	return md, md.clean()
}

// clean does what Helm's validation does to the strings, and refuses
// what it refuses that the config's bytes depend on.
func (md *Metadata) clean() error {
	for _, s := range []*string{&md.Name, &md.Description, &md.Home, &md.Icon, &md.Condition, &md.Tags, &md.AppVersion, &md.KubeVersion} {
		*s = printable(*s)
	}
	for _, list := range [][]string{md.Sources, md.Keywords} {
		for i := range list {
			list[i] = printable(list[i])
		}
	}
	if md.Name == "" || md.Version == "" || md.Name == "." || md.Name == ".." || md.Name != path.Base(md.Name) {
		return fmt.Errorf("%w: Chart.yaml needs a name and a version", ErrNotChart)
	}
	for _, m := range md.Maintainers {
		if m == nil {
			return fmt.Errorf("%w: an empty maintainer", ErrNotChart)
		}
		m.Name, m.Email, m.URL = printable(m.Name), printable(m.Email), printable(m.URL)
	}
	for _, d := range md.Dependencies {
		if d == nil {
			return fmt.Errorf("%w: an empty dependency", ErrNotChart)
		}
		d.Name, d.Version, d.Repository, d.Condition = printable(d.Name), printable(d.Version), printable(d.Repository), printable(d.Condition)
		for i := range d.Tags {
			d.Tags[i] = printable(d.Tags[i])
		}
	}
	return nil
}

// printable turns every space into a blank and drops what cannot be
// printed, as Helm does.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case unicode.IsSpace(r):
			return ' '
		case unicode.IsPrint(r):
			return r
		}
		return -1
	}, s)
}

// artifact is one chart version as a registry holds it.
type artifact struct {
	manifest []byte
	digest   digest.Digest
	config   []byte
	// configDigest and provDigest (empty without a provenance file) are
	// what the manifest names them by.
	configDigest, provDigest digest.Digest
	chart                    ocispec.Descriptor
	chartURL                 string
	prov                     []byte // nil: the chart has no provenance file
}

// blob is what the artifact holds under d, if anything: its bytes when
// the artifact keeps them (config, provenance), else its URL (the chart).
func (a *artifact) blob(d digest.Digest) (data []byte, url string, size int64, ok bool) {
	switch {
	case d == a.configDigest:
		return a.config, "", int64(len(a.config)), true
	case a.prov != nil && d == a.provDigest:
		return a.prov, "", int64(len(a.prov)), true
	case d == a.chart.Digest:
		return nil, a.chartURL, a.chart.Size, true
	}
	return nil, "", 0, false
}

// build makes the manifest `helm push` makes of the chart (its config
// from the chart's metadata; the chart's bytes, and its provenance file,
// as layers, in digest order), with the annotations of Helm's push; the
// creation time is the index's for that version, never the time of the
// request, so every replica and every restart builds the same digest.
func build(tgz, prov []byte, md *Metadata, created time.Time, chartURL string) (*artifact, error) {
	config, err := json.Marshal(md)
	if err != nil {
		return nil, err
	}
	a := &artifact{config: config, configDigest: digest.FromBytes(config), chartURL: chartURL, prov: prov,
		chart: ocispec.Descriptor{MediaType: ChartLayerMediaType, Digest: digest.FromBytes(tgz), Size: int64(len(tgz))}}
	layers := []ocispec.Descriptor{a.chart}
	if prov != nil {
		a.provDigest = digest.FromBytes(prov)
		layers = append(layers, ocispec.Descriptor{MediaType: ProvLayerMediaType, Digest: a.provDigest, Size: int64(len(prov))})
	}
	sort.Slice(layers, func(i, j int) bool { return layers[i].Digest < layers[j].Digest })
	m := ocispec.Manifest{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		Config:      ocispec.Descriptor{MediaType: ConfigMediaType, Digest: a.configDigest, Size: int64(len(config))},
		Layers:      layers,
		Annotations: annotations(md, created),
	}
	if a.manifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	a.digest = digest.FromBytes(a.manifest)
	return a, nil
}

// annotations are those Helm's push puts on a chart's manifest: the
// chart's own first, under the OCI ones it may not override.
func annotations(md *Metadata, created time.Time) map[string]string {
	a := map[string]string{}
	set := func(k, v string) {
		if strings.TrimSpace(v) != "" {
			a[k] = v
		}
	}
	set(ocispec.AnnotationDescription, md.Description)
	set(ocispec.AnnotationTitle, md.Name)
	set(ocispec.AnnotationVersion, md.Version)
	set(ocispec.AnnotationURL, md.Home)
	if !created.IsZero() {
		set(ocispec.AnnotationCreated, created.UTC().Format(time.RFC3339))
	}
	if len(md.Sources) > 0 {
		set(ocispec.AnnotationSource, md.Sources[0])
	}
	var authors []string
	for _, m := range md.Maintainers {
		s := m.Name
		if m.Email != "" {
			s += " (" + m.Email + ")"
		}
		authors = append(authors, s)
	}
	set(ocispec.AnnotationAuthors, strings.Join(authors, ", "))
	immutable := map[string]bool{ocispec.AnnotationVersion: true, ocispec.AnnotationTitle: true}
	for k, v := range md.Annotations {
		if !immutable[k] {
			a[k] = v
		}
	}
	return a
}
