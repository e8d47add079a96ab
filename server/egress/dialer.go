package egress

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

// ErrNonPublicAddress is why the dialer refused a connection.
var ErrNonPublicAddress = errors.New("refusing to connect to a non-public address")

// Transport returns an HTTP transport whose dialer refuses every
// non-public address at connection time, after DNS resolution, so a host
// that passed a check cannot be re-pointed at the internal network later
// (DNS rebinding). Only addresses trusted reports true for (host:port as
// dialed) are dialed as written. It uses no proxy: the proxy's address is
// what would be checked. timeout bounds each connection attempt.
func Transport(timeout time.Duration, trusted func(hostport string) bool, maxIdlePerHost int) *http.Transport {
	guarded := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: RefuseNonPublic}
	plain := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if trusted != nil && trusted(addr) {
				return plain.DialContext(ctx, network, addr)
			}
			return guarded.DialContext(ctx, network, addr)
		},
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   maxIdlePerHost,
	}
}

// NoRedirects makes a client return a redirect rather than follow it: a
// redirect could lead anywhere.
func NoRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// RefuseNonPublic is a net.Dialer Control that refuses, after DNS
// resolution, an address that is not public.
func RefuseNonPublic(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse %q", ErrNonPublicAddress, address)
	}
	if !IsPublic(ap.Addr()) {
		return fmt.Errorf("%w: %s", ErrNonPublicAddress, ap.Addr())
	}
	return nil
}
