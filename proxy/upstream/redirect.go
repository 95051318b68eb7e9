package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
)

// ErrRedirectRefused is returned when the upstream redirects somewhere it
// must not send depproxy: a downgrade to plain HTTP, or an address on
// this side of the network that the upstream itself is not on.
var ErrRedirectRefused = errors.New("upstream redirect refused")

// addressClass sorts addresses by how far they reach.
type addressClass int

const (
	public addressClass = iota
	private
	linkLocal
	loopback
)

func classOf(ip netip.Addr) addressClass {
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback():
		return loopback
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast(), ip.IsUnspecified(), ip.IsMulticast():
		return linkLocal
	case ip.IsPrivate(), cgnat.Contains(ip):
		return private
	}
	return public
}

// cgnat is the shared address space, private in all but name.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// allowRedirect decides whether a redirect from the upstream at from
// (resolving to fromIPs) may be followed to to (resolving to toIPs). A
// public upstream sends blobs to a public CDN; one on a private network
// may send them to its storage there; on loopback, where other services
// listen, only the upstream's own address is trusted.
func allowRedirect(from *url.URL, fromIPs []netip.Addr, to *url.URL, toIPs []netip.Addr) error {
	if from.Scheme == "https" && to.Scheme != "https" {
		return fmt.Errorf("%w: from https to %s", ErrRedirectRefused, to.Redacted())
	}
	if sameHostPort(from, to) {
		return nil
	}
	upstreamOn := map[addressClass]bool{}
	for _, ip := range fromIPs {
		upstreamOn[classOf(ip)] = true
	}
	for _, ip := range toIPs {
		switch c := classOf(ip); {
		case c == public:
		case c == loopback:
			if !slices.Contains(fromIPs, ip) {
				return fmt.Errorf("%w: %s is on loopback (%s) and the upstream is not there", ErrRedirectRefused, to.Host, ip)
			}
		case !upstreamOn[c]:
			return fmt.Errorf("%w: %s is a private or link-local address (%s) and the upstream is not", ErrRedirectRefused, to.Host, ip)
		}
	}
	return nil
}

func sameHostPort(a, b *url.URL) bool {
	return a.Hostname() == b.Hostname() && portOf(a) == portOf(b)
}

func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "http" {
		return "80"
	}
	return "443"
}

// CheckRedirect is the http.Client's redirect policy for upstream calls.
func CheckRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return fmt.Errorf("%w: more than 10 redirects", ErrRedirectRefused)
	}
	return Follow(req.Context(), via[0].URL, req.URL)
}

// Follow decides whether depproxy, having asked the upstream at from, may
// go on to to: a redirect, or a URL the upstream's answer names (a Helm
// repository's index names where each chart is). See allowRedirect.
func Follow(ctx context.Context, from, to *url.URL) error {
	fromIPs, err := resolve(ctx, from.Hostname())
	if err != nil {
		return err
	}
	toIPs, err := resolve(ctx, to.Hostname())
	if err != nil {
		return err
	}
	return allowRedirect(from, fromIPs, to, toIPs)
}

func resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}
