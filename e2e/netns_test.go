package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// netns is a network namespace the test made: the containers' or a
// node's network, which nothing on this machine routes to. The test
// reaches into it from threads that entered it, and forwards into it
// what must be reached from inside (the API server, the registry), so
// no address or route of the machine's own network changes.
type netns struct {
	name, path string
}

func newNetns(t *testing.T, prefix string) *netns {
	t.Helper()
	n := &netns{name: fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), time.Now().UnixNano()%1e6)}
	n.path = "/var/run/netns/" + n.name
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// ip runs `ip -n <netns> args...`.
func (n *netns) ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %v: %v: %s", n.name, args, err, out)
	}
}

// inside runs f on a thread that entered the namespace; the thread is
// never handed back to the scheduler, so nothing else runs there.
func (n *netns) inside(f func() error) error {
	errs := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(n.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errs <- fmt.Errorf("opening %s: %w", n.path, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errs <- fmt.Errorf("entering %s: %w", n.path, err)
			return
		}
		errs <- f()
	}()
	return <-errs
}

// dial opens a connection from inside the namespace: a socket lives in
// the namespace it was made in.
func (n *netns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.inside(func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// httpClient makes its connections inside the namespace.
func (n *netns) httpClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: n.dial}}
}

// forwardIn listens on addr inside the namespace and relays each
// connection to addr outside it, until t ends.
func (n *netns) forwardIn(t *testing.T, addr string) {
	t.Helper()
	var ln net.Listener
	if err := n.inside(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, n.name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer out.Close()
				go io.Copy(out, in)
				io.Copy(in, out)
			}()
		}
	}()
}
