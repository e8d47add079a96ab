package hostile_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"kez.lat/chat/server/testutil"
)

// from is an HTTP client whose connections come from the loopback address
// ip, another client address than the tests' 127.0.0.1.
func from(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// One host opens connections and sends half a request header on each (a
// slowloris), trying to take every connection slot (here 300). Its
// address may hold 256; the rest are closed at once, and another address
// is still served (before: every slot went to the one host, and other
// clients waited in the backlog).
func TestOneHostCannotHoldEveryConnection(t *testing.T) {
	tg := start(t, "--max-connections", "300")
	// All at once: the server's 10 s header timeout ends each of them
	// anyway, which bounds what a slowloris holds for long.
	conns := make([]net.Conn, 300)
	for i := range conns {
		conn, err := net.DialTimeout("tcp", tg.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		io.WriteString(conn, "GET /v1/healthz HTTP/1.1\r\nHost: x\r\n")
		conns[i] = conn
	}
	// An open connection waits for the rest of its header: the read times
	// out. A closed one ends (EOF, or a reset: the server did not read
	// what was sent).
	ended := make([]bool, len(conns))
	closed := 0
	testutil.Eventually(t, 5*time.Second, "the connections past the address's cap to be closed", func() bool {
		for i, conn := range conns {
			if ended[i] {
				continue
			}
			conn.SetReadDeadline(time.Now().Add(time.Millisecond))
			var ne net.Error
			if _, err := conn.Read(make([]byte, 1)); err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				ended[i] = true
				closed++
			}
		}
		return closed >= 300-256
	})
	res, err := from("127.0.0.2").Get(tg.url + "/v1/healthz")
	if err != nil {
		t.Fatalf("another address while one host holds its connections: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("another address: %d", res.StatusCode)
	}
}

// One host opens streams of nine identities of its own, 8 each: its
// address may hold 64 open, the next gets too_many_streams, and another
// address still opens one.
func TestOneHostCannotHoldMoreThanItsStreams(t *testing.T) {
	tg := start(t)
	opened, refused := 0, 0
	var last string
	for i := range 9 {
		id, _ := tg.register(t, "streamer"+string(rune('a'+i)))
		for range 8 {
			res, err := http.Get(tg.url + "/v1/inbox/" + id.Handle + "/stream?auth=" + streamAuth(t, id))
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode == http.StatusOK {
				opened++
				t.Cleanup(func() { res.Body.Close() })
				continue
			}
			res.Body.Close()
			refused++
			last = res.Status
		}
	}
	if opened != 64 || refused != 8 {
		t.Fatalf("one address opened %d streams and was refused %d (last %s), want 64 and 8", opened, refused, last)
	}
	id, _ := tg.register(t, "elsewhere")
	res, err := from("127.0.0.2").Get(tg.url + "/v1/inbox/elsewhere/stream?auth=" + streamAuth(t, id))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("a stream from another address: %d", res.StatusCode)
	}
}
