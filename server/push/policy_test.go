package push

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/egress"
)

// fakeDNS answers lookups from a table: the policy's only injected part, so
// tests can make a listed push service's name resolve anywhere.
func fakeDNS(table map[string][]string) func(context.Context, string) ([]netip.Addr, error) {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		switch host {
		case "nxdomain.push.apple.com":
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		case "servfail.push.apple.com":
			return nil, &net.DNSError{Err: "server misbehaving", Name: host, IsTemporary: true}
		}
		var addrs []netip.Addr
		for _, a := range table[host] {
			addrs = append(addrs, netip.MustParseAddr(a))
		}
		return addrs, nil
	}
}

func TestCheckEndpoint(t *testing.T) {
	p, err := NewPolicy([]string{"http://127.0.0.1:43123", "https://[::1]:8443", "push.example.net", "*.corp.example"})
	if err != nil {
		t.Fatal(err)
	}
	p.lookup = fakeDNS(map[string][]string{
		"fcm.googleapis.com":                {"142.250.74.10", "2a00:1450:4001:80b::200a"},
		"updates.push.services.mozilla.com": {"34.117.237.239"},
		"web.push.apple.com":                {"17.188.128.10"},
		"wns2-par02p.notify.windows.com":    {"52.98.0.10"},
		"push.example.net":                  {"93.184.215.14"},
		"a.b.corp.example":                  {"93.184.215.15"},
		"rebind.push.apple.com":             {"10.0.0.1"},
		"loopback.notify.windows.com":       {"127.0.0.1"},
		"metadata.push.apple.com":           {"169.254.169.254"},
		"mixed.push.apple.com":              {"17.188.128.11", "192.168.1.20"},
		"v6loopback.push.apple.com":         {"::1"},
		"mapped.push.apple.com":             {"::ffff:10.1.2.3"},
		"nat64.push.apple.com":              {"64:ff9b::a00:1"},
		"empty.push.apple.com":              {},
	})
	tests := []struct {
		name, endpoint string
		wantCode       string // "" when allowed
		wantWhy        string // a part of the message
	}{
		{name: "FCM over https", endpoint: "https://fcm.googleapis.com/fcm/send/abc:APA91b"},
		{name: "Mozilla over https", endpoint: "https://updates.push.services.mozilla.com/wpush/v2/gAAAA"},
		{name: "Apple over https", endpoint: "https://web.push.apple.com/QGuQyavXutnMH"},
		{name: "Windows over https", endpoint: "https://wns2-par02p.notify.windows.com/w/?token=BQYAAA"},
		{name: "a host name in capitals", endpoint: "https://FCM.googleapis.com/fcm/send/x"},
		{name: "https on the explicit port 443", endpoint: "https://fcm.googleapis.com:443/fcm/send/x"},
		{name: "an extra host", endpoint: "https://push.example.net/p/1"},
		{name: "a name under an extra wildcard", endpoint: "https://a.b.corp.example/p/1"},
		{name: "the explicit loopback origin", endpoint: "http://127.0.0.1:43123/push/abc"},
		{name: "the explicit IPv6 loopback origin", endpoint: "https://[::1]:8443/push/abc"},

		{name: "FCM over http", endpoint: "http://fcm.googleapis.com/fcm/send/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "https"},
		{name: "Apple over http", endpoint: "http://web.push.apple.com/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "https"},
		{name: "an unknown host", endpoint: "https://push.attacker.example/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "not an allowed push service"},
		{name: "a look-alike host", endpoint: "https://fcm.googleapis.com.attacker.example/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "not an allowed push service"},
		{name: "the wildcard's own name", endpoint: "https://push.apple.com/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "not an allowed push service"},
		{name: "another port of a push service", endpoint: "https://fcm.googleapis.com:8443/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "port"},
		{name: "the loopback origin on another port", endpoint: "http://127.0.0.1:43124/push/abc", wantCode: server.CodeEndpointNotAllowed, wantWhy: "https"},
		{name: "the loopback origin over https", endpoint: "https://127.0.0.1:43123/push/abc", wantCode: server.CodeEndpointNotAllowed, wantWhy: "not a public address"},
		{name: "IPv4 loopback", endpoint: "https://127.0.0.1/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "not a public address"},
		{name: "a private address", endpoint: "https://10.1.2.3/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "not a public address"},
		{name: "a link-local address", endpoint: "https://169.254.169.254/latest/meta-data", wantCode: server.CodeEndpointNotAllowed, wantWhy: "not a public address"},
		{name: "IPv6 loopback", endpoint: "https://[::1]/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "not a public address"},
		{name: "a public address", endpoint: "https://142.250.74.10/fcm/send/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "an address, not a push service"},
		{name: "userinfo", endpoint: "https://user:pass@fcm.googleapis.com/fcm/send/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "credentials"},
		{name: "userinfo at the trusted origin", endpoint: "http://u@127.0.0.1:43123/push/abc", wantCode: server.CodeEndpointNotAllowed, wantWhy: "credentials"},
		{name: "a relative URL", endpoint: "/push/abc", wantCode: server.CodeEndpointNotAllowed, wantWhy: "absolute"},
		{name: "a push service name resolving to a private address", endpoint: "https://rebind.push.apple.com/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "resolves to 10.0.0.1"},
		{name: "a push service name resolving to loopback", endpoint: "https://loopback.notify.windows.com/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "resolves to 127.0.0.1"},
		{name: "a push service name resolving to the metadata service", endpoint: "https://metadata.push.apple.com/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "resolves to 169.254.169.254"},
		{name: "a push service name with one private address among public ones", endpoint: "https://mixed.push.apple.com/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "resolves to 192.168.1.20"},
		{name: "a push service name resolving to IPv6 loopback", endpoint: "https://v6loopback.push.apple.com/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "resolves to ::1"},
		{name: "a push service name resolving to a mapped private address", endpoint: "https://mapped.push.apple.com/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "resolves to 10.1.2.3"},
		{name: "a push service name resolving through NAT64", endpoint: "https://nat64.push.apple.com/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "resolves to 64:ff9b::a00:1"},
		{name: "a push service name without addresses", endpoint: "https://empty.push.apple.com/x", wantCode: server.CodeEndpointNotAllowed, wantWhy: "no address"},
		{name: "a push service name that does not resolve now", endpoint: "https://nxdomain.push.apple.com/x", wantCode: server.CodeUnavailable, wantWhy: "try again"},
		{name: "a failing resolver", endpoint: "https://servfail.push.apple.com/x", wantCode: server.CodeUnavailable, wantWhy: "try again"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.CheckEndpoint(t.Context(), tt.endpoint)
			if tt.wantCode == "" {
				if err != nil {
					t.Fatalf("CheckEndpoint(%s) = %v, want allowed", tt.endpoint, err)
				}
				return
			}
			var serr *server.Error
			if !errors.As(err, &serr) || serr.Code != tt.wantCode || !strings.Contains(serr.Message, tt.wantWhy) {
				t.Fatalf("CheckEndpoint(%s) = %v, want %s saying %q", tt.endpoint, err, tt.wantCode, tt.wantWhy)
			}
			if tt.wantCode == server.CodeUnavailable && serr.RetryAfter <= 0 {
				t.Fatalf("CheckEndpoint(%s) = %v without a Retry-After", tt.endpoint, err)
			}
		})
	}
}

func TestNewPolicyRefusesMalformedExtraEntries(t *testing.T) {
	for _, entry := range []string{
		"",
		"ftp://push.example.net",
		"https://",
		"https://user:pass@push.example.net",
		"https://push.example.net/path",
		"https://push.example.net?q=1",
		"http://127.0.0.1:0",
		"http://127.0.0.1:99999",
		"net",
		"*.net",
		"*.*.example.net",
		"push..example.net",
		"-push.example.net",
		"push_1.example.net",
		"10.0.0.1",
		"[::1]",
	} {
		t.Run(entry, func(t *testing.T) {
			if _, err := NewPolicy([]string{entry}); err == nil {
				t.Fatalf("NewPolicy(%q) succeeded, want an error", entry)
			}
		})
	}
}

func TestHTTPClientDialerRefusesNonPublicAddressesOfUntrustedHosts(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://10.0.0.1/elsewhere", http.StatusFound)
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())

	untrusted, err := NewPolicy(nil)
	if err != nil {
		t.Fatal(err)
	}
	trusted, err := NewPolicy([]string{srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		policy  *Policy
		url     string
		refused bool
	}{
		{"a loopback address", untrusted, srv.URL, true},
		{"a name that resolves to loopback", untrusted, "http://localhost:" + port, true},
		{"a name trusted elsewhere but not here", trusted, "http://localhost:" + port, true},
		{"the trusted origin", trusted, srv.URL, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := tt.policy.HTTPClient(5 * time.Second).Get(tt.url)
			if tt.refused {
				if !errors.Is(err, egress.ErrNonPublicAddress) {
					t.Fatalf("GET %s = %v, want refused as non-public", tt.url, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("GET %s: %v", tt.url, err)
			}
			resp.Body.Close()
			// The redirect to a private address is returned, not followed.
			if resp.StatusCode != http.StatusFound {
				t.Fatalf("GET %s = %d, want the redirect itself", tt.url, resp.StatusCode)
			}
		})
	}
}
