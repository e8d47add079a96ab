package httpapi

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestClientAddrBelievesForwardedForOnlyFromTrustedProxies(t *testing.T) {
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, tt := range []struct {
		name, peer string
		xff        []string
		want       string
	}{
		{"a direct client", "203.0.113.7:5000", nil, "203.0.113.7"},
		{"a direct client forging the header", "203.0.113.7:5000", []string{"198.51.100.1"}, "203.0.113.7"},
		{"through a trusted proxy", "10.1.2.3:5000", []string{"198.51.100.1"}, "198.51.100.1"},
		{"a forged hop left of the real one", "10.1.2.3:5000", []string{"192.0.2.66, 198.51.100.1"}, "198.51.100.1"},
		{"through two trusted proxies", "10.1.2.3:5000", []string{"198.51.100.1, 10.9.9.9"}, "198.51.100.1"},
		{"a trusted proxy without the header", "10.1.2.3:5000", nil, "10.1.2.3"},
		{"garbage in the header", "10.1.2.3:5000", []string{"not-an-ip"}, "10.1.2.3"},
		{"IPv4 in IPv6", "[::ffff:203.0.113.7]:5000", nil, "203.0.113.7"},
		{"an IPv6 client stands for its /64", "[2001:db8:1:2:aaaa::1]:5000", nil, "2001:db8:1:2::/64"},
		{"another host of that /64", "[2001:db8:1:2:bbbb::9]:5000", nil, "2001:db8:1:2::/64"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tt.peer, Header: http.Header{}}
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := clientAddr(r, proxies); got != tt.want {
				t.Fatalf("clientAddr = %q, want %q", got, tt.want)
			}
		})
	}
}
