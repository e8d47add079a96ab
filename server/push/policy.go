package push

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/egress"
)

// DefaultHosts are the push services of the browsers that support Web
// Push. "*.example" matches any name under example, not example itself.
func DefaultHosts() []string {
	return []string{
		"fcm.googleapis.com",                // Chrome and other Chromium browsers
		"updates.push.services.mozilla.com", // Firefox
		"*.push.apple.com",                  // Safari (web.push.apple.com)
		"*.notify.windows.com",              // Edge on Windows (WNS)
	}
}

// Policy decides which push endpoints the server will POST to. The server
// POSTs to whatever URL a client hands it, so by default only https
// endpoints at well-known push services on public addresses qualify: a
// client must not make the server reach its internal network (SSRF).
// It implements server.EndpointPolicy.
type Policy struct {
	hosts []hostPattern
	// origins are the admin's explicit origins, trusted as written, even on
	// loopback: the way to reach a local or test push service.
	origins map[origin]bool
	// trustedAddrs are the origins' host:port, which the dialer connects
	// to without checking the address.
	trustedAddrs map[string]bool
	// lookup resolves a host name; tests replace it.
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

var _ server.EndpointPolicy = (*Policy)(nil)

// hostPattern is an exact host name, or with wildcard every name below it.
type hostPattern struct {
	name     string
	wildcard bool
}

func (h hostPattern) match(host string) bool {
	if h.wildcard {
		return strings.HasSuffix(host, "."+h.name)
	}
	return host == h.name
}

type origin struct{ scheme, host, port string }

// NewPolicy returns the default policy widened by extra entries, each an
// origin trusted as written ("http://127.0.0.1:43123",
// "https://push.internal:8443") or a host pattern held to the default rules
// of https and public addresses ("push.example.net", "*.example.net").
func NewPolicy(extra []string) (*Policy, error) {
	p := &Policy{
		origins:      make(map[origin]bool),
		trustedAddrs: make(map[string]bool),
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		},
	}
	for _, h := range DefaultHosts() {
		pat, err := parseHostPattern(h)
		if err != nil {
			panic(err) // DefaultHosts is a constant list
		}
		p.hosts = append(p.hosts, pat)
	}
	for _, e := range extra {
		e = strings.TrimSpace(e)
		if strings.Contains(e, "://") {
			o, err := parseOrigin(e)
			if err != nil {
				return nil, fmt.Errorf("push endpoint allow-list entry %q: %w", e, err)
			}
			p.origins[o] = true
			p.trustedAddrs[net.JoinHostPort(o.host, o.port)] = true
			continue
		}
		pat, err := parseHostPattern(e)
		if err != nil {
			return nil, fmt.Errorf("push endpoint allow-list entry %q: %w", e, err)
		}
		p.hosts = append(p.hosts, pat)
	}
	return p, nil
}

func parseOrigin(s string) (origin, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return origin{}, err
	case u.Scheme != "http" && u.Scheme != "https":
		return origin{}, errors.New("an origin must be http or https")
	case u.Host == "" || u.User != nil || u.Opaque != "" || (u.Path != "" && u.Path != "/") ||
		u.RawQuery != "" || u.Fragment != "":
		return origin{}, errors.New("an origin is scheme://host[:port] and nothing else")
	}
	o := origin{scheme: u.Scheme, host: strings.ToLower(u.Hostname()), port: effectivePort(u)}
	if n, err := strconv.Atoi(o.port); err != nil || n < 1 || n > 65535 {
		return origin{}, fmt.Errorf("port %q is not a port number", o.port)
	}
	return o, nil
}

func parseHostPattern(s string) (hostPattern, error) {
	s = strings.ToLower(s)
	pat := hostPattern{name: strings.TrimPrefix(s, "*."), wildcard: strings.HasPrefix(s, "*.")}
	if _, err := netip.ParseAddr(strings.Trim(pat.name, "[]")); err == nil {
		return hostPattern{}, errors.New("an address is not a host pattern; write an origin such as https://192.0.2.7:8443 to trust one")
	}
	labels := strings.Split(pat.name, ".")
	if len(labels) < 2 || len(pat.name) > 253 {
		return hostPattern{}, errors.New("want a host name with at least two labels, e.g. push.example.net or *.example.net")
	}
	for _, l := range labels {
		if !server.IsDNSLabel(l) {
			return hostPattern{}, fmt.Errorf("%q is not a valid DNS label", l)
		}
	}
	return pat, nil
}

func effectivePort(u *url.URL) string {
	if port := u.Port(); port != "" {
		return port
	}
	if u.Scheme == "http" {
		return "80"
	}
	return "443"
}

// CheckEndpoint refuses, with an endpoint_not_allowed *server.Error that
// says why, an endpoint the server must not contact: anything but an https
// URL on the default port at an allowed push service whose every address is
// public, unless it is at an origin the admin trusted. The dialer checks the
// addresses again at connection time, when DNS may answer differently.
func (p *Policy) CheckEndpoint(ctx context.Context, endpoint string) error {
	u, trusted, err := p.checkURL(endpoint)
	if err != nil || trusted {
		return err
	}
	host := strings.ToLower(u.Hostname())
	addrs, err := p.lookup(ctx, host)
	if err != nil {
		// The host is a push service's (checkURL allowed it): that it does
		// not resolve now, even as "no such host", says more of this
		// server's DNS than of the client, who may subscribe again later.
		return &server.Error{Code: server.CodeUnavailable, RetryAfter: 30 * time.Second,
			Message: "cannot resolve the endpoint's host " + host + " now; try again later"}
	}
	if len(addrs) == 0 {
		return notAllowed("endpoint host %s has no address", host)
	}
	for _, a := range addrs {
		if !egress.IsPublic(a) {
			return notAllowed("endpoint host %s resolves to %s, which is not a public address", host, a.Unmap())
		}
	}
	return nil
}

// checkURL makes every check of CheckEndpoint that needs no DNS, and
// reports whether u is at a trusted origin, which needs none.
func (p *Policy) checkURL(endpoint string) (u *url.URL, trusted bool, err error) {
	u, err = url.Parse(endpoint)
	switch {
	case err != nil || !u.IsAbs() || u.Host == "":
		return nil, false, notAllowed("endpoint is not an absolute URL")
	case u.User != nil:
		return nil, false, notAllowed("endpoint must not carry credentials")
	}
	host := strings.ToLower(u.Hostname())
	if p.origins[origin{scheme: u.Scheme, host: host, port: effectivePort(u)}] {
		return u, true, nil
	}
	if u.Scheme != "https" {
		return nil, false, notAllowed("endpoint must be https")
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !egress.IsPublic(ip) {
			return nil, false, notAllowed("endpoint host %s is not a public address", host)
		}
		return nil, false, notAllowed("endpoint host %s is an address, not a push service's name", host)
	}
	if port := u.Port(); port != "" && port != "443" {
		return nil, false, notAllowed("endpoint port %s is not the https port of a push service", port)
	}
	for _, h := range p.hosts {
		if h.match(host) {
			return u, false, nil
		}
	}
	return nil, false, notAllowed("endpoint host %s is not an allowed push service", host)
}

func notAllowed(format string, args ...any) *server.Error {
	return server.Errorf(server.CodeEndpointNotAllowed, format, args...)
}
