// Package credprovider runs the kubelet's credential provider plugins
// (ecr-credential-provider, GCP's auth-provider-gcp, acr-credential-
// provider) for a cache's upstreams, with the kubelet's config file and
// flags: a cloud registry is pulled through without a static Secret.
//
// A plugin is an executable in the bin dir, given a
// CredentialProviderRequest for an image on its standard input; its
// CredentialProviderResponse holds credentials by registry pattern,
// cached for the duration it says, per image, per registry or for all,
// as its cacheKeyType says.
package credprovider

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeletconfigv1 "k8s.io/kubelet/config/v1"
	credentialproviderv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"
	"sigs.k8s.io/yaml"
)

const (
	configAPIVersion = "kubelet.config.k8s.io/v1"
	pluginAPIVersion = "credentialprovider.kubelet.k8s.io/v1"
	// timeout bounds one run of a plugin.
	timeout = 30 * time.Second
)

// ErrPlugin is a plugin that failed, timed out, or answered nothing for
// the registry.
var ErrPlugin = errors.New("credential provider plugin")

// Providers are the plugins of one config file.
type Providers struct {
	binDir    string
	tokenDir  string // projected service-account tokens, by audience
	providers []*provider
	now       func() time.Time

	mu     sync.Mutex
	failed map[string]string // by host: why its plugin gave nothing, last time
}

// The token directory's layout: what the operator mounts, and what a
// person running the cache elsewhere provides.
const (
	tokenFile       = "token"                           // <dir>/<audience>/token
	annotationsFile = "serviceaccount-annotations.json" // <dir>/..., the ServiceAccount's annotations
)

type provider struct {
	cfg kubeletconfigv1.CredentialProvider

	mu    sync.Mutex
	cache map[string]cached // by the key the plugin's cacheKeyType makes
	// failed: the last run failed, and is not run again before then (a
	// registry's every request would run it).
	failed    time.Time
	failedErr error
}

// retryFailed is how long a failed plugin is not run again.
const retryFailed = 10 * time.Second

type cached struct {
	auth    map[string]credentialproviderv1.AuthConfig
	refresh time.Time // asked again from then on, before it expires
}

// Load reads the kubelet's CredentialProviderConfig at configPath, its
// plugins in binDir. A provider with tokenAttributes is given the
// service-account token for its audience from tokenDir/<audience>/token
// (a projected token, re-read on each run: the kubelet rotates it) and
// the annotations it asks for from tokenDir/serviceaccount-annotations.json.
func Load(configPath, binDir, tokenDir string) (*Providers, error) {
	raw, err := os.ReadFile(configPath)
	if err != nil {
		return nil, fmt.Errorf("image credential provider config: %w", err)
	}
	var cfg kubeletconfigv1.CredentialProviderConfig
	if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
		return nil, fmt.Errorf("image credential provider config %s: %w", configPath, err)
	}
	if cfg.APIVersion != configAPIVersion || cfg.Kind != "CredentialProviderConfig" {
		return nil, fmt.Errorf("image credential provider config %s: want apiVersion %s, kind CredentialProviderConfig", configPath, configAPIVersion)
	}
	p := &Providers{binDir: binDir, tokenDir: tokenDir, now: time.Now, failed: map[string]string{}}
	var errs []error
	for _, c := range cfg.Providers {
		switch {
		case c.Name == "" || strings.ContainsAny(c.Name, "/\\") || c.Name == "." || c.Name == "..":
			errs = append(errs, fmt.Errorf("provider %q: a name is a file in the bin dir", c.Name))
		case len(c.MatchImages) == 0:
			errs = append(errs, fmt.Errorf("provider %s: matchImages is required", c.Name))
		case c.APIVersion != pluginAPIVersion:
			errs = append(errs, fmt.Errorf("provider %s: apiVersion %q: this cache speaks %s", c.Name, c.APIVersion, pluginAPIVersion))
		case c.TokenAttributes != nil && tokenDir == "":
			errs = append(errs, fmt.Errorf("provider %s: tokenAttributes need a service-account token: set --image-credential-provider-token-dir", c.Name))
		case c.TokenAttributes != nil && c.TokenAttributes.ServiceAccountTokenAudience == "":
			errs = append(errs, fmt.Errorf("provider %s: tokenAttributes.serviceAccountTokenAudience is required", c.Name))
		}
		if st, err := os.Stat(filepath.Join(binDir, c.Name)); err != nil || st.IsDir() {
			errs = append(errs, fmt.Errorf("provider %s: no plugin %s in the bin dir", c.Name, filepath.Join(binDir, c.Name)))
		}
		p.providers = append(p.providers, &provider{cfg: c, cache: map[string]cached{}})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("image credential provider config %s: %w", configPath, err)
	}
	return p, nil
}

