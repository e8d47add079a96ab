package httpapi_test

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/testutil"
)

// chatPair registers alice and bob through the Go client.
func chatPair(t *testing.T, srv *testutil.Server) (c *client.Client, alice, bob *client.Identity) {
	t.Helper()
	c = client.New(srv.URL, nil)
	ctx := context.Background()
	for _, h := range []string{"alice", "bob"} {
		id, err := client.NewIdentity("ed25519")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Register(ctx, id, h); err != nil {
			t.Fatalf("registering %s: %v", h, err)
		}
		if h == "alice" {
			alice = id
		} else {
			bob = id
		}
	}
	return c, alice, bob
}

func TestStreamResumedRepeatedlyDeliversAThousandMessagesWithNoGapOrDuplicate(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	c, alice, bob := chatPair(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const total, senders = 1000, 8
	receipts := make(chan uint64, total)
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := s; i < total; i += senders {
				r, err := c.Send(ctx, alice, "bob", "message "+strconv.Itoa(i))
				if err != nil {
					t.Errorf("send %d: %v", i, err)
					return
				}
				receipts <- r.Seq
			}
		})
	}

	// Read while the senders send, dropping the connection every 97
	// messages and resuming from the last seq seen.
	var got []uint64
	var last uint64
	for len(got) < total && ctx.Err() == nil {
		st, err := c.Stream(ctx, bob, last)
		if err != nil {
			t.Fatalf("opening stream after %d: %v", last, err)
		}
		for n := 0; n < 97 && len(got) < total; n++ {
			env, err := st.Next()
			if err != nil {
				t.Fatalf("stream after %d: %v", last, err)
			}
			got = append(got, env.Seq)
			last = env.Seq
		}
		st.Close()
	}
	wg.Wait()
	close(receipts)

	want := make([]uint64, 0, total)
	for seq := range receipts {
		want = append(want, seq)
	}
	slices.Sort(want)
	if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Fatalf("stream delivered seqs out of order or twice")
	}
	if !slices.Equal(got, want) {
		t.Fatalf("stream delivered %d seqs, %d were accepted; first difference near %v", len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []uint64) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// sseConn is a raw stream connection, for what the Go client hides:
// headers, comments and a reader that stops reading.
type sseConn struct {
	conn   net.Conn
	r      *bufio.Reader
	status int
	header http.Header
}

func openRaw(t *testing.T, srv *testutil.Server, id *client.Identity, header string) *sseConn {
	t.Helper()
	return openRawWithDialer(t, srv, id, &net.Dialer{}, header)
}

// openRawWithDialer is openRaw through d.
func openRawWithDialer(t *testing.T, srv *testutil.Server, id *client.Identity, d *net.Dialer, header string) *sseConn {
	t.Helper()
	path := "/v1/inbox/" + id.Handle + "/stream"
	auth, err := signingRequest(id, path)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := d.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	req := "GET " + path + "?auth=" + auth + " HTTP/1.1\r\nHost: x\r\n" + header + "\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	res, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Chunked framing is left to http's reader.
	return &sseConn{conn: conn, r: bufio.NewReader(res.Body), status: res.StatusCode, header: res.Header}
}

// nextLine reads one line of the event stream within a deadline.
func (s *sseConn) nextLine(t *testing.T) string {
	t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := s.r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading stream: %v", err)
	}
	return strings.TrimSuffix(line, "\n")
}

// nextID reads lines until an event's id line.
func (s *sseConn) nextID(t *testing.T) uint64 {
	t.Helper()
	for {
		if id, ok := strings.CutPrefix(s.nextLine(t), "id: "); ok {
			n, err := strconv.ParseUint(id, 10, 64)
			if err != nil {
				t.Fatalf("id line %q", id)
			}
			return n
		}
	}
}

func TestStreamHeadersAndLastEventIDResume(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	c, alice, bob := chatPair(t, srv)
	ctx := context.Background()
	for i := range 3 {
		if _, err := c.Send(ctx, alice, "bob", strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	s := openRaw(t, srv, bob, "Last-Event-ID: 2\r\n")
	if s.status != 200 || s.header.Get("Content-Type") != "text/event-stream" || s.header.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("status %d, headers %v", s.status, s.header)
	}
	if id := s.nextID(t); id != 3 {
		t.Fatalf("resumed after Last-Event-ID 2 at %d, want 3", id)
	}
}

func TestStreamSendsKeepAliveComments(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) { c.KeepAlive = 20 * time.Millisecond }})
	_, _, bob := chatPair(t, srv)
	s := openRaw(t, srv, bob, "")
	for {
		if s.nextLine(t) == ": keep-alive" {
			return
		}
	}
}

func TestStreamsPerHandleAreCapped(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) { c.Service.MaxStreamsPerHandle = 2 }})
	_, _, bob := chatPair(t, srv)
	for range 2 {
		if s := openRaw(t, srv, bob, ""); s.status != 200 {
			t.Fatalf("stream within the cap: %d", s.status)
		}
	}
	if s := openRaw(t, srv, bob, ""); s.status != 429 {
		t.Fatalf("third stream: %d, want 429", s.status)
	}
}

func TestReaderThatStopsReadingIsDisconnectedWithoutSlowingSenders(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) {
		c.Service.StreamBuffer = 4
		c.StreamWriteTimeout = 300 * time.Millisecond
	}})
	c, alice, bob := chatPair(t, srv)
	openRaw(t, srv, bob, "") // never read again
	testutil.Eventually(t, 5*time.Second, "the stream to open", func() bool { return srv.Service.OpenStreams() == 1 })
	body := strings.Repeat("x", 60<<10) // fills socket buffers quickly
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 200 {
		if _, err := c.Send(ctx, alice, "bob", body); err != nil {
			t.Fatalf("send %d while bob's stream is stuck: %v", i, err)
		}
	}
	testutil.Eventually(t, 10*time.Second, "the stuck stream to be dropped", func() bool { return srv.Service.OpenStreams() == 0 })
}

func TestShutdownEndsOpenStreams(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	c, _, bob := chatPair(t, srv)
	st, err := c.Stream(context.Background(), bob, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	done := make(chan error, 1)
	go func() { _, err := st.Next(); done <- err }()
	srv.API.CloseStreams()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("stream yielded an envelope instead of ending")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stream still open after CloseStreams")
	}
}

func TestStreamOverHTTP2IsServedByTheHandler(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	h2 := httptest.NewUnstartedServer(srv.API.Handler())
	h2.EnableHTTP2 = true
	h2.StartTLS()
	defer h2.Close()

	c := client.New(h2.URL, h2.Client())
	ctx := context.Background()
	alice, _ := client.NewIdentity("ed25519")
	bob, _ := client.NewIdentity("ed25519")
	for id, h := range map[*client.Identity]string{alice: "alice", bob: "bob"} {
		if _, err := c.Register(ctx, id, h); err != nil {
			t.Fatal(err)
		}
	}
	st, err := c.Stream(ctx, bob, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r, err := c.Send(ctx, alice, "bob", "over h2")
	if err != nil {
		t.Fatal(err)
	}
	env, err := st.Next()
	if err != nil || env.Seq != r.Seq {
		t.Fatalf("stream over HTTP/2 yielded %d, %v; want seq %d", env.Seq, err, r.Seq)
	}
	h2.CloseClientConnections()
}
