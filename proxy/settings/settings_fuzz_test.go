package settings

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzSettingsFile: whatever a config file holds, loading it never
// panics; a file that loads renders back to one that loads the same.
func FuzzSettingsFile(f *testing.F) {
	f.Add("listen: :5000\nrecheck-interval: 1m\nmax-blob-size: 1Gi\n")
	f.Add("upstream: [\n")
	f.Add("s3-insecure: yes\nlog-level: 9999999999999999999\n")
	f.Add("max-blob-size: -1\nsummary-interval: -5s\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, file string) {
		path := filepath.Join(dir, "config.yaml")
		os.WriteFile(path, []byte(file), 0o600)
		load := func() (Settings, error) {
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			fs.SetOutput(discard{})
			s := Defaults()
			s.Bind(fs)
			err := s.Load(fs, []string{"--config", path})
			return s, err
		}
		s, err := load()
		if err != nil {
			return
		}
		raw, err := s.Marshal()
		if err != nil {
			t.Fatalf("%+v does not render: %v", s, err)
		}
		os.WriteFile(path, raw, 0o600)
		back, err := load()
		if err != nil || !reflect.DeepEqual(stripped(back), stripped(s)) {
			t.Fatalf("%q loads as %+v, renders as %q, which loads as %+v (%v)", file, s, raw, back, err)
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// stripped forgets how the lists were set, which no file keeps.
func stripped(s Settings) Settings {
	for _, l := range []*KeyedList{&s.Upstream, &s.UpstreamCreds, &s.UpstreamMirrorOf} {
		*l = KeyedList{Items: l.Items}
	}
	return s
}