// For is the authenticator of an image an upstream pulls, nil when no
// provider gives it credentials. image is what the kubelet would ask
// for: host/repository with its tag or digest, host the one the
// credentials are sent to (the upstream URL's). registry is the
// upstream's name: where it differs from the host, the same provider's
// matchImages must match both, so that naming an upstream as a cloud
// registry never sends that cloud's token elsewhere. only, when set, is
// the one provider the upstream is bound to; else the first that
// matches, as the kubelet picks.
func (p *Providers) For(registry, only, image string) authn.Authenticator {
	if p == nil {
		return nil
	}
	host, rest, _ := strings.Cut(image, "/")
	named := registry + "/" + rest
	for _, pr := range p.providers {
		if only != "" && pr.cfg.Name != only {
			continue
		}
		if pr.matchesImage(image) && (registry == "" || registry == host || pr.matchesImage(named)) {
			return &plugin{p: p, pr: pr, host: host, image: image}
		}
	}
	return nil
}

// Has reports whether the config has a provider of that name.
func (p *Providers) Has(name string) bool {
	if p == nil {
		return false
	}
	for _, pr := range p.providers {
		if pr.cfg.Name == name {
			return true
		}
	}
	return false
}

func (pr *provider) matchesImage(image string) bool {
	for _, m := range pr.cfg.MatchImages {
		if matches(m, image) {
			return true
		}
	}
	return false
}

// plugin is one provider's credentials for one image.
type plugin struct {
	p     *Providers
	pr    *provider
	host  string
	image string
}

// Authorization runs the plugin unless its last answer for this image
// (or its registry, or all, as the answer said) is still fresh.
func (a *plugin) Authorization() (*authn.AuthConfig, error) {
	ac, err := a.authorization()
	a.p.mu.Lock()
	if err != nil {
		a.p.failed[a.host] = err.Error()
	} else {
		delete(a.p.failed, a.host)
	}
	a.p.mu.Unlock()
	return ac, err
}

// Failing are the hosts whose plugin failed the last time it was asked,
// and why: what the cache's status says.
func (p *Providers) Failing() map[string]string {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]string, len(p.failed))
	for h, e := range p.failed {
		out[h] = e
	}
	return out
}

func (a *plugin) authorization() (*authn.AuthConfig, error) {
	auth, err := a.pr.credentials(context.Background(), a.p, a.image)
	if err != nil {
		return nil, err
	}
	// The most specific pattern of the answer that matches the image
	// (a pattern may name a repository path, as the kubelet's keyring
	// takes it).
	best, bestLen := credentialproviderv1.AuthConfig{}, -1
	for pattern, c := range auth {
		if matches(pattern, a.image) && len(pattern) > bestLen {
			best, bestLen = c, len(pattern)
		}
	}
	if bestLen < 0 {
		return nil, fmt.Errorf("%w %s: no credentials for %s in its answer", ErrPlugin, a.pr.cfg.Name, a.image)
	}
	return &authn.AuthConfig{Username: best.Username, Password: best.Password}, nil
}

func (pr *provider) credentials(ctx context.Context, p *Providers, image string) (map[string]credentialproviderv1.AuthConfig, error) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	req, scope, err := pr.request(p.tokenDir, image)
	if err != nil {
		return nil, err
	}
	now := p.now()
	// As the kubelet looks: the image, then its registry, then all.
	registry, _, _ := strings.Cut(image, "/")
	for _, key := range []string{scope + "image:" + image, scope + "registry:" + registry, scope + "global"} {
		if c, ok := pr.cache[key]; ok && now.Before(c.refresh) {
			return c.auth, nil
		}
	}
	if now.Before(pr.failed) {
		return nil, pr.failedErr
	}
	resp, err := pr.run(ctx, p.binDir, req)
	if err != nil {
		pr.failed, pr.failedErr = now.Add(retryFailed), err
		return nil, err
	}
	d := time.Duration(0)
	if pr.cfg.DefaultCacheDuration != nil {
		d = pr.cfg.DefaultCacheDuration.Duration
	}
	if resp.CacheDuration != nil {
		d = resp.CacheDuration.Duration
	}
	var key string
	switch resp.CacheKeyType {
	case credentialproviderv1.ImagePluginCacheKeyType:
		key = scope + "image:" + image
	case credentialproviderv1.RegistryPluginCacheKeyType:
		key = scope + "registry:" + registry
	case credentialproviderv1.GlobalPluginCacheKeyType:
		key = scope + "global"
	default:
		// The kubelet refuses an answer without a cache key type.
		err := fmt.Errorf("%w %s for %s: its answer has cacheKeyType %q, want Image, Registry or Global", ErrPlugin, pr.cfg.Name, image, resp.CacheKeyType)
		pr.failed, pr.failedErr = now.Add(retryFailed), err
		return nil, err
	}
	if d <= 0 {
		return resp.Auth, nil // a duration of 0: not cached, as the kubelet does
	}
	pr.purge(now)
	// Asked again at 80% of the duration: credentials in use are never
	// the expired ones.
	pr.cache[key] = cached{auth: resp.Auth, refresh: now.Add(d * 8 / 10)}
	return resp.Auth, nil
}

// purge drops stale answers: with per-image keys, every image pulled
// would otherwise stay.
func (pr *provider) purge(now time.Time) {
	for k, c := range pr.cache {
		if !now.Before(c.refresh) {
			delete(pr.cache, k)
		}
	}
}

