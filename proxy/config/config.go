// Package config is the configuration of `depproxy serve`: one set of
// settings, each both a command-line flag and a key of the YAML --config
// file, with the same name. The operator renders the file.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"sigs.k8s.io/yaml"
)

// Serve is the configuration of `depproxy serve`.
type Serve struct {
	Listen            string
	Upstream          string
	Storage           string
	S3Endpoint        string
	S3Insecure        bool
	S3Region          string
	S3Redirect        bool
	RecheckInterval   time.Duration
	PrefetchPlatforms string
	SummaryInterval   time.Duration
	Users             string
	TokenKey          string
	ExternalURL       string
	Tenant            string
	UpstreamCreds     string
	UpstreamMirrorOf  string
	LogLevel          int
}

// Flags registers the settings on fs and returns them with their defaults.
func Flags(fs *flag.FlagSet) *Serve {
	s := &Serve{}
	fs.StringVar(&s.Listen, "listen", ":5000", "address to serve the registry API, /metrics, /healthz and /readyz on")
	fs.StringVar(&s.Upstream, "upstream", "https://registry-1.docker.io", "registry to pull through (scheme and host)")
	fs.StringVar(&s.Storage, "storage", "./data", "where the cache lives: a directory, or s3://BUCKET/PREFIX (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
	fs.StringVar(&s.S3Endpoint, "s3-endpoint", "", "S3 endpoint host:port (MinIO); empty for AWS")
	fs.BoolVar(&s.S3Insecure, "s3-insecure", false, "talk plain HTTP to the S3 endpoint")
	fs.StringVar(&s.S3Region, "s3-region", "", "S3 region, if the endpoint needs one")
	fs.BoolVar(&s.S3Redirect, "s3-redirect", false, "send clients of cached blobs to a presigned S3 URL instead of streaming them; only where clients can reach the S3 endpoint")
	fs.DurationVar(&s.RecheckInterval, "recheck-interval", 0, "how long a tag checked with the upstream is served without asking again; 0 asks (one HEAD) on every tag request")
	fs.StringVar(&s.PrefetchPlatforms, "prefetch-platforms", "", "comma-separated platforms (linux/amd64,linux/arm64/v8) whose images are cached as soon as their index is")
	fs.DurationVar(&s.SummaryInterval, "summary-interval", 5*time.Minute, "how long a scan of the whole storage for /status/summary is reused (a scan lists every object)")
	fs.StringVar(&s.Users, "users", "", "who may log in: an htpasswd file (bcrypt) or a directory with a file per user holding a password or bcrypt hash; without it, pulls are anonymous")
	fs.StringVar(&s.TokenKey, "token-key", "", "PEM ECDSA P-256 key that signs tokens; without it a key is generated at start (tokens then die with the process)")
	fs.StringVar(&s.ExternalURL, "external-url", "", "where clients reach this proxy (e.g. https://cache.example); the token realm is under it. Default: the request's host")
	fs.StringVar(&s.Tenant, "tenant", "depproxy", "the tenant's name: the token audience and the challenge's service; a token of another tenant is refused")
	fs.StringVar(&s.UpstreamCreds, "upstream-credentials", "", "credentials for the upstream: a directory (a mounted Secret) with .dockerconfigjson, or username and password files; re-read when they change")
	fs.StringVar(&s.UpstreamMirrorOf, "upstream-mirror-of", "", "comma-separated registries (containerd's ?ns=) the upstream stands in for besides its own host, e.g. docker.io for an internal Docker Hub mirror")
	fs.IntVar(&s.LogLevel, "log-level", 0, "log verbosity: 0 events, 1 also each request")
	return s
}

// Load parses args into fs. A --config file fills every setting that the
// command line does not set; its keys are the flag names. Unknown keys
// are errors, so that a typo does not silently fall back to a default.
func Load(fs *flag.FlagSet, args []string) error {
	configFile := fs.String("config", "", "YAML file whose keys are these flags' names; flags on the command line win")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configFile == "" {
		return nil
	}
	raw, err := os.ReadFile(*configFile)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		return fmt.Errorf("config file %s: %w", *configFile, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	for key, v := range values {
		if fs.Lookup(key) == nil || key == "config" {
			errs = append(errs, fmt.Errorf("config file %s: unknown key %q", *configFile, key))
			continue
		}
		if set[key] {
			continue
		}
		if err := fs.Set(key, fmt.Sprint(v)); err != nil {
			errs = append(errs, fmt.Errorf("config file %s: %s: %w", *configFile, key, err))
		}
	}
	return errors.Join(errs...)
}
