// Package upstream is the client to the registry a cache pulls through.
//
// go-containerregistry's transport does the registry handshake: the /v2/
// ping, the Bearer token challenge and its refresh, and sending the token
// only to the registry's own host, never to the CDN a blob redirects to.
// This package adds what a cache needs on top: raw manifest bytes, blob
// streams, and errors that keep the upstream's status.
package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	"k8s.io/utils/lru"

	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/registryname"
)

// ErrUnreachable wraps every failure to get an answer from the upstream:
// refused, reset, timed out, or an answer that is not a registry's.
var ErrUnreachable = errors.New("upstream unreachable")

// ErrNotRegistry is an answer that is not a registry's: an HTML page (a
// captive portal, an error page) where a manifest should be.
var ErrNotRegistry = errors.New("the upstream answered with an HTML page")

// ErrNotFound matches a 404 from the upstream (errors.Is).
var ErrNotFound = errors.New("not found upstream")

// StatusError is an upstream answer with an error status.
type StatusError struct {
	StatusCode int
	// RetryAfter is the upstream's Retry-After header, if any.
	RetryAfter string
	// Code is the first OCI error code of a 404's body, if it has one
	// (NAME_UNKNOWN: the repository does not exist).
	Code string
}

// NameUnknown reports whether err is the upstream saying the repository
// does not exist (404 NAME_UNKNOWN).
func NameUnknown(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.StatusCode == http.StatusNotFound && se.Code == "NAME_UNKNOWN"
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("upstream answered %d %s", e.StatusCode, http.StatusText(e.StatusCode))
}

// Is makes a 404 match ErrNotFound.
func (e *StatusError) Is(target error) bool {
	return target == ErrNotFound && e.StatusCode == http.StatusNotFound
}

// Descriptor is what a manifest HEAD tells.
type Descriptor struct {
	MediaType string
	// Digest is empty when the upstream did not say, or said something
	// that is not a digest.
	Digest digest.Digest
	Size   int64
}

// Describe reads a manifest answer's headers.
func Describe(resp *http.Response) Descriptor {
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		d = ""
	}
	return Descriptor{MediaType: resp.Header.Get("Content-Type"), Digest: d, Size: resp.ContentLength}
}

// Manifest is a manifest body exactly as the upstream sent it.
type Manifest struct {
	Descriptor
	Body []byte
	// FromReplica: another replica of the cache got it from the
	// upstream, and stores it.
	FromReplica bool
}

// Blob is an open blob stream; the caller closes Body.
type Blob struct {
	Body io.ReadCloser
	// Size is -1 when the upstream did not say.
	Size int64
	// FromReplica: another replica of the cache is downloading it from
	// the upstream, and stores it.
	FromReplica bool
}

// Client talks to one upstream registry. It is safe for concurrent use.
type Client struct {
	base     *url.URL
	registry name.Registry
	auth     authn.Authenticator
	// authFor, if set, gives the credentials of an image instead of
	// auth, where it has some (a credential provider plugin's).
	authFor   func(image string) authn.Authenticator
	transport http.RoundTripper
	name      string

	// transports holds the authenticated transport of recently used
	// repositories (tokens are scoped to one), at most maxTransports.
	transports *lru.Cache

	limits  rateLimit
	reserve int
	metrics *Metrics
}

// maxTransports bounds the repositories whose token handshake is kept:
// a client asking for ever new names costs a new token each, never
// memory without end.
const maxTransports = 1024

// Option configures a Client.
type Option func(*Client)

// WithCredentials sets where the upstream's credentials come from, in
// this order: its own, a mounted Secret in dir (see FileCredentials),
// when it has one, and nothing else then; else, per repository, what
// plugins give (credential provider plugins: nil where they have none),
// given the image as the kubelet names it to a plugin: the host the
// credentials are sent to and the repository; else none. A repository's
// token handshake is kept (see transportFor), so plugins are asked again
// when the upstream wants new credentials, not per request.
func WithCredentials(dir string, plugins func(image string) authn.Authenticator) Option {
	return func(c *Client) {
		if dir != "" {
			c.auth, c.authFor = FileCredentials(dir, c.registry.RegistryStr()), nil
			return
		}
		c.authFor = plugins
	}
}

// WithRegistry names the registry this upstream is for clients, where
// its URL does not say (docker.io for an internal mirror of Docker Hub at
// http://mirror.internal:5000): in metrics and logs.
func WithRegistry(name string) Option { return func(c *Client) { c.name = name } }

// WithRateLimitReserve keeps this many requests of the upstream's rate
// limit for content that is not cached: once no more are left, cached
// tags are served without asking (see Throttled).
func WithRateLimitReserve(n int) Option { return func(c *Client) { c.reserve = n } }

// WithTransport replaces the base HTTP transport.
func WithTransport(t http.RoundTripper) Option { return func(c *Client) { c.transport = t } }

