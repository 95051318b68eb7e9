package peers

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/manifest"
	"github.com/depproxy/depproxy/proxy/upstream"
)

// Upstream is an upstream seen through the replicas: a cold blob or
// manifest comes from the replica that owns it, which downloads it once
// for everyone (its single-flight fill) and stores it; this replica
// streams it on without storing it again. What this replica owns, what a
// replica forwarded to it, and everything else (tags lists, referrers,
// blob HEADs) go to the upstream directly.
type Upstream struct {
	cache.Upstream // the upstream itself
	registry       string
	ring           *Ring
	signer         *Signer
	client         *http.Client
	log            logr.Logger
	metrics        *Metrics
}

// Metrics count where cold objects came from.
type Metrics struct{ fetches *prometheus.CounterVec }

// NewMetrics builds the replicas' metrics and registers them on r.
func NewMetrics(r prometheus.Registerer) *Metrics {
	m := &Metrics{fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "depproxy_replica_fetches_total",
		Help: "Cold blobs and manifests by where this replica got them: owner (another replica, which downloads it), upstream (this replica owns it, or was forwarded the request), fallback (the owners did not answer), and unanswered (a replica that did not answer).",
	}, []string{"upstream", "from"})}
	r.MustRegister(m.fetches)
	return m
}

func (u *Upstream) count(from string) {
	if u.metrics != nil {
		u.metrics.fetches.WithLabelValues(u.registry, from).Inc()
	}
}

// NewUpstream returns direct seen through ring. registry is the name
// the replicas' registry routes know direct by (containerd's ?ns=).
// tlsConfig, when the replicas serve HTTPS, is how they are verified.
func NewUpstream(direct cache.Upstream, registry string, ring *Ring, signer *Signer, tlsConfig *tls.Config, m *Metrics, log logr.Logger) *Upstream {
	return &Upstream{Upstream: direct, registry: registry, ring: ring, signer: signer, log: log, metrics: m,
		client: &http.Client{Transport: replicaTransport(tlsConfig)}}
}

// replicaTransport fails fast on a replica that is gone, so the next
// one takes over quickly; it has no response deadline, because the owner
// may be waiting on the upstream itself.
func replicaTransport(tlsConfig *tls.Config) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false, // one blob per connection: no head-of-line blocking between blobs
	}
}

// errTryNext: the replica could not answer; the next in line may.
var errTryNext = errors.New("replica did not answer")

