package settings

import (
	"reflect"
	"strings"
	"testing"
)

// Each upstream gets its own credentials and the registries it stands in
// for; bare values belong to the default (first) one.
func TestUpstreams(t *testing.T) {
	s := Defaults()
	s.Upstream = Keys("https://registry-1.docker.io", "ghcr.io=https://ghcr.io", "localhost:5000=http://127.0.0.1:5000")
	s.UpstreamCreds = Keys("/hub", "ghcr.io=/ghcr")
	s.UpstreamMirrorOf = Keys("mirror.corp", "localhost:5000=a.example, b.example")
	got, err := s.Upstreams()
	if err != nil {
		t.Fatal(err)
	}
	want := []Upstream{
		{Registry: "docker.io", URL: "https://registry-1.docker.io", Credentials: "/hub", MirrorOf: []string{"mirror.corp"}, Default: true},
		{Registry: "ghcr.io", URL: "https://ghcr.io", Credentials: "/ghcr"},
		{Registry: "localhost:5000", URL: "http://127.0.0.1:5000", MirrorOf: []string{"a.example", "b.example"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	for _, bad := range []struct {
		upstream, creds []string
		want            string
	}{
		{[]string{"ghcr.io=https://ghcr.io", "ghcr.io=https://ghcr2.io"}, nil, "configured twice"},
		{[]string{"https://ghcr.io"}, []string{"quay.io=/q"}, "no upstream is configured for quay.io"},
		{[]string{"ghcr.io=ghcr.io"}, nil, "want a URL"},
		{[]string{"evil/..=https://x.io"}, nil, "want a URL"},
		{[]string{"a b=https://x.io"}, nil, "not a registry host name"},
	} {
		s := Defaults()
		s.Upstream, s.UpstreamCreds = Keys(bad.upstream...), Keys(bad.creds...)
		if _, err := s.Upstreams(); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v %v: %v, want %q", bad.upstream, bad.creds, err, bad.want)
		}
	}
}
