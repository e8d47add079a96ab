package push

import (
	"net/http"
	"time"

	"kez.lat/chat/server/egress"
)

// HTTPClient returns the client to send pushes with. Its dialer refuses
// every non-public address at connection time (egress), so a host that
// passed CheckEndpoint cannot be re-pointed at the internal network later;
// only the admin's trusted origins are dialed as written. It follows no
// redirects (a push service does not redirect, and a redirect could lead
// anywhere). timeout bounds each request.
func (p *Policy) HTTPClient(timeout time.Duration) *http.Client {
	// Pushes go to a handful of hosts: keep enough connections to each
	// for every worker, rather than the default two.
	transport := egress.Transport(timeout, func(addr string) bool { return p.trustedAddrs[addr] }, 64)
	return &http.Client{Transport: transport, Timeout: timeout, CheckRedirect: egress.NoRedirects}
}
