package testutil

import (
	"fmt"
	"net"
	neturl "net/url"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// NATSOptions change an embedded NATS server; the zero value has no auth.
type NATSOptions struct {
	// CalloutIssuer, when set (a public account nkey), turns on the auth
	// callout: every client but User is authorized by the service that
	// answers on $SYS.REQ.USER.AUTH, as chat servers do with
	// --nats-callout-issuer-seed-file.
	CalloutIssuer string
	// User and Password are the one user the server config defines (the
	// chat server's); required with CalloutIssuer.
	User, Password string
	// SyncAlways fsyncs every write before JetStream acknowledges it
	// (sync_interval: always), as the operator configures a single NATS.
	SyncAlways bool
}

// NATS is an embedded nats-server with JetStream on a temporary directory
// and a WebSocket listener, both on loopback.
type NATS struct {
	Server *natsserver.Server
	// URL is the client URL (without credentials); WSURL the WebSocket one.
	URL, WSURL string
	opts       *natsserver.Options
}

// StartNATS starts a NATS server in the test process and shuts it down when
// the test ends.
func StartNATS(t testing.TB, o NATSOptions) *NATS {
	t.Helper()
	opts := serverOptions(t, "kez-test")
	opts.SyncAlways = o.SyncAlways
	opts.Websocket = natsserver.WebsocketOpts{
		Host:  "127.0.0.1",
		Port:  freePort(t),
		NoTLS: true,
	}
	if o.CalloutIssuer != "" {
		opts.Users = []*natsserver.User{{Username: o.User, Password: o.Password}}
		opts.AuthCallout = &natsserver.AuthCallout{Issuer: o.CalloutIssuer, AuthUsers: []string{o.User}}
	}
	n := &NATS{
		opts:  opts,
		URL:   fmt.Sprintf("nats://127.0.0.1:%d", opts.Port),
		WSURL: fmt.Sprintf("ws://127.0.0.1:%d", opts.Websocket.Port),
	}
	n.Start(t)
	t.Cleanup(n.Shutdown)
	return n
}

// Start starts the server (again, after Shutdown) on the same ports and
// JetStream directory.
func (n *NATS) Start(t testing.TB) {
	t.Helper()
	// The server keeps state in its Options; each start gets a copy.
	opts := *n.opts
	s, err := natsserver.NewServer(&opts)
	if err != nil {
		t.Fatalf("configuring nats-server: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatalf("nats-server not ready on %s", n.URL)
	}
	n.Server = s
}

// Shutdown stops the server; Start starts it again.
func (n *NATS) Shutdown() {
	if n.Server != nil {
		n.Server.Shutdown()
		n.Server.WaitForShutdown()
		n.Server = nil
	}
}

// freePort returns a loopback TCP port free now; a server restarted on it
// keeps its clients' URL.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// StartNATSCluster starts servers clustered NATS servers with JetStream in
// the test process, as the operator deploys with nats.replicas 3, waits
// until JetStream can place streams on all of them, and shuts
// them down when the test ends. The URL is every server's, comma-separated.
func StartNATSCluster(t testing.TB, servers int) (url string) {
	t.Helper()
	routePorts := make([]int, servers)
	var routes []*neturl.URL
	for i := range routePorts {
		routePorts[i] = freePort(t)
		routes = append(routes, &neturl.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", routePorts[i])})
	}
	var urls []string
	var started []*natsserver.Server
	for i := range servers {
		opts := serverOptions(t, fmt.Sprintf("kez-test-%d", i))
		opts.Cluster = natsserver.ClusterOpts{Name: "kez-test", Host: "127.0.0.1", Port: routePorts[i]}
		opts.Routes = routes
		s, err := natsserver.NewServer(opts)
		if err != nil {
			t.Fatalf("configuring nats-server %d: %v", i, err)
		}
		s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("nats-server %d not ready", i)
		}
		started = append(started, s)
		urls = append(urls, s.ClientURL())
	}
	// Streams are placed once the meta leader has heard from every server.
	Eventually(t, 30*time.Second, "a JetStream meta leader that every server follows and knows them all", func() bool {
		leader := false
		for _, s := range started {
			if !s.JetStreamIsCurrent() {
				return false
			}
			if s.JetStreamIsLeader() {
				leader = len(s.JetStreamClusterPeers()) == servers
			}
		}
		return leader
	})
	return strings.Join(urls, ",")
}

// serverOptions is a quiet server on a free loopback port with JetStream
// on a temporary directory.
func serverOptions(t testing.TB, name string) *natsserver.Options {
	return &natsserver.Options{
		ServerName: name,
		Host:       "127.0.0.1",
		Port:       freePort(t),
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoLog:      true,
		NoSigs:     true,
	}
}