// New returns a client for the registry at rawURL (scheme and host; a
// plain-http URL is allowed, for registries on a private network).
func New(rawURL string, opts ...Option) (*Client, error) {
	u, ok := registryname.ServerURL(rawURL)
	if !ok {
		return nil, fmt.Errorf("upstream %q: want a URL like %s", rawURL, registryname.DockerHubURL)
	}
	var nameOpts []name.Option
	if u.Scheme == "http" {
		nameOpts = append(nameOpts, name.Insecure)
	}
	host := u.Host
	if registryname.IsDockerHub(host) {
		host = name.DefaultRegistry
	}
	reg, err := name.NewRegistry(host, nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", rawURL, err)
	}
	// Requests go to the host go-containerregistry knows the registry by
	// (index.docker.io for Docker Hub): it attaches tokens only there.
	u.Host = reg.RegistryStr()
	c := &Client{
		base:       u,
		registry:   reg,
		auth:       authn.Anonymous,
		transport:  defaultTransport(),
		transports: lru.New(maxTransports),
		limits:     rateLimit{limit: -1},
		reserve:    DefaultRateLimitReserve,
	}
	for _, o := range opts {
		o(c)
	}
	// A handshake per repository pings /v2/ first; the answer is the same
	// for every repository, so it is asked once a minute, not once a name.
	c.transport = &pingCache{inner: observed{inner: c.transport, client: c}, ttl: time.Minute}
	return c, nil
}

// defaultTransport fails fast on a dead upstream so that a cached copy can
// be served instead of making the client wait.
func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.ResponseHeaderTimeout = 30 * time.Second
	t.MaxIdleConnsPerHost = 64
	return t
}

// label names the upstream in metrics: its registry.
func (c *Client) label() string {
	if c.name != "" {
		return c.name
	}
	return c.registry.RegistryStr()
}

// HeadManifest asks for a manifest's digest without downloading it
// (free of rate limits on Docker Hub).
func (c *Client) HeadManifest(ctx context.Context, repo string, ref manifest.Ref, accept []string) (Descriptor, error) {
	resp, err := c.do(ctx, http.MethodHead, repo, "manifests/"+ref.String(), http.Header{"Accept": {strings.Join(accept, ", ")}})
	if err != nil {
		return Descriptor{}, err
	}
	resp.Body.Close()
	if err := registryAnswer(resp); err != nil {
		return Descriptor{}, err
	}
	return Describe(resp), nil
}

// The answers over their limit: each its own error, so that a client
// is told which (and how to ask for less, where it can).
var (
	// ErrTooLarge is returned for a manifest body over the limit.
	ErrTooLarge = errors.New("manifest too large")
	// ErrTagsTooLarge is returned for a tags/list answer over the limit.
	ErrTagsTooLarge = errors.New("tags list too large")
	// ErrReferrersTooLarge is returned for a referrers index over the
	// limit.
	ErrReferrersTooLarge = errors.New("referrers index too large")
)

// GetManifest downloads a manifest, refusing bodies over maxSize.
func (c *Client) GetManifest(ctx context.Context, repo string, ref manifest.Ref, accept []string, maxSize int64) (*Manifest, error) {
	resp, err := c.do(ctx, http.MethodGet, repo, "manifests/"+ref.String(), http.Header{"Accept": {strings.Join(accept, ", ")}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := registryAnswer(resp); err != nil {
		return nil, err
	}
	if resp.ContentLength > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, resp.ContentLength, maxSize)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading manifest: %w", ErrUnreachable, err)
	}
	if int64(len(body)) > maxSize {
		return nil, fmt.Errorf("%w: over %d bytes", ErrTooLarge, maxSize)
	}
	desc := Describe(resp)
	desc.Size = int64(len(body))
	return &Manifest{Descriptor: desc, Body: body}, nil
}

// GetBlob opens a blob stream. Redirects (Docker Hub sends blobs from a
// CDN) are followed without the registry's token.
func (c *Client) GetBlob(ctx context.Context, repo string, d digest.Digest) (*Blob, error) {
	resp, err := c.do(ctx, http.MethodGet, repo, "blobs/"+d.String(), nil)
	if err != nil {
		return nil, err
	}
	if err := blobAnswer(resp); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return &Blob{Body: resp.Body, Size: resp.ContentLength}, nil
}

// ErrRangeIgnored: the upstream answered a range with the whole blob (it
// serves no ranges).
var ErrRangeIgnored = fmt.Errorf("%w: the upstream answered a range with the whole blob", ErrUnreachable)

// GetBlobRange opens a blob's bytes from off up to end (exclusive): an
// upstream answer of 206 for that range, or an error.
func (c *Client) GetBlobRange(ctx context.Context, repo string, d digest.Digest, off, end int64) (*Blob, error) {
	resp, err := c.do(ctx, http.MethodGet, repo, "blobs/"+d.String(), http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, end-1)}})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusPartialContent {
		resp.Body.Close()
		if err := blobAnswer(resp); err != nil {
			return nil, err
		}
		return nil, ErrRangeIgnored
	}
	var start int64
	if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start); err != nil || start != off {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: the upstream answered bytes=%d-%d with Content-Range %q", ErrUnreachable, off, end-1, resp.Header.Get("Content-Range"))
	}
	// Never more than was asked for, whatever the upstream sends.
	body := struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, end-off), resp.Body}
	return &Blob{Body: body, Size: end - off}, nil
}

