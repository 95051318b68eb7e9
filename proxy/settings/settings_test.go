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
		SummaryInterval: Duration(5 * time.Second), Users: "/u", TokenKey: "/k.pem", NodeKey: "/node.key", ExternalURL: "https://c.example",
		TrustedProxies: "10.0.0.0/8", Tenant: "ns/a", UpstreamCreds: Keys("/up", "quay.io=/quay"), UpstreamMirrorOf: Keys("index.docker.io"), MaxDownloads: 8, RateLimitReserve: 3, MaxBlobSize: Size(512 << 20), SpoolDir: "/spool", HotDir: "/hot", HotSize: Size(20 << 30), Pinned: "/pins", OnUpstreamNotFound: NotFound, MaxSize: Size(200 << 30), Warm: "/warm", WarmPlatforms: "linux/arm64", Allow: List{"docker.io/library/*"}, Deny: List{"docker.io/library/bad", "quay.io/**"}, CredProviderConfig: "/etc/kubernetes/credential-providers.yaml", CredProviderBinDir: "/usr/libexec/kubernetes/kubelet-plugins", CredProviderTokens: "/var/run/secrets/depproxy/tokens", UpstreamProvider: Keys("quay.io=ecr-credential-provider"), ManifestMemory: Size(8 << 20), ShutdownDelay: Duration(5 * time.Second), LogLevel: 1, AuditLog: "-", AuditBlobs: true, AuditLogMaxSize: Size(10 << 20), VerifyPolicy: "/etc/depproxy/verify.yaml",
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

// What `depproxy serve` once found only while it started, Validate finds
// (so the operator, which validates what it renders, does too), naming
// the flag to mend.
func TestValidateRefusesWhatTheProxyWouldNotStartWith(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"a certificate without its key", []string{"--tls-cert", "/tls/tls.crt"}, "tls: set both --tls-cert and --tls-key"},
		{"a key without its certificate", []string{"--tls-key", "/tls/tls.key"}, "tls: set both --tls-cert and --tls-key"},
		{"a prefetch platform with too many parts", []string{"--prefetch-platforms", "linux/amd64,linux/arm/v7/x"}, `prefetch-platforms "linux/arm/v7/x": too many slashes`},
		{"a warm platform with too many parts", []string{"--warm-platforms", "linux/arm64/v8/x"}, `warm-platforms "linux/arm64/v8/x": too many slashes`},
		{"a trusted proxy that is no CIDR", []string{"--trusted-proxies", "10.0.0.0/8,10.0.0.0/33"}, `trusted-proxies "10.0.0.0/33": want a CIDR`},
		{"a trusted proxy that is no address", []string{"--trusted-proxies", "ingress"}, `trusted-proxies "ingress": want a CIDR`},
		{"an S3 storage without a bucket", []string{"--storage", "s3:///prefix"}, `storage "s3:///prefix": want s3://BUCKET/PREFIX`},
		{"an S3 prefix climbing out", []string{"--storage", "s3://bucket/a/../b"}, "the prefix may not contain . or .. segments"},
		{"a bound provider without the providers", []string{"--upstream-credential-provider", "ecr"}, "upstream-credential-provider \"ecr\": set --image-credential-provider-config"},
		{"both ways to find replicas", []string{"--token-key", "/k", "--peers", "http://10.0.0.1:5000", "--peer-service", "cache-peers"}, "set --peers or --peer-service, not both"},
		{"a peer service without its deployment", []string{"--token-key", "/k", "--peer-service", "cache-peers"}, "set --peer-deployment too"},
		{"replicas without the token key", []string{"--peer-service", "cache-peers", "--peer-deployment", "cache"}, "set --token-key"},
		{"an advertised address without replicas", []string{"--advertise", "http://10.0.0.1:5000"}, "advertise: set it together with --peers or --peer-service"},
		{"a peer that is no URL", []string{"--token-key", "/k", "--peers", "10.0.0.1"}, `peers "10.0.0.1": want a replica's URL`},
		{"an advertised address not among the peers", []string{"--token-key", "/k", "--peers", "http://10.0.0.1:5000", "--advertise", "http://10.0.0.2:5000"}, "is not among them"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := load(t, "", c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%q: error %v, want it to say %s", c.args, err, c.want)
			}
		})
	}
	// What is left out of a replica's file, its own --advertise, is no
	// error: cleanup reads the same file, and the operator renders it.
	for _, ok := range [][]string{
		{"--token-key", "/k", "--peer-service", "cache-peers", "--peer-deployment", "cache"},
		{"--token-key", "/k", "--peers", "http://10.0.0.1:5000,http://10.0.0.2:5000"},
		{"--trusted-proxies", "10.0.0.0/8, 127.0.0.1, ::1", "--prefetch-platforms", "linux/amd64, linux/arm/v7", "--storage", "s3://bucket/team/a"},
		{"--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key"},
	} {
		if _, err := load(t, "", ok...); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}
