// Package settings are the proxy's settings: every flag of `depproxy
// serve`, every key of its --config file (which the operator renders),
// their defaults and their validation, in one place, so that the
// operator checks what it renders as the proxy will.
package settings

import (
	"github.com/depproxy/depproxy/proxy/access"
	"github.com/depproxy/depproxy/proxy/registryname"

	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

// Settings configure `depproxy serve` (and the storage of `depproxy
// cleanup`). Each field is a command-line flag and a key of the --config
// file, with the same name: the json tag. To add a setting, add a field
// here and its flag in Bind; a test holds the two together.
type Settings struct {
	Listen             string    `json:"listen,omitempty"`
	MetricsListen      string    `json:"metrics-listen,omitempty"`
	TLSCert            string    `json:"tls-cert,omitempty"`
	TLSKey             string    `json:"tls-key,omitempty"`
	Upstream           KeyedList `json:"upstream,omitzero"`
	Storage            string    `json:"storage,omitempty"`
	S3Endpoint         string    `json:"s3-endpoint,omitempty"`
	S3Insecure         bool      `json:"s3-insecure,omitempty"`
	S3Region           string    `json:"s3-region,omitempty"`
	StorageTimeout     Duration  `json:"storage-timeout,omitempty"`
	S3Redirect         bool      `json:"s3-redirect,omitempty"`
	RecheckInterval    Duration  `json:"recheck-interval,omitempty"`
	PrefetchPlatforms  string    `json:"prefetch-platforms,omitempty"`
	SummaryInterval    Duration  `json:"summary-interval,omitempty"`
	Users              string    `json:"users,omitempty"`
	TokenKey           string    `json:"token-key,omitempty"`
	NodeKey            string    `json:"node-key,omitempty"`
	ExternalURL        string    `json:"external-url,omitempty"`
	TrustedProxies     string    `json:"trusted-proxies,omitempty"`
	Tenant             string    `json:"tenant,omitempty"`
	UpstreamCreds      KeyedList `json:"upstream-credentials,omitzero"`
	UpstreamMirrorOf   KeyedList `json:"upstream-mirror-of,omitzero"`
	MaxDownloads       int       `json:"max-downloads,omitempty"`
	RateLimitReserve   int       `json:"ratelimit-reserve,omitempty"`
	MaxBlobSize        Size      `json:"max-blob-size,omitempty"`
	SpoolDir           string    `json:"spool-dir,omitempty"`
	HotDir             string    `json:"hot-dir,omitempty"`
	HotSize            Size      `json:"hot-size,omitempty"`
	ManifestMemory     Size      `json:"manifest-memory,omitempty"`
	ShutdownDelay      Duration  `json:"shutdown-delay,omitempty"`
	Peers              string    `json:"peers,omitempty"`
	Advertise          string    `json:"advertise,omitempty"`
	PeerService        string    `json:"peer-service,omitempty"`
	PeerNamespace      string    `json:"peer-namespace,omitempty"`
	PeerDeployment     string    `json:"peer-deployment,omitempty"`
	LogLevel           int       `json:"log-level,omitempty"`
	AuditLog           string    `json:"audit-log,omitempty"`
	AuditBlobs         bool      `json:"audit-blobs,omitempty"`
	AuditLogMaxSize    Size      `json:"audit-log-max-size,omitempty"`
	Pinned             string    `json:"pinned,omitempty"`
	OnUpstreamNotFound string    `json:"on-upstream-not-found,omitempty"`
	MaxSize            Size      `json:"max-size,omitempty"`
	Warm               string    `json:"warm,omitempty"`
	Allow              List      `json:"allow,omitempty"`
	Deny               List      `json:"deny,omitempty"`
	WarmPlatforms      string    `json:"warm-platforms,omitempty"`
	CredProviderConfig string    `json:"image-credential-provider-config,omitempty"`
	CredProviderBinDir string    `json:"image-credential-provider-bin-dir,omitempty"`
	CredProviderTokens string    `json:"image-credential-provider-token-dir,omitempty"`
	UpstreamProvider   KeyedList `json:"upstream-credential-provider,omitzero"`
	VerifyPolicy       string    `json:"verify-policy,omitempty"`
}

// The defaults of the parts' settings. They are written here, not read
// from the parts, so that the operator, which renders settings, links
// none of the proxy's engine (storage clients, the cache); a test of the
// server holds them equal to the parts' own.
const (
	DefaultMaxDownloads     = 64
	DefaultMaxBlobSize      = 1 << 40 // a model-sized layer
	DefaultManifestMemory   = 64 << 20
	DefaultStorageTimeout   = 5 * time.Second
	DefaultRateLimitReserve = 10
)

// Defaults are the settings of a proxy given no flags and no file.
func Defaults() Settings {
	return Settings{
		Listen:             ":5000",
		MetricsListen:      ":9090",
		Upstream:           Keys(registryname.DockerHubURL),
		Storage:            "./data",
		SummaryInterval:    Duration(30 * time.Second),
		Tenant:             "depproxy",
		MaxDownloads:       DefaultMaxDownloads,
		StorageTimeout:     Duration(DefaultStorageTimeout),
		RateLimitReserve:   DefaultRateLimitReserve,
		MaxBlobSize:        Size(DefaultMaxBlobSize),
		ManifestMemory:     Size(DefaultManifestMemory),
		OnUpstreamNotFound: ServeCached,
		AuditLogMaxSize:    Size(DefaultAuditLogMaxSize),
	}
}

// DefaultAuditLogMaxSize bounds an audit log file: past it, it is
// rotated.
const DefaultAuditLogMaxSize = 100 << 20

// What --on-upstream-not-found takes: a cached tag the upstream answers
// 404 for is served as cached, or answered 404 (a pinned one is always
// served).
const (
	ServeCached = "serve-cached"
	NotFound    = "not-found"
)

// BindCleanup registers the settings `depproxy cleanup` uses: the
// storage, the pins and the budget.
func (s *Settings) BindCleanup(fs *flag.FlagSet) {
	fs.StringVar(&s.Storage, "storage", s.Storage, "where the cache lives: a directory, or s3://BUCKET/PREFIX (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
	fs.StringVar(&s.S3Endpoint, "s3-endpoint", s.S3Endpoint, "S3 endpoint host:port (MinIO); empty for AWS")
	fs.BoolVar(&s.S3Insecure, "s3-insecure", s.S3Insecure, "talk plain HTTP to the S3 endpoint")
	fs.StringVar(&s.S3Region, "s3-region", s.S3Region, "S3 region, if the endpoint needs one")
	fs.Var(&s.StorageTimeout, "storage-timeout", "how long an S3 call may take (an upload or a listing: stay silent) before the storage counts as down for a few seconds, and the cache passes through to the upstream")
	fs.StringVar(&s.Pinned, "pinned", s.Pinned, "a file of images to keep whatever their last pull, one reference a line (docker.io/library/postgres:16, ghcr.io/org/tool@sha256:...), re-read when it changes; serve caches them at once (warming), and their tags are served when the upstream no longer has them")
	fs.Var(&s.MaxSize, "max-size", "the storage budget (e.g. 200Gi): over it, whole images are evicted, least recently pulled first and never a pinned one, down to 90% of it; serve checks every minute, cleanup on each run")
	fs.IntVar(&s.LogLevel, "log-level", s.LogLevel, "log verbosity: 0 events, 1 also each request")
}

// Bind registers a flag for every setting on fs, each defaulting to the
// setting's current value.
func (s *Settings) Bind(fs *flag.FlagSet) {
	s.BindCleanup(fs)
	fs.StringVar(&s.Listen, "listen", s.Listen, "address to serve the registry API and logins on")
	fs.StringVar(&s.MetricsListen, "metrics-listen", s.MetricsListen, "address to serve /metrics, /status/summary, /healthz and /readyz on; keep it off the network tenants reach")
	fs.StringVar(&s.TLSCert, "tls-cert", s.TLSCert, "PEM certificate (chain) to serve the registry port with HTTPS; re-read when the file changes")
	fs.StringVar(&s.TLSKey, "tls-key", s.TLSKey, "PEM private key of --tls-cert")
	fs.Var(&s.Upstream, "upstream", "registry to pull through: a URL (scheme and host), or REGISTRY=URL (ghcr.io=https://ghcr.io), or NAME=helm+URL for a classic Helm chart repository served as OCI charts (charts.example=helm+https://charts.example.com/stable); repeat it for several, the first is the default for requests that name no registry")
	fs.BoolVar(&s.S3Redirect, "s3-redirect", s.S3Redirect, "send clients of cached blobs to a presigned S3 URL instead of streaming them; only where clients can reach the S3 endpoint")
	fs.Var(&s.RecheckInterval, "recheck-interval", "how long a tag checked with the upstream is served without asking again; 0 asks (one HEAD) on every tag request")
	fs.StringVar(&s.PrefetchPlatforms, "prefetch-platforms", s.PrefetchPlatforms, "comma-separated platforms (linux/amd64,linux/arm64/v8) whose images are cached as soon as their index is")
	fs.Var(&s.SummaryInterval, "summary-interval", "how long a /status/summary is reused unless this replica cached something since (each reads only the journal of what changed: one LIST)")
	fs.StringVar(&s.Users, "users", s.Users, "who may log in: an htpasswd file (bcrypt) or a directory with a file per user holding a password or bcrypt hash; without it, pulls are anonymous")
	fs.StringVar(&s.TokenKey, "token-key", s.TokenKey, "PEM ECDSA P-256 key that signs tokens; without it a key is generated at start (tokens then die with the process)")
	fs.StringVar(&s.NodeKey, "node-key", s.NodeKey, "a file of random bytes (at least 16) the node agents share (depproxy node --node-key): a blob request an agent signs with it records that node as holding the blob, and another agent of its zone asking for it is sent to that node with a ticket; the key is the nodes' trust domain. Empty: nodes do not share")
	fs.StringVar(&s.ExternalURL, "external-url", s.ExternalURL, "where clients reach this proxy (e.g. https://cache.example); the token realm is under it. Default: the request's host")
	fs.StringVar(&s.TrustedProxies, "trusted-proxies", s.TrustedProxies, "comma-separated CIDRs of proxies (an ingress) whose X-Forwarded-For names the client, for the login throttle; off by default")
	fs.StringVar(&s.Tenant, "tenant", s.Tenant, "the tenant's name: the token audience and the challenge's service; a token of another tenant is refused")
	fs.Var(&s.UpstreamCreds, "upstream-credentials", "credentials for an upstream, DIR or REGISTRY=DIR (a bare DIR is the default upstream's): a directory (a mounted Secret) with .dockerconfigjson, or username and password files; re-read when they change; repeatable")
	fs.Var(&s.UpstreamMirrorOf, "upstream-mirror-of", "registries (containerd's ?ns=) an upstream stands in for besides its own name, NAMES or REGISTRY=NAMES, comma-separated, e.g. docker.io for an internal Docker Hub mirror; repeatable")
	fs.IntVar(&s.MaxDownloads, "max-downloads", s.MaxDownloads, "how many upstream blob downloads run at once; more wait for a slot")
	fs.IntVar(&s.RateLimitReserve, "ratelimit-reserve", s.RateLimitReserve, "requests of the upstream's rate limit (its ratelimit-remaining header) kept for what is not cached: at or below it, a cached tag is still checked with a HEAD (free on Docker Hub), and one that moved is served as cached rather than spend a GET")
	fs.Var(&s.MaxBlobSize, "max-blob-size", "the largest blob downloaded (e.g. 64Gi); a download whose size the upstream does not announce is cut there")
	fs.Var(&s.ManifestMemory, "manifest-memory", "memory for recently served manifests (e.g. 64Mi): within the recheck interval a warm tag costs no storage round trip")
	fs.Var(&s.ShutdownDelay, "shutdown-delay", "on SIGTERM, how long /readyz fails while everything is still served, before the listeners close (a Service stops sending new connections meanwhile)")
	fs.StringVar(&s.Peers, "peers", s.Peers, "comma-separated URLs of every replica of this cache (http://10.0.0.1:5000,...), this one included: each cold blob and tag is fetched once, by the replica that owns it; the replicas share the storage and --token-key")
	fs.StringVar(&s.Advertise, "advertise", s.Advertise, "this replica's own URL, as the other replicas reach it (one of --peers, or its address behind --peer-service)")
	fs.StringVar(&s.PeerService, "peer-service", s.PeerService, "on Kubernetes, instead of --peers: the headless Service whose ready endpoints (EndpointSlices) are the replicas; they are reached with --advertise's scheme and port")
	fs.StringVar(&s.PeerNamespace, "peer-namespace", s.PeerNamespace, "the namespace of --peer-service (default: the pod's own)")
	fs.StringVar(&s.PeerDeployment, "peer-deployment", s.PeerDeployment, "with --peer-service: the Deployment whose pods alone are replicas (required with it); endpoints of other pods, and slices the EndpointSlice controller did not make, are ignored")
	fs.StringVar(&s.SpoolDir, "spool-dir", s.SpoolDir, "where blobs being downloaded are kept until stored, for S3 storage (default: the system's temporary directory); abandoned files are removed at start")
	fs.StringVar(&s.HotDir, "hot-dir", s.HotDir, "with S3 storage: a local directory (an emptyDir, a local disk) where this replica keeps the blobs it fetched or served recently and serves them from, with sendfile, S3 staying the truth; kept across restarts, checked on first read. Downloads are spooled there too unless --spool-dir says otherwise")
	fs.Var(&s.HotSize, "hot-size", "with --hot-dir: the most it keeps there (e.g. 20Gi), least recently read out first; it also leaves 5% of the disk (at most 1 GiB) free")
	fs.StringVar(&s.AuditLog, "audit-log", s.AuditLog, "write the pull audit log here, - for standard output: a JSON line per manifest answered and per request refused (who, from where, what, tag and digest, hit, miss or stale, status, bytes); never a password or a token")
	fs.BoolVar(&s.AuditBlobs, "audit-blobs", s.AuditBlobs, "with --audit-log: a line per blob request too")
	fs.Var(&s.AuditLogMaxSize, "audit-log-max-size", "with --audit-log naming a file: past this size (e.g. 100Mi) the file is renamed to FILE.1, replacing an older one, and a new one begun; 0 never rotates")
	fs.StringVar(&s.Warm, "warm", s.Warm, "a file of images to cache before any client pulls them, as --pinned but not kept from the cleanup; re-read when it changes")
	fs.StringVar(&s.WarmPlatforms, "warm-platforms", s.WarmPlatforms, "comma-separated platforms the images of --pinned and --warm are cached for (default: --prefetch-platforms; without either, every platform of an index)")
	fs.Var(&s.Allow, "allow", "what may be pulled, registry/repository[:tag] after name normalisation (nginx is docker.io/library/nginx): * within a path component, ** across; repeatable; none allows all that is not denied. A --config file's rules are re-read when it changes")
	fs.Var(&s.Deny, "deny", "what may never be pulled, as --allow, and winning over it; cached content too; repeatable")
	fs.StringVar(&s.CredProviderConfig, "image-credential-provider-config", s.CredProviderConfig, "the kubelet's CredentialProviderConfig (kubelet.config.k8s.io/v1): an upstream whose URL host a provider's matchImages match (and its name too, where the name differs from the host) gets its credentials from that plugin (ecr-credential-provider, ...), asked for each repository as the kubelet asks for an image, sent to that host only, cached as the plugin says; an upstream's --upstream-credentials win")
	fs.Var(&s.UpstreamProvider, "upstream-credential-provider", "binds an upstream to one provider of --image-credential-provider-config, REGISTRY=NAME (a bare NAME is the default upstream's); once any upstream is bound, an upstream not bound gets no plugin's credentials; repeatable")
	fs.StringVar(&s.CredProviderBinDir, "image-credential-provider-bin-dir", s.CredProviderBinDir, "where the plugins of --image-credential-provider-config are, by their names")
	fs.StringVar(&s.CredProviderTokens, "image-credential-provider-token-dir", s.CredProviderTokens, "for providers with tokenAttributes: DIR/AUDIENCE/token is a service-account token for that audience (a projected token volume), DIR/serviceaccount-annotations.json the ServiceAccount's annotations")
	fs.StringVar(&s.VerifyPolicy, "verify-policy", s.VerifyPolicy, "a YAML file of which images must be signed, by which cosign public keys or keyless identities, against which offline trusted root, or by notation against which trust store and trust policy (mode: enforce refuses the others with 403 DENIED, audit serves them and logs and counts); each manifest is checked before it is first served; re-read with the files it names when they change (docs/configuration.md, Verifying signatures)")
	fs.StringVar(&s.OnUpstreamNotFound, "on-upstream-not-found", s.OnUpstreamNotFound, "a cached tag the upstream answers 404 for (deleted, pruned): serve-cached serves the cached copy, not-found answers 404; a pinned tag is served either way")
}

const configUsage = "YAML file whose keys are these flags' names; flags on the command line win"

// Marshal renders the settings as a --config file.
func (s Settings) Marshal() ([]byte, error) { return yaml.Marshal(s) }

// Load parses args into fs, on which s is bound (other flags may be
// too). A --config file fills every setting that the command line does
// not set. Unknown keys in the file are errors, so that a typo does not
// silently fall back to a default.
func (s *Settings) Load(fs *flag.FlagSet, args []string) error {
	configFile := fs.String("config", "", configUsage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configFile == "" {
		return s.Validate()
	}
	raw, err := os.ReadFile(*configFile)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	fromFile, err := Parse(raw)
	if err != nil {
		return fmt.Errorf("config file %s: %w", *configFile, err)
	}
	// The command line wins: replay what it set over the file's values.
	replay := flag.NewFlagSet("replay", flag.ContinueOnError)
	fromFile.Bind(replay)
	var errs []error
	fs.Visit(func(f *flag.Flag) {
		if replay.Lookup(f.Name) != nil {
			errs = append(errs, replay.Set(f.Name, f.Value.String()))
		}
	})
	*s = fromFile
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return s.Validate()
}

// Parse reads a --config file over the defaults. Unknown keys are
// errors, so that a typo does not silently fall back to a default. The
// operator parses what it renders with it, as the proxy will.
func Parse(raw []byte) (Settings, error) {
	s := Defaults()
	if err := yaml.UnmarshalStrict(raw, &s); err != nil {
		return Settings{}, err
	}
	// JSON field matching ignores case; the file's keys are flag names,
	// which do not.
	var keys map[string]any
	yaml.Unmarshal(raw, &keys)
	names, bound := flag.NewFlagSet("keys", flag.ContinueOnError), Defaults()
	bound.Bind(names)
	for key := range keys {
		if names.Lookup(key) == nil {
			return Settings{}, fmt.Errorf("unknown key %q (keys are the flag names, in lower case)", key)
		}
	}
	return s, nil
}

// Validate refuses settings no proxy can run with.
func (s *Settings) Validate() error {
	var errs []error
	for name, v := range map[string]string{"listen": s.Listen, "metrics-listen": s.MetricsListen,
		"storage": s.Storage, "tenant": s.Tenant} {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s may not be empty", name))
		}
	}
	if s.ShutdownDelay < 0 {
		errs = append(errs, errors.New("shutdown-delay may not be negative"))
	}
	if s.RecheckInterval < 0 {
		errs = append(errs, errors.New("recheck-interval may not be negative"))
	}
	if s.SummaryInterval <= 0 {
		errs = append(errs, errors.New("summary-interval must be positive"))
	}
	if s.RateLimitReserve < 0 {
		errs = append(errs, errors.New("ratelimit-reserve may not be negative"))
	}
	if s.MaxDownloads < 1 {
		errs = append(errs, errors.New("max-downloads must be at least 1"))
	}
	if s.MaxBlobSize < 1 {
		errs = append(errs, errors.New("max-blob-size must be positive"))
	}
	if s.ManifestMemory < 1 {
		errs = append(errs, errors.New("manifest-memory must be positive"))
	}
	if _, err := s.Upstreams(); err != nil {
		errs = append(errs, err)
	}
	if s.OnUpstreamNotFound != ServeCached && s.OnUpstreamNotFound != NotFound {
		errs = append(errs, fmt.Errorf("on-upstream-not-found is %s or %s, not %q", ServeCached, NotFound, s.OnUpstreamNotFound))
	}
	if _, err := s.Access(); err != nil {
		errs = append(errs, err)
	}
	if s.MaxSize < 0 {
		errs = append(errs, errors.New("max-size may not be negative"))
	}
	if s.AuditLogMaxSize < 0 {
		errs = append(errs, errors.New("audit-log-max-size may not be negative (0 never rotates)"))
	}
	if strings.HasPrefix(s.Storage, "s3://") {
		if _, _, err := s.S3Location(); err != nil {
			errs = append(errs, err)
		}
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		errs = append(errs, errors.New("tls: set both --tls-cert and --tls-key"))
	}
	if _, _, err := s.Platforms(); err != nil {
		errs = append(errs, err)
	}
	if _, err := s.TrustedProxyNets(); err != nil {
		errs = append(errs, err)
	}
	if !s.UpstreamProvider.IsZero() && s.CredProviderConfig == "" {
		errs = append(errs, fmt.Errorf("upstream-credential-provider %q: set --image-credential-provider-config, which names the providers", s.UpstreamProvider.Items[0]))
	}
	if _, err := s.replicas(false); err != nil {
		errs = append(errs, err)
	}
	switch {
	case s.HotDir != "" && !strings.HasPrefix(s.Storage, "s3://"):
		errs = append(errs, fmt.Errorf("hot-dir is a local tier in front of S3 storage; storage %q is a directory, served from its disk already", s.Storage))
	case s.HotDir != "" && s.HotSize <= 0:
		errs = append(errs, errors.New("hot-dir needs hot-size, the most it may keep (e.g. 20Gi)"))
	case s.HotDir == "" && s.HotSize != 0:
		errs = append(errs, errors.New("hot-size needs hot-dir, where to keep the hot blobs"))
	}
	// What is left to the proxy's start needs what the settings name
	// read: the files (pins, users, keys, the providers' config), and
	// the storage and the Kubernetes API reached.
	return errors.Join(errs...)
}

// S3Location splits storage's s3://BUCKET/PREFIX.
func (s *Settings) S3Location() (bucket, prefix string, err error) {
	u, err := url.Parse(s.Storage)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return "", "", fmt.Errorf("storage %q: want s3://BUCKET/PREFIX", s.Storage)
	}
	prefix = strings.Trim(u.Path, "/")
	for _, seg := range strings.Split(prefix, "/") {
		if seg == ".." || seg == "." {
			return "", "", fmt.Errorf("storage %q: the prefix may not contain . or .. segments", s.Storage)
		}
	}
	return u.Host, prefix, nil
}

// Platforms are the platforms prefetched with an index, and those what
// is kept is warmed for (--warm-platforms, else the prefetched ones).
func (s *Settings) Platforms() (prefetch, warm []v1.Platform, err error) {
	if prefetch, err = parsePlatforms("prefetch-platforms", s.PrefetchPlatforms); err != nil {
		return nil, nil, err
	}
	if s.WarmPlatforms == "" {
		return prefetch, prefetch, nil
	}
	if warm, err = parsePlatforms("warm-platforms", s.WarmPlatforms); err != nil {
		return nil, nil, err
	}
	return prefetch, warm, nil
}

func parsePlatforms(flag, list string) ([]v1.Platform, error) {
	var out []v1.Platform
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := v1.ParsePlatform(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", flag, s, err)
		}
		out = append(out, *p)
	}
	return out, nil
}

