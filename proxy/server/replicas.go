package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/go-logr/logr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/depproxy/depproxy/proxy/cache"
	"github.com/depproxy/depproxy/proxy/peers"
	"github.com/depproxy/depproxy/proxy/registry"
	"github.com/depproxy/depproxy/proxy/settings"
)

// replicas is what a proxy with several replicas adds: who the others
// are, and how they prove themselves.
type replicas struct {
	config *settings.Replicas
	kube   dynamic.Interface // nil: a fixed list of replicas
	ring   *peers.Ring
	signer *peers.Signer
	tls    *tls.Config // how to check the others' HTTPS; nil for HTTP
	// known: the replica knows the others (its first list of the
	// endpoints is in); it is not ready before.
	known atomic.Bool
}

func newReplicas(cfg *settings.Replicas, key *ecdsa.PrivateKey, certs *certReloader) (*replicas, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	r := &replicas{config: cfg, ring: peers.NewRing(cfg.Self, cfg.Static), signer: peers.NewSigner(der)}
	if certs != nil {
		r.tls = certs.pinned()
	}
	if cfg.Service == "" {
		r.known.Store(true)
		return r, nil
	}
	kubeConfig, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("peer-service: %w", err)
	}
	if r.kube, err = dynamic.NewForConfig(kubeConfig); err != nil {
		return nil, fmt.Errorf("peer-service: %w", err)
	}
	if r.config.Namespace == "" {
		if r.config.Namespace, err = peers.PodNamespace(); err != nil {
			return nil, fmt.Errorf("peer-service: set --peer-namespace outside a pod: %w", err)
		}
	}
	return r, nil
}

// watch follows the headless Service's endpoints until ctx ends, when
// membership comes from Kubernetes.
func (r *replicas) watch(ctx context.Context, log logr.Logger) {
	if r == nil || r.kube == nil {
		return
	}
	peers.WatchEndpointSlices(ctx, r.kube, r.config.Namespace, r.config.Service, r.config.Deployment, r.ring, func() { r.known.Store(true) }, log)
}

// ready: a replica that does not know the others yet would download
// what they own; it takes no clients until it does.
func (r *replicas) ready() bool { return r == nil || r.known.Load() }

// collector reports how many replicas this one knows, itself included.
func (r *replicas) collector() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "depproxy_replicas",
		Help: "Replicas of this cache that this one knows of (ready ones, itself included): who owns what is decided among them.",
	}, func() float64 { return float64(len(r.ring.Members())) })
}

// replicaRequests marks requests another replica forwarded to this one,
// once their signature verifies, and proves this replica's answers to
// them; a request that claims to be one and is not (forged, replayed,
// meant for another replica) is refused, never served as an ordinary pull
// that could be forwarded on.
func replicaRequests(next http.Handler, signer *peers.Signer, self string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok, err := signer.Verify(r, self)
		switch {
		case err != nil:
			registry.WriteError(w, r, err)
			return
		case ok:
			// Served from the upstream, and counted by the replica
			// that forwarded it.
			r = r.WithContext(cache.Forwarded(r.Context()))
			var done func()
			w, done = signer.ProveAnswer(w, f)
			defer done()
		}
		next.ServeHTTP(w, r)
	})
}

// replicaAuth lets forwarded requests through: the replica that
// forwarded one checked its client's login.
type replicaAuth struct{ next registry.Authorizer }

func (a replicaAuth) Authorize(r *http.Request, repo string) (string, error) {
	if cache.IsForwarded(r.Context()) {
		return "replica", nil
	}
	return a.next.Authorize(r, repo)
}

// pinned verifies the other replicas by the certificate they all serve
// (the one Secret), not by a name: they are dialled by pod IP.
func (c *certReloader) pinned() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			own, _ := c.GetCertificate(nil)
			if len(cs.PeerCertificates) == 0 || len(own.Certificate) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, own.Certificate[0]) {
				return errors.New("the replica does not serve this replica's certificate")
			}
			return nil
		},
	}
}
