package testutil

import (
	"testing"

	"kez.lat/chat/server/natstest"
)

// NATSOptions change a test NATS server; the zero value has no auth.
type NATSOptions struct {
	// CalloutIssuer, when set (a public account nkey), turns on the auth
	// callout; User and Password are then the chat server's user.
	CalloutIssuer  string
	User, Password string
	// SyncAlways fsyncs every write before JetStream acknowledges it, as
	// the operator configures a single NATS.
	SyncAlways bool
}

// NATS is a nats-server with JetStream in the test process, its store in
// a temporary directory, with a WebSocket listener, all on loopback.
type NATS struct {
	*natstest.Server
}

// StartNATS starts a NATS server and shuts it down when the test ends.
func StartNATS(t testing.TB, o NATSOptions) *NATS {
	t.Helper()
	s, err := natstest.Start(natstest.Options{Name: "kez-test", Dir: t.TempDir(), WebSocket: true,
		CalloutIssuer: o.CalloutIssuer, User: o.User, Password: o.Password, SyncAlways: o.SyncAlways})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return &NATS{s}
}

// Start starts the server again, after Shutdown, on the same ports and
// store.
func (n *NATS) Start(t testing.TB) {
	t.Helper()
	if err := n.Server.Start(); err != nil {
		t.Fatal(err)
	}
}

// StartNATSCluster starts servers clustered NATS servers with JetStream in
// the test process, as the operator deploys with nats.replicas 3, waits
// until JetStream can place streams on all of them, and shuts them down
// when the test ends. The URL is every server's, comma-separated.
func StartNATSCluster(t testing.TB, servers int) (url string) {
	t.Helper()
	c, err := natstest.StartCluster(servers, natstest.Options{Name: "kez-test", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	return c.URL()
}