// GetBlob streams a blob from its owner. The owner's answer is proven
// before it is used; its bytes are checked against the digest by the
// fill that reads them.
func (u *Upstream) GetBlob(ctx context.Context, repo string, d digest.Digest) (*upstream.Blob, error) {
	var blob *upstream.Blob
	err := u.forward(ctx, BlobKey(u.registry, d), func(owner string) error {
		resp, _, err := u.send(ctx, http.MethodGet, owner, repo, "blobs/"+d.String(), nil, false, 0)
		if err != nil {
			return err
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != d.String() {
			resp.Body.Close()
			return fmt.Errorf("%w: %s answered blob %s with %s", errTryNext, owner, d, got)
		}
		blob = &upstream.Blob{Body: resp.Body, Size: resp.ContentLength, FromReplica: true}
		return nil
	}, func() (err error) {
		blob, err = u.Upstream.GetBlob(ctx, repo, d)
		return err
	})
	return blob, err
}

// GetManifest gets a manifest from the replica that owns its tag (or
// digest): one upstream GET for every replica. The owner's answer, body
// included, is proven before anything uses or stores it.
func (u *Upstream) GetManifest(ctx context.Context, repo string, ref manifest.Ref, accept []string, maxSize int64) (*upstream.Manifest, error) {
	var m *upstream.Manifest
	err := u.forward(ctx, ManifestKey(u.registry, repo, ref), func(owner string) error {
		resp, body, err := u.send(ctx, http.MethodGet, owner, repo, "manifests/"+ref.String(), accept, true, maxSize)
		if err != nil {
			return err
		}
		m = &upstream.Manifest{Descriptor: upstream.Describe(resp), Body: body, FromReplica: true}
		return nil
	}, func() (err error) {
		m, err = u.Upstream.GetManifest(ctx, repo, ref, accept, maxSize)
		return err
	})
	return m, err
}

// HeadManifest asks the owner of a tag where it points: the owner
// answers from its own recheck interval, so the upstream sees one HEAD
// per interval whatever the number of replicas.
func (u *Upstream) HeadManifest(ctx context.Context, repo string, ref manifest.Ref, accept []string) (upstream.Descriptor, error) {
	var d upstream.Descriptor
	err := u.forward(ctx, ManifestKey(u.registry, repo, ref), func(owner string) error {
		resp, _, err := u.send(ctx, http.MethodHead, owner, repo, "manifests/"+ref.String(), accept, true, 0)
		if err != nil {
			return err
		}
		d = upstream.Describe(resp)
		return nil
	}, func() (err error) {
		d, err = u.Upstream.HeadManifest(ctx, repo, ref, accept)
		return err
	})
	return d, err
}

// BlobKey is what decides a blob's owner: its digest, whatever the
// repository (one blob, one download).
func BlobKey(registry string, d digest.Digest) string { return registry + " blob " + d.String() }

// ManifestKey is what decides a manifest's owner: the tag, or the digest,
// within its repository.
func ManifestKey(registry, repo string, ref manifest.Ref) string {
	if d, ok := ref.Digest(); ok {
		return registry + " manifest " + repo + "@" + d.String()
	}
	return registry + " manifest " + repo + ":" + ref.Tag()
}

// forward tries the owners of key in order; when this replica's turn
// comes, or the request was itself forwarded, or no replica answers, the
// upstream is asked directly.
func (u *Upstream) forward(ctx context.Context, key string, viaReplica func(owner string) error, direct func() error) error {
	if cache.IsForwarded(ctx) {
		u.count("upstream")
		return direct()
	}
	from := "upstream"
	for _, owner := range u.ring.Owners(key) {
		if owner == u.ring.Self() {
			break
		}
		err := viaReplica(owner)
		if !errors.Is(err, errTryNext) {
			u.count("owner")
			return err
		}
		u.count("unanswered")
		from = "fallback"
		u.log.Info("replica did not answer; trying the next", "replica", owner, "key", key, "error", err.Error())
	}
	u.count(from)
	return direct()
}

// send makes a signed request to a replica and proves its answer. With
// bindBody the body (at most maxSize bytes) is read, proven and returned,
// and the response's body is closed; else the body is left to stream.
// Only a proven answer that says something about the object (200, or an
// error the owner's upstream gave) returns without errTryNext.
func (u *Upstream) send(ctx context.Context, method, owner, repo, path string, accept []string, bindBody bool, maxSize int64) (*http.Response, []byte, error) {
	target := owner + "/v2/" + repo + "/" + path + "?ns=" + url.QueryEscape(u.registry)
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errTryNext, err)
	}
	for _, a := range accept {
		req.Header.Add("Accept", a)
	}
	f := u.signer.Sign(req, owner, bindBody)
	resp, err := u.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			u.ring.markDown(owner)
		}
		return nil, nil, fmt.Errorf("%w: %w", errTryNext, err)
	}
	var body []byte
	if bindBody {
		body, err = io.ReadAll(io.LimitReader(resp.Body, maxSize+1))
		resp.Body.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", errTryNext, err)
		}
		if int64(len(body)) > maxSize {
			// An owner keeps to the same limit: this answer cannot be
			// one of a replica's, and is never proven.
			u.ring.markDown(owner)
			return nil, nil, fmt.Errorf("%w: %s answered more than %d bytes", errTryNext, owner, maxSize)
		}
	}
	if err := u.signer.verifyAnswer(f, resp, body); err != nil {
		// Not a replica of this cache, or not this request's answer:
		// nothing of it is used, and the replica is passed over.
		resp.Body.Close()
		u.ring.markDown(owner)
		return nil, nil, fmt.Errorf("%w: %s: %w", errTryNext, owner, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return resp, body, nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden ||
		resp.StatusCode == http.StatusTooManyRequests:
		// The upstream's own answer, passed on by the owner.
		resp.Body.Close()
		return nil, nil, &upstream.StatusError{StatusCode: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	default:
		// 401: the replicas' keys differ; 5xx: the owner could not
		// get it. Either way another replica, or the upstream, may.
		resp.Body.Close()
		return nil, nil, fmt.Errorf("%w: %s answered %s", errTryNext, owner, resp.Status)
	}
}