// TrustedProxyNets are the networks whose X-Forwarded-For is believed
// (--trusted-proxies: CIDRs, or single addresses).
func (s *Settings) TrustedProxyNets() ([]*net.IPNet, error) {
	var out []*net.IPNet
	for _, item := range strings.Split(s.TrustedProxies, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		cidr := item
		if !strings.Contains(cidr, "/") {
			if ip := net.ParseIP(cidr); ip != nil && ip.To4() != nil {
				cidr += "/32"
			} else {
				cidr += "/128"
			}
		}
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			return nil, fmt.Errorf("trusted-proxies %q: want a CIDR such as 10.0.0.0/8, or an address", item)
		}
		out = append(out, n)
	}
	return out, nil
}

// Access are the allow and deny rules. A rule whose registry no upstream
// serves or mirrors is an error: it would guard nothing.
func (s *Settings) Access() (*access.Rules, error) {
	rules, err := access.Parse(s.Allow, s.Deny)
	if err != nil {
		return nil, err
	}
	routes, err := s.Routes()
	if err != nil {
		return rules, nil // reported as the upstreams' error
	}
	names := routes.AllNames()
	if bad := rules.Unserved(names); len(bad) > 0 {
		return nil, fmt.Errorf("access rules %q name a registry no upstream serves or mirrors (this cache serves %s); add --upstream or --upstream-mirror-of for it, or correct the rule",
			bad, strings.Join(names, ", "))
	}
	return rules, nil
}

// Duration is a time.Duration written as "1m30s" in files and flags.
type Duration time.Duration

// Std is the duration as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String implements flag.Value.
func (d *Duration) String() string { return time.Duration(*d).String() }

// Set implements flag.Value.
func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string ("90s", "1m").
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		s = string(b) // a bare 0 is a duration too
	}
	if err := d.Set(s); err != nil {
		return fmt.Errorf("want a duration such as \"90s\" or \"5m\": %w", err)
	}
	return nil
}

// Size is a number of bytes written as a Kubernetes quantity ("64Gi",
// "512Mi", "1000") in files and flags.
type Size int64

// String implements flag.Value.
func (s *Size) String() string { return resource.NewQuantity(int64(*s), resource.BinarySI).String() }

// Set implements flag.Value.
func (s *Size) Set(v string) error {
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return fmt.Errorf("want a size such as 512Mi or 64Gi: %w", err)
	}
	*s = Size(q.Value())
	return nil
}

// MarshalJSON writes the size as a quantity string.
func (s Size) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a quantity string or a plain number of bytes.
func (s *Size) UnmarshalJSON(b []byte) error {
	var v string
	if err := json.Unmarshal(b, &v); err != nil {
		v = string(b)
	}
	return s.Set(v)
}
