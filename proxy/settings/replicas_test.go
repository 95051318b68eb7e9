package settings

import (
	"reflect"
	"strings"
	"testing"
)

// How a replica finds the others, and what a person is told when the
// flags do not make sense together.
func TestReplicas(t *testing.T) {
	s := Defaults()
	if r, err := s.Replicas(); r != nil || err != nil {
		t.Fatalf("alone: %+v %v", r, err)
	}
	s.TokenKey = "/key"
	s.Peers, s.Advertise = "http://10.0.0.1:5000, http://10.0.0.2:5000/", "http://10.0.0.2:5000"
	got, err := s.Replicas()
	if err != nil {
		t.Fatal(err)
	}
	want := &Replicas{Self: "http://10.0.0.2:5000", Static: []string{"http://10.0.0.1:5000", "http://10.0.0.2:5000"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	s.Peers, s.PeerService, s.PeerNamespace, s.PeerDeployment = "", "cache-peers", "team-a", "cache"
	if got, err = s.Replicas(); err != nil || got.Service != "cache-peers" || got.Namespace != "team-a" || got.Deployment != "cache" {
		t.Fatalf("service: %+v %v", got, err)
	}
	for _, bad := range []struct {
		peers, service, advertise, key, want string
	}{
		{"", "", "http://a:5000", "/key", "together with --peers or --peer-service"},
		{"http://a:5000", "svc", "http://a:5000", "/key", "not both"},
		{"http://a:5000,http://b:5000", "", "http://c:5000", "/key", "not among them"},
		{"http://a:5000", "", "http://a:5000", "", "set --token-key"},
		{"a:5000", "", "http://a:5000", "/key", "want a replica's URL"},
		{"", "svc", "", "/key", "advertise"},
		{"http://a:5000/v2", "", "http://a:5000", "/key", "want a replica's URL"},
	} {
		s := Defaults()
		s.Peers, s.PeerService, s.Advertise, s.TokenKey, s.PeerDeployment = bad.peers, bad.service, bad.advertise, bad.key, "cache"
		if _, err := s.Replicas(); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%+v: got %v, want an error saying %q", bad, err, bad.want)
		}
	}
	s.PeerDeployment = ""
	if _, err := s.Replicas(); err == nil || !strings.Contains(err.Error(), "--peer-deployment") {
		t.Errorf("--peer-service without --peer-deployment: %v", err)
	}
}