// request is what the plugin is asked for an image, and what its answer
// is cached under besides the image: with a token cached per token, the
// token's hash.
func (pr *provider) request(tokenDir, image string) (credentialproviderv1.CredentialProviderRequest, string, error) {
	req := credentialproviderv1.CredentialProviderRequest{
		TypeMeta: metav1.TypeMeta{Kind: "CredentialProviderRequest", APIVersion: pluginAPIVersion}, Image: image}
	ta := pr.cfg.TokenAttributes
	if ta == nil {
		return req, "", nil
	}
	token, err := os.ReadFile(filepath.Join(tokenDir, ta.ServiceAccountTokenAudience, tokenFile))
	if err != nil {
		return req, "", fmt.Errorf("%w %s: the service-account token for %s: %w", ErrPlugin, pr.cfg.Name, ta.ServiceAccountTokenAudience, err)
	}
	req.ServiceAccountToken = strings.TrimSpace(string(token))
	var annotations map[string]string
	if raw, err := os.ReadFile(filepath.Join(tokenDir, annotationsFile)); err == nil {
		if err := json.Unmarshal(raw, &annotations); err != nil {
			return req, "", fmt.Errorf("%w %s: %s: %w", ErrPlugin, pr.cfg.Name, annotationsFile, err)
		}
	}
	for _, k := range ta.RequiredServiceAccountAnnotationKeys {
		v, ok := annotations[k]
		if !ok {
			return req, "", fmt.Errorf("%w %s: the ServiceAccount has no annotation %s, which the provider requires", ErrPlugin, pr.cfg.Name, k)
		}
		if req.ServiceAccountAnnotations == nil {
			req.ServiceAccountAnnotations = map[string]string{}
		}
		req.ServiceAccountAnnotations[k] = v
	}
	for _, k := range ta.OptionalServiceAccountAnnotationKeys {
		if v, ok := annotations[k]; ok {
			if req.ServiceAccountAnnotations == nil {
				req.ServiceAccountAnnotations = map[string]string{}
			}
			req.ServiceAccountAnnotations[k] = v
		}
	}
	if ta.CacheType == kubeletconfigv1.TokenServiceAccountTokenCacheType {
		sum := sha256.Sum256(token)
		return req, hex.EncodeToString(sum[:8]) + "/", nil
	}
	return req, "sa/", nil
}

// run execs the plugin once. Its answer holds secrets, and so does its
// request when it carries a token: nothing of either is logged, and the
// plugin's standard error is cut short in errors.
func (pr *provider) run(ctx context.Context, binDir string, request credentialproviderv1.CredentialProviderRequest) (*credentialproviderv1.CredentialProviderResponse, error) {
	image := request.Image
	req, _ := json.Marshal(request)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, pr.cfg.Name), pr.cfg.Args...)
	cmd.Env = pluginEnv(pr.cfg.Env)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(req), &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		return nil, fmt.Errorf("%w %s for %s: %v: %s", ErrPlugin, pr.cfg.Name, image, err, msg)
	}
	var resp credentialproviderv1.CredentialProviderResponse
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil || resp.Kind != "CredentialProviderResponse" {
		return nil, fmt.Errorf("%w %s for %s: its answer is not a CredentialProviderResponse", ErrPlugin, pr.cfg.Name, image)
	}
	return &resp, nil
}

// passedEnv are the variables of the proxy's environment a plugin is
// given: where to find programs, a home, and how to reach its cloud.
// Nothing else: the proxy's own secrets (the storage's
// AWS_ACCESS_KEY_ID, say, which an AWS SDK plugin would sign with)
// stay with the proxy.
var passedEnv = []string{"PATH", "HOME", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}

// pluginEnv is a plugin's environment: passedEnv, and its config's env.
func pluginEnv(extra []kubeletconfigv1.ExecEnvVar) []string {
	var env []string
	for _, k := range passedEnv {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	for _, e := range extra {
		env = append(env, e.Name+"="+e.Value)
	}
	return env
}

// matches is the kubelet's rule for matchImages and the answer's keys: a
// host whose dot-separated labels each match the pattern's (path.Match
// globs: *.dkr.ecr.*.amazonaws.com), the same port if the pattern gives
// one, and the pattern's path, if any, a prefix of the image's.
func matches(pattern, image string) bool {
	pattern = strings.TrimPrefix(strings.TrimPrefix(pattern, "https://"), "http://")
	pHost, pPath, _ := strings.Cut(pattern, "/")
	iHost, iPath, _ := strings.Cut(image, "/")
	pName, pPort, pHasPort := strings.Cut(pHost, ":")
	iName, iPort, _ := strings.Cut(iHost, ":")
	if pHasPort && pPort != iPort {
		return false
	}
	pLabels, iLabels := strings.Split(pName, "."), strings.Split(iName, ".")
	if len(pLabels) != len(iLabels) {
		return false
	}
	for i := range pLabels {
		if ok, err := path.Match(pLabels[i], iLabels[i]); err != nil || !ok {
			return false
		}
	}
	return pPath == "" || strings.HasPrefix(iPath, pPath)
}
