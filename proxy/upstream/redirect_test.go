package upstream

import (
	"errors"
	"net/netip"
	"net/url"
	"testing"
)

func TestAllowRedirect(t *testing.T) {
	ips := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	u := func(s string) *url.URL { v, _ := url.Parse(s); return v }
	cases := []struct {
		name    string
		from    string
		fromIPs []netip.Addr
		to      string
		toIPs   []netip.Addr
		want    bool
	}{
		{"a public registry to its CDN", "https://registry-1.docker.io/v2/", ips("44.208.254.194"), "https://cdn.example/blob", ips("104.16.1.1"), true},
		{"https down to http", "https://registry-1.docker.io/v2/", ips("44.208.254.194"), "http://cdn.example/blob", ips("104.16.1.1"), false},
		{"a public registry to loopback", "https://registry.example/v2/", ips("203.0.113.5"), "https://localhost:9000/x", ips("127.0.0.1"), false},
		{"a public registry to cloud metadata", "https://registry.example/v2/", ips("203.0.113.5"), "http://169.254.169.254/latest", ips("169.254.169.254"), false},
		{"a public registry to a private address", "https://registry.example/v2/", ips("203.0.113.5"), "https://minio.internal/x", ips("10.0.0.7"), false},
		{"a public name resolving to private too", "https://registry.example/v2/", ips("203.0.113.5"), "https://mixed.example/x", ips("104.16.1.1", "192.168.1.1"), false},
		{"an IPv6 loopback", "https://registry.example/v2/", ips("203.0.113.5"), "https://[::1]/x", ips("::1"), false},
		{"a private registry to its private storage", "http://harbor.internal/v2/", ips("10.0.0.5"), "http://minio.internal:9000/x", ips("10.0.0.7"), true},
		{"a private registry to link-local", "http://harbor.internal/v2/", ips("10.0.0.5"), "http://169.254.169.254/", ips("169.254.169.254"), false},
		{"a loopback registry to itself", "http://127.0.0.1:5001/v2/", ips("127.0.0.1"), "http://127.0.0.1:5001/v2/other", ips("127.0.0.1"), true},
		{"a loopback registry to its storage beside it", "http://127.0.0.1:5001/v2/", ips("127.0.0.1"), "http://127.0.0.1:8080/", ips("127.0.0.1"), true},
		{"a loopback registry to another loopback address", "http://127.0.0.1:5001/v2/", ips("127.0.0.1"), "http://127.0.0.2:8080/", ips("127.0.0.2"), false},
		{"an IPv4-mapped loopback", "https://registry.example/v2/", ips("203.0.113.5"), "https://x/", ips("::ffff:127.0.0.1"), false},
	}
	for _, c := range cases {
		err := allowRedirect(u(c.from), c.fromIPs, u(c.to), c.toIPs)
		if (err == nil) != c.want || (err != nil && !errors.Is(err, ErrRedirectRefused)) {
			t.Errorf("%s: %v, want allowed=%v", c.name, err, c.want)
		}
	}
}
