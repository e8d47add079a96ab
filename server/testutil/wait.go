package testutil

import (
	"net"
	"testing"
	"time"
)

// WaitFor polls cond every 50 ms until it returns nil, and fails t with
// cond's last error once timeout has passed. It is Eventually for a
// condition that can say why it does not hold yet.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not so after %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// FreeAddr is a loopback address with a port that was free a moment ago,
// for a process the test starts to listen on.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
