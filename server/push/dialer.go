package push

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// errNonPublicAddress is why the dialer refused a connection.
var errNonPublicAddress = errors.New("refusing to connect to a non-public address")

// HTTPClient returns the client to send pushes with. Its dialer refuses
// every non-public address at connection time, after DNS resolution, so a
// host that passed CheckEndpoint cannot be re-pointed at the internal
// network later (DNS rebinding); only the admin's trusted origins are
// dialed as written. It uses no proxy (the proxy's address is what would be
// checked) and follows no redirects (a push service does not redirect, and
// a redirect could lead anywhere). timeout bounds each request.
func (p *Policy) HTTPClient(timeout time.Duration) *http.Client {
	guarded := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: refuseNonPublic}
	trusted := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if p.trustedAddrs[addr] {
				return trusted.DialContext(ctx, network, addr)
			}
			return guarded.DialContext(ctx, network, addr)
		},
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          256,
		// Pushes go to a handful of hosts: keep enough connections to each
		// for every worker, rather than the default two.
		MaxIdleConnsPerHost: 64,
	}
	return &http.Client{
		Transport: transport,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// refuseNonPublic runs after DNS resolution, on the address about to be
// connected to.
func refuseNonPublic(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse %q", errNonPublicAddress, address)
	}
	if !isPublic(ap.Addr()) {
		return fmt.Errorf("%w: %s", errNonPublicAddress, ap.Addr())
	}
	return nil
}