// HeadBlob returns a blob's size.
func (c *Client) HeadBlob(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	resp, err := c.do(ctx, http.MethodHead, repo, "blobs/"+d.String(), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if err := blobAnswer(resp); err != nil {
		return 0, err
	}
	return resp.ContentLength, nil
}

// Tags returns the repository's tags/list answer, passing the query (n,
// last) through.
func (c *Client) Tags(ctx context.Context, repo string, query url.Values, maxSize int64) ([]byte, error) {
	return c.getSmall(ctx, repo, "tags/list", query, maxSize, ErrTagsTooLarge)
}

// Referrers returns the OCI referrers index of a digest; ErrNotFound where
// the upstream has no referrers API.
func (c *Client) Referrers(ctx context.Context, repo string, d digest.Digest, maxSize int64) ([]byte, error) {
	return c.getSmall(ctx, repo, "referrers/"+d.String(), nil, maxSize, ErrReferrersTooLarge)
}

// getSmall fetches a small JSON document under the repository; tooLarge
// is the error for one over maxSize.
func (c *Client) getSmall(ctx context.Context, repo, path string, query url.Values, maxSize int64, tooLarge error) ([]byte, error) {
	resp, err := c.doQuery(ctx, http.MethodGet, repo, path, query, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := registryAnswer(resp); err != nil {
		return nil, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	if int64(len(body)) > maxSize {
		return nil, fmt.Errorf("%w: over %d bytes", tooLarge, maxSize)
	}
	return body, nil
}

func (c *Client) do(ctx context.Context, method, repo, path string, header http.Header) (*http.Response, error) {
	return c.doQuery(ctx, method, repo, path, nil, header)
}

// doQuery sends one request for /v2/<repo>/<path>?<query>.
func (c *Client) doQuery(ctx context.Context, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	rt, err := c.transportFor(ctx, repo)
	if err != nil {
		return nil, err
	}
	u := *c.base
	u.Path = "/v2/" + repo + "/" + path
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("upstream request: %w", err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Transport: rt, CheckRedirect: CheckRedirect}).Do(req)
	if err != nil {
		c.forget(repo, rt)
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return resp, nil
}

// transportFor returns the authenticated transport for one repository,
// doing the ping and token handshake once and reusing it after.
func (c *Client) transportFor(ctx context.Context, repo string) (http.RoundTripper, error) {
	if rt, ok := c.transports.Get(repo); ok {
		return rt.(http.RoundTripper), nil
	}
	scope := c.registry.Repo(repo).Scope(transport.PullScope)
	rt, err := transport.NewWithContext(ctx, c.registry, c.authOf(repo), c.transport, []string{scope})
	if err != nil {
		var terr *transport.Error
		if errors.As(err, &terr) {
			return nil, &StatusError{StatusCode: terr.StatusCode}
		}
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	c.transports.Add(repo, rt)
	return rt, nil
}

// authOf is the authenticator of a repository: authFor's for the
// repository as the kubelet names an image to its plugins (host and
// repository, no tag or digest: its keyring looks up the repository to
// pull), else the client's own.
func (c *Client) authOf(repo string) authn.Authenticator {
	if c.authFor == nil {
		return c.auth
	}
	if a := c.authFor(c.registry.RegistryStr() + "/" + repo); a != nil {
		return a
	}
	return c.auth
}

// forget drops a transport after a network failure, so the next request
// does the handshake again (the upstream may have moved or restarted).
func (c *Client) forget(repo string, rt http.RoundTripper) {
	if got, ok := c.transports.Get(repo); ok && got == rt {
		c.transports.Remove(repo)
	}
	c.transport.(*pingCache).forget()
}

// registryAnswer turns anything but a registry's success into an error. A
// 200 with an HTML body is a captive portal or an error page, not a
// manifest.
func registryAnswer(resp *http.Response) error {
	if resp.StatusCode != http.StatusOK {
		se := &StatusError{StatusCode: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
		if resp.StatusCode == http.StatusNotFound {
			se.Code = errorCode(resp.Body)
		}
		return se
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "text/html" {
		return fmt.Errorf("%w: %w", ErrUnreachable, ErrNotRegistry)
	}
	return nil
}

// errorCode is the first code of an OCI error body ("" for anything
// else), read no further than a few KiB.
func errorCode(body io.Reader) string {
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.NewDecoder(io.LimitReader(body, 4<<10)).Decode(&e) != nil || len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Code
}

func blobAnswer(resp *http.Response) error {
	if resp.StatusCode != http.StatusOK {
		return &StatusError{StatusCode: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	}
	return nil
}
