// Package egress is how the server connects out to addresses a client
// or another server named (push endpoints, other servers): only to public
// addresses, checked when connecting, after DNS, so that nobody can make
// it reach its own network (SSRF).
package egress

import "net/netip"

// Address blocks that are not reachable on the public Internet, or that
// reach somewhere else than they seem (NAT64 and 6to4 embed IPv4 addresses,
// private ones included). IANA's special-purpose registries list them.
var (
	nonPublic4 = prefixes(
		"0.0.0.0/8",       // "this network", unspecified
		"10.0.0.0/8",      // private
		"100.64.0.0/10",   // carrier-grade NAT
		"127.0.0.0/8",     // loopback
		"169.254.0.0/16",  // link-local, cloud metadata services
		"172.16.0.0/12",   // private
		"192.0.0.0/24",    // IETF protocol assignments
		"192.0.2.0/24",    // documentation
		"192.88.99.0/24",  // 6to4 relay anycast
		"192.168.0.0/16",  // private
		"198.18.0.0/15",   // benchmarking
		"198.51.100.0/24", // documentation
		"203.0.113.0/24",  // documentation
		"224.0.0.0/4",     // multicast
		"240.0.0.0/4",     // reserved, broadcast
	)
	// Global unicast IPv6 is 2000::/3; everything outside it (loopback,
	// unspecified, link-local, unique local, multicast, NAT64 64:ff9b::/96,
	// IPv4-mapped) is refused, and so are these blocks inside it.
	globalUnicast6 = netip.MustParsePrefix("2000::/3")
	nonPublic6     = prefixes(
		"2001::/23",     // IETF protocol assignments, Teredo
		"2001:db8::/32", // documentation
		"2002::/16",     // 6to4
		"3fff::/20",     // documentation
	)
)

func prefixes(ss ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		ps[i] = netip.MustParsePrefix(s)
	}
	return ps
}

// IsPublic reports whether ip is a public unicast address: not loopback,
// link-local, private, unspecified, multicast, reserved or otherwise
// special. An IPv4-mapped IPv6 address is judged as the IPv4 address.
func IsPublic(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.Zone() != "" {
		return false
	}
	blocks := nonPublic4
	if ip.Is6() {
		if !globalUnicast6.Contains(ip) {
			return false
		}
		blocks = nonPublic6
	}
	for _, p := range blocks {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}
