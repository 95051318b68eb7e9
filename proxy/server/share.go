package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"

	"github.com/depproxy/depproxy/proxy/peers"
	"github.com/depproxy/depproxy/proxy/report"
	"github.com/depproxy/depproxy/proxy/share"
)

// askHeader marks a node's blob request one replica asks the replica
// that keeps the blob's holders about: the answer is the decision only (a
// redirect to a holder, or 204: serve it yourself), never the bytes.
const askHeader = "Depproxy-Share-Ask"

// nodeSharing decides where nodes' blob requests go (--node-key). With
// several replicas, the one that owns a zone's key keeps the holders of
// every blob in that zone, so that every replica sends a zone's nodes to
// the same peers, and the one that decides knows all a node is sending
// (owned by blob, the sends of one node were counted by three replicas,
// each a third, and a node was given three times its share).
type nodeSharing struct {
	key     *share.Key
	tracker *share.Tracker
	tallies *share.Tallies // what the nodes that reach this replica say they hold
	ring    *peers.Ring    // nil: this is the only replica
	client  *http.Client
	log     logr.Logger
}

// nodeSharing makes the sharing of --node-key, if any.
func (a *assembly) nodeSharing(context.Context) error {
	if a.s.NodeKey == "" {
		return nil
	}
	secret, err := os.ReadFile(a.s.NodeKey)
	if err != nil {
		return fmt.Errorf("node-key: %w", err)
	}
	key, err := share.NewKey(secret)
	if err != nil {
		return fmt.Errorf("node-key %s: %w", a.s.NodeKey, err)
	}
	s := &nodeSharing{key: key, tracker: share.NewTracker(key, share.NewMetrics(a.metrics)), tallies: share.NewTallies(), log: a.log.WithName("share")}
	if a.peering != nil {
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.TLSClientConfig = a.peering.tls
		// A replica that does not connect at once is taken for away:
		// this one decides.
		transport.DialContext = (&net.Dialer{Timeout: 500 * time.Millisecond}).DialContext
		s.ring, s.client = a.peering.ring, &http.Client{Transport: transport, Timeout: 2 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	a.sharing = s
	return nil
}

// Share implements registry.Sharer.
func (s *nodeSharing) Share(w http.ResponseWriter, r *http.Request, d digest.Digest) (bool, error) {
	to, err := s.decide(r, d)
	switch {
	case err != nil:
		return false, err
	case to != "":
		http.Redirect(w, r, to, http.StatusTemporaryRedirect)
		return true, nil
	case r.Header.Get(askHeader) != "":
		w.WriteHeader(http.StatusNoContent)
		return true, nil
	}
	return false, nil
}

// Received implements registry.Sharer.
func (s *nodeSharing) Received(r *http.Request, size int64) { s.tracker.Received(r, size) }

// report adds what the nodes told this replica to the summary.
func (s *nodeSharing) report(sum *report.Summary) {
	nodes, t := s.tallies.Sum()
	sum.Sharing = &report.Sharing{Nodes: nodes, StoreBytes: t.Store, PeerBytes: t.Peer, CacheBytes: t.Cache}
}

func (s *nodeSharing) decide(r *http.Request, d digest.Digest) (string, error) {
	if r.Header.Get(share.NodeHeader) == "" {
		return "", nil
	}
	if r.Header.Get(askHeader) != "" {
		// The replica that asks kept the node's tally.
		return s.tracker.Send(r, d)
	}
	// A forged request costs the owner nothing.
	node, _, err := s.key.Check(r)
	if err != nil {
		return "", err
	}
	s.tallies.Record(node)
	if s.ring == nil {
		return s.tracker.Send(r, d)
	}
	owner := s.ring.Owner("share/zone/" + node.Zone)
	if owner == s.ring.Self() {
		return s.tracker.Send(r, d)
	}
	to, err := s.ask(r.Context(), r, owner)
	if err != nil && !errors.Is(err, share.ErrBadSignature) {
		// The owner is away: this replica decides, from what it knows.
		s.log.V(1).Info("the replica keeping a zone's holders does not answer; deciding here", "digest", d, "zone", node.Zone, "owner", owner, "error", err.Error())
		return s.tracker.Send(r, d)
	}
	return to, err
}

// ask has owner decide for the node's request r.
func (s *nodeSharing) ask(ctx context.Context, r *http.Request, owner string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, r.Method, owner+r.URL.RequestURI(), nil)
	if err != nil {
		return "", err
	}
	for _, h := range []string{share.NodeHeader, share.BadPeerHeader, share.BusyPeerHeader, share.HaveHeader, "Authorization"} {
		if v, ok := r.Header[h]; ok {
			req.Header[h] = v
		}
	}
	req.Header.Set(askHeader, "1")
	resp, err := s.client.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusTemporaryRedirect:
		return resp.Header.Get("Location"), nil
	case http.StatusNoContent:
		return "", nil
	case http.StatusUnauthorized:
		return "", share.ErrBadSignature
	}
	return "", fmt.Errorf("the replica answered %s", resp.Status)
}
