package httpapi

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// clientAddr is the address the per-address limits key on: the peer's IP,
// or, when the peer is a trusted proxy, the rightmost X-Forwarded-For entry
// that is not itself a trusted proxy (entries left of it could be forged by
// the client). An IPv6 address stands for its /64, which one subscriber
// usually holds whole: keyed by /128, one host would be 2^64 clients.
func (s *Server) clientAddr(r *http.Request) string {
	return clientAddr(r, s.cfg.TrustedProxies)
}

func clientAddr(r *http.Request, proxies []netip.Prefix) string {
	return limitKey(clientIP(r, proxies))
}

func limitKey(ip netip.Addr) string {
	if ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().String()
	}
	return ip.String()
}

func clientIP(r *http.Request, proxies []netip.Prefix) netip.Addr {
	peer := peerIP(r.RemoteAddr)
	if !peer.IsValid() || !trusted(proxies, peer) {
		return peer
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		ip, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		ip = ip.Unmap()
		if !trusted(proxies, ip) {
			return ip
		}
	}
	return peer
}

func trusted(proxies []netip.Prefix, ip netip.Addr) bool {
	for _, p := range proxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func peerIP(remoteAddr string) netip.Addr {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}
