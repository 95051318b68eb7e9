package settings

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/depproxy/depproxy/proxy/registryname"
)

// Replicas is how a replica finds the others: a fixed list, or the
// ready endpoints of a headless Service.
type Replicas struct {
	// Self is this replica's URL (--advertise).
	Self string
	// Static lists every replica, Self among them (--peers).
	Static []string
	// Service and Namespace name the headless Service whose
	// EndpointSlices list the replicas (--peer-service).
	Service, Namespace string
	// Deployment is the one whose pods alone are replicas
	// (--peer-deployment).
	Deployment string
}

// Replicas returns how this replica finds the others; nil when it runs
// alone.
func (s *Settings) Replicas() (*Replicas, error) { return s.replicas(true) }

// replicas checks the replicas' settings; self: this is a replica, which
// has its own --advertise (Validate checks the rest without it: cleanup
// reads the same file, and the operator renders it without one).
func (s *Settings) replicas(self bool) (*Replicas, error) {
	if s.Peers == "" && s.PeerService == "" {
		if s.Advertise != "" {
			return nil, errors.New("advertise: set it together with --peers or --peer-service")
		}
		return nil, nil
	}
	if s.Peers != "" && s.PeerService != "" {
		return nil, errors.New("peers: set --peers or --peer-service, not both")
	}
	if s.PeerService != "" && s.PeerDeployment == "" {
		return nil, errors.New("peer-service: set --peer-deployment too, the Deployment whose pods are the replicas: no other pod may join them")
	}
	if s.TokenKey == "" {
		return nil, errors.New("peers: replicas prove who they are to each other with the token key: set --token-key, the same file on every replica")
	}
	r := &Replicas{Service: s.PeerService, Namespace: s.PeerNamespace, Deployment: s.PeerDeployment}
	for _, p := range strings.Split(s.Peers, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		u, err := replicaURL("peers", p)
		if err != nil {
			return nil, err
		}
		r.Static = append(r.Static, u)
	}
	if !self && s.Advertise == "" {
		return r, nil
	}
	var err error
	if r.Self, err = replicaURL("advertise", s.Advertise); err != nil {
		return nil, err
	}
	if s.Peers != "" && !slices.Contains(r.Static, r.Self) {
		return nil, fmt.Errorf("peers: --advertise %s is not among them; list every replica, this one included", r.Self)
	}
	return r, nil
}

// replicaURL checks a replica's address: scheme and host, nothing else,
// written without a trailing slash so that every replica spells it alike.
func replicaURL(flag, raw string) (string, error) {
	u, ok := registryname.ServerURL(raw)
	if !ok {
		return "", fmt.Errorf("%s %q: want a replica's URL like http://10.0.0.1:5000", flag, raw)
	}
	return u.Scheme + "://" + u.Host, nil
}
