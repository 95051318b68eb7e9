package settings

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func load(t *testing.T, file string, args ...string) (*Settings, error) {
	t.Helper()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	s := Defaults()
	s.Bind(fs)
	if file != "" {
		path := filepath.Join(t.TempDir(), "config.yaml")
		os.WriteFile(path, []byte(file), 0o644)
		args = append([]string{"--config", path}, args...)
	}
	err := s.Load(fs, args)
	return &s, err
}

func TestDefaults(t *testing.T) {
	s, err := load(t, "")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(stripped(*s), Defaults()) || s.Listen != ":5000" || s.Upstream.String() != "https://registry-1.docker.io" || s.Storage != "./data" ||
		s.RecheckInterval != 0 || s.SummaryInterval.Std() != 30*time.Second {
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
`, "--listen", ":7000", "--summary-interval", "1m")
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	want.Listen, want.Upstream, want.Storage, want.S3Endpoint, want.S3Insecure = ":7000", Keys("http://mirror.internal:5000"), "s3://cache/team-a", "minio:9000", true
	want.RecheckInterval, want.SummaryInterval = Duration(5*time.Minute), Duration(time.Minute)
	if !reflect.DeepEqual(stripped(*s), want) {
		t.Fatalf("got %+v\nwant %+v", *s, want)
	}
}

func TestFileErrorsSayWhatIsWrong(t *testing.T) {
	for file, want := range map[string]string{
		"lisen: :5000\n":                     `unknown field "lisen"`,
		"Listen: :5000\n":                    `unknown key "Listen"`,
		"max-downloads: 0\n":                 "max-downloads must be at least 1",
		"max-blob-size: lots\n":              "want a size",
		"listen: ''\n":                       "listen may not be empty",
		"recheck-interval: soon\n":           "duration",
		"recheck-interval: 30\n":             "duration",
		"listen: [\n":                        "config file",
		"hot-dir: /hot\nhot-size: 1Gi\n":     "served from its disk already",
		"storage: s3://b/p\nhot-dir: /hot\n": "hot-dir needs hot-size",
		"storage: s3://b/p\nhot-size: 1Gi\n": "hot-size needs hot-dir",
	} {
		if _, err := load(t, file); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to mention %s", file, err, want)
		}
	}
	if s, err := load(t, "recheck-interval: 0\n"); err != nil || s.RecheckInterval != 0 {
		t.Errorf("a bare 0: %v %v", s, err)
	}
}

// Every setting is a flag of the same name and every flag a setting, and
// a file the operator renders loads back to the same settings.
func TestSettingsAreFlagsAndRoundTrip(t *testing.T) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var s Settings
	s.Bind(fs)
	typ := reflect.TypeOf(s)
	tags := map[string]bool{}
	for i := 0; i < typ.NumField(); i++ {
		tag, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		tags[tag] = true
		if fs.Lookup(tag) == nil {
			t.Errorf("setting %s (%s) has no flag", typ.Field(i).Name, tag)
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		if !tags[f.Name] {
			t.Errorf("flag --%s is not a setting", f.Name)
		}
	})

	full := Settings{Listen: ":5000", MetricsListen: ":9091", TLSCert: "/tls/tls.crt", TLSKey: "/tls/tls.key", Upstream: Keys("docker.io=https://registry-1.docker.io", "quay.io=https://quay.io"), Storage: "s3://b/p", S3Endpoint: "minio:9000",
		S3Insecure: true, S3Region: "eu", StorageTimeout: Duration(3 * time.Second), S3Redirect: true, RecheckInterval: Duration(time.Minute), PrefetchPlatforms: "linux/amd64",
		SummaryInterval: Duration(5 * time.Second), Users: "/u", TokenKey: "/k.pem", ExternalURL: "https://c.example",
		TrustedProxies: "10.0.0.0/8", Tenant: "ns/a", UpstreamCreds: Keys("/up", "quay.io=/quay"), UpstreamMirrorOf: Keys("index.docker.io"), MaxDownloads: 8, RateLimitReserve: 3, MaxBlobSize: Size(512 << 20), SpoolDir: "/spool", HotDir: "/hot", HotSize: Size(20 << 30), Pinned: "/pins", OnUpstreamNotFound: NotFound, MaxSize: Size(200 << 30), Warm: "/warm", WarmPlatforms: "linux/arm64", Allow: List{"docker.io/library/*"}, Deny: List{"docker.io/library/bad", "quay.io/**"}, CredProviderConfig: "/etc/kubernetes/credential-providers.yaml", CredProviderBinDir: "/usr/libexec/kubernetes/kubelet-plugins", CredProviderTokens: "/var/run/secrets/depproxy/tokens", UpstreamProvider: Keys("quay.io=ecr-credential-provider"), ManifestMemory: Size(8 << 20), ShutdownDelay: Duration(5 * time.Second), LogLevel: 1, AuditLog: "-", AuditBlobs: true, AuditLogMaxSize: Size(10 << 20),
		Peers: "http://10.0.0.1:5000,http://10.0.0.2:5000", Advertise: "http://10.0.0.1:5000", PeerNamespace: "team-a"}
	// --peers and --peer-service exclude each other: one round trip each.
	withService := full
	withService.Peers, withService.PeerService, withService.PeerDeployment = "", "cache-peers", "cache"
	covered := map[int]bool{}
	for _, s := range []Settings{full, withService} {
		v := reflect.ValueOf(s)
		for i := 0; i < v.NumField(); i++ {
			covered[i] = covered[i] || !v.Field(i).IsZero()
		}
		raw, err := s.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got, err := load(t, string(raw))
		if err != nil {
			t.Fatalf("the rendered file does not load: %v\n%s", err, raw)
		}
		if !reflect.DeepEqual(stripped(*got), s) {
			t.Fatalf("got %+v\nwant %+v", *got, s)
		}
	}
	for i := 0; i < typ.NumField(); i++ {
		if !covered[i] {
			t.Errorf("the round trip leaves %s untested", typ.Field(i).Name)
		}
	}
}
