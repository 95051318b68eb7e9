package config

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func load(t *testing.T, file string, args ...string) (*Serve, error) {
	t.Helper()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	s := Flags(fs)
	if file != "" {
		path := filepath.Join(t.TempDir(), "config.yaml")
		os.WriteFile(path, []byte(file), 0o644)
		args = append([]string{"--config", path}, args...)
	}
	return s, Load(fs, args)
}

func TestDefaults(t *testing.T) {
	s, err := load(t, "")
	if err != nil {
		t.Fatal(err)
	}
	if s.Listen != ":5000" || s.Upstream != "https://registry-1.docker.io" || s.Storage != "./data" || s.RecheckInterval != 0 || s.SummaryInterval != 5*time.Minute {
		t.Fatalf("defaults: %+v", s)
	}
}

func TestFileKeysAreFlagNamesAndFlagsWin(t *testing.T) {
	s, err := load(t, `
listen: 127.0.0.1:6000
upstream: http://mirror.internal:5000
storage: s3://cache/team-a
s3-endpoint: minio:9000
s3-insecure: true
recheck-interval: 5m
`, "--listen", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	want := Serve{Listen: ":7000", Upstream: "http://mirror.internal:5000", Storage: "s3://cache/team-a",
		S3Endpoint: "minio:9000", S3Insecure: true, RecheckInterval: 5 * time.Minute, SummaryInterval: 5 * time.Minute, Tenant: "depproxy"}
	if *s != want {
		t.Fatalf("got %+v\nwant %+v", *s, want)
	}
}

func TestFileErrorsSayWhatIsWrong(t *testing.T) {
	for file, want := range map[string]string{
		"lisen: :5000\n":           `unknown key "lisen"`,
		"recheck-interval: soon\n": "recheck-interval",
		"listen: [\n":              "config file",
	} {
		if _, err := load(t, file); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to mention %s", file, err, want)
		}
	}
}

// Every key the operator can render is a flag, and the file it renders
// loads back to the same settings.
func TestFileKeysAreFlags(t *testing.T) {
	f := File{Listen: ":5000", Upstream: "https://quay.io", Storage: "s3://b/p", S3Endpoint: "minio:9000",
		S3Insecure: true, S3Region: "eu", RecheckInterval: "1m", PrefetchPlatforms: "linux/amd64", SummaryInterval: "5s",
		Users: "/u", TokenKey: "/k.pem", ExternalURL: "https://c.example", Tenant: "ns/a", UpstreamCreds: "/up"}
	raw, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s, err := load(t, string(raw))
	if err != nil {
		t.Fatalf("the rendered file does not load: %v\n%s", err, raw)
	}
	want := Serve{Listen: ":5000", Upstream: "https://quay.io", Storage: "s3://b/p", S3Endpoint: "minio:9000",
		S3Insecure: true, S3Region: "eu", RecheckInterval: time.Minute, PrefetchPlatforms: "linux/amd64", SummaryInterval: 5 * time.Second,
		Users: "/u", TokenKey: "/k.pem", ExternalURL: "https://c.example", Tenant: "ns/a", UpstreamCreds: "/up"}
	if *s != want {
		t.Fatalf("got %+v\nwant %+v", *s, want)
	}
}
