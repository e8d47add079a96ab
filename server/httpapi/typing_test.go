package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/push"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// postTyping signs body for id's typing route (sha256 of body as sent) and
// posts it. The server accepts a signature once: tests send distinct
// bodies.
func postTyping(t *testing.T, srv *testutil.Server, id *client.Identity, body []byte) response {
	t.Helper()
	return postTypingSigned(t, srv, id, body, body)
}

// postTypingSigned posts body with auth over signed's digest.
func postTypingSigned(t *testing.T, srv *testutil.Server, id *client.Identity, body, signed []byte) response {
	t.Helper()
	path := "/v1/typing/" + id.Handle
	auth, err := signing.SignRequest(id.Signer, testutil.Domain, http.MethodPost, path, time.Now().Unix(), digestBinding(signed))
	if err != nil {
		t.Fatal(err)
	}
	return do(t, http.MethodPost, srv.URL+path, body, map[string]string{"X-KEZ-Auth": auth})
}

func typingBody(t *testing.T, to ...server.TypingRecipient) []byte {
	t.Helper()
	b, err := json.Marshal(server.TypingRequest{To: to})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// nextEvent reads one event's lines (up to its blank line), skipping
// comments.
func (s *sseConn) nextEvent(t *testing.T) []string {
	t.Helper()
	var lines []string
	for {
		line := s.nextLine(t)
		switch {
		case line == "" && len(lines) > 0:
			return lines
		case line == "", strings.HasPrefix(line, ":"), strings.HasPrefix(line, "retry:"):
		default:
			lines = append(lines, line)
		}
	}
}

func TestTypingReachesTheRecipientsOpenStreamWithoutAnIDAndIsNeitherStoredNorPushed(t *testing.T) {
	srv, ps := pushServer(t, push.Config{Workers: 1})
	c, alice, bob := chatPair(t, srv)
	ctx := context.Background()
	sub := ps.Subscribe()
	if r := subscribe(t, srv, bob, "subscribe", sub, sub.Endpoint); r.status != http.StatusCreated {
		t.Fatalf("subscribe: %d %s", r.status, r.code)
	}
	st := openRaw(t, srv, bob, "")
	testutil.Eventually(t, 5*time.Second, "bob's stream to open", func() bool { return srv.Service.HasStream("bob") })

	ct := signing.EncodeB64(randomCT(t, server.MaxTypingCiphertext))
	r := postTyping(t, srv, alice, typingBody(t,
		server.TypingRecipient{To: "bob", CT: ct},
		server.TypingRecipient{To: "nobody", CT: ct}, // unknown: skipped, not reported
	))
	if r.status != http.StatusAccepted || strings.TrimSpace(string(r.body)) != `{"recipients":1}` {
		t.Fatalf("typing: %d %s", r.status, r.body)
	}
	want := []string{"event: typing", `data: {"from":"alice","ct":"` + ct + `"}`}
	if got := st.nextEvent(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("event:\n%s\nwant exactly (no id line):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if page := poll(t, srv, &identity{signer: bob.Signer, handle: "bob"}, 0); len(page.Messages) != 0 || page.Next != 0 {
		t.Fatalf("typing was stored: %+v", page)
	}

	// With bob offline, typing goes nowhere: the first push is the
	// message's, sent after it.
	st.conn.Close()
	testutil.Eventually(t, 5*time.Second, "bob's stream to close", func() bool { return !srv.Service.HasStream("bob") })
	if r := postTyping(t, srv, alice, typingBody(t, server.TypingRecipient{To: "bob", CT: ct})); r.status != http.StatusAccepted {
		t.Fatalf("typing to offline bob: %d %s", r.status, r.code)
	}
	sent, err := c.Send(ctx, alice, "bob", "after typing")
	if err != nil {
		t.Fatal(err)
	}
	p := nextPush(t, ps)
	wantPush, _ := json.Marshal(server.PushNotice{Type: "message", To: "bob", Seq: sent.Seq})
	if string(p.Plaintext) != string(wantPush) {
		t.Fatalf("first push %s, want the message's %s (typing must not be pushed)", p.Plaintext, wantPush)
	}
}

func TestTypingIsRateLimitedPerHandle(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) { c.TypingLimit = app.Limit{Rate: 1, Burst: 5} }})
	_, alice, bob := chatPair(t, srv)
	body := func() []byte {
		return typingBody(t, server.TypingRecipient{To: "bob", CT: signing.EncodeB64(randomCT(t, 32))})
	}
	for i := range 5 {
		if r := postTyping(t, srv, alice, body()); r.status != http.StatusAccepted {
			t.Fatalf("typing %d within the burst: %d %s", i, r.status, r.code)
		}
	}
	r := postTyping(t, srv, alice, body())
	if r.status != http.StatusTooManyRequests || r.code != server.CodeRateLimited || r.header.Get("Retry-After") == "" {
		t.Fatalf("typing past the burst: %d %s Retry-After %q", r.status, r.code, r.header.Get("Retry-After"))
	}
	// Another handle has a budget of its own.
	if r := postTyping(t, srv, bob, typingBody(t, server.TypingRecipient{To: "alice", CT: "AAAA"})); r.status != http.StatusAccepted {
		t.Fatalf("bob's typing while alice is limited: %d %s", r.status, r.code)
	}
}

func TestTypingRequestsOutOfBoundsAreRefused(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	_, alice, _ := chatPair(t, srv)
	ct := "AAAA"
	many := make([]server.TypingRecipient, server.MaxTypingRecipients+1)
	for i := range many {
		many[i] = server.TypingRecipient{To: fmt.Sprintf("u%d", i), CT: ct}
	}
	for _, tc := range []struct {
		name   string
		body   []byte
		status int
		code   string
	}{
		{"no recipients", typingBody(t), 400, server.CodeInvalidField},
		{"257 recipients", typingBody(t, many...), 400, server.CodeInvalidField},
		{"a recipient twice", typingBody(t, server.TypingRecipient{To: "bob", CT: ct}, server.TypingRecipient{To: "bob", CT: ct}), 400, server.CodeInvalidField},
		{"empty ct", typingBody(t, server.TypingRecipient{To: "bob", CT: ""}), 400, server.CodeInvalidField},
		{"ct not base64url", typingBody(t, server.TypingRecipient{To: "bob", CT: "a+b/"}), 400, server.CodeInvalidEncoding},
		{"ct of 513 bytes", typingBody(t, server.TypingRecipient{To: "bob", CT: signing.EncodeB64(make([]byte, 513))}), 413, server.CodeCiphertextTooLarge},
		{"unknown member", []byte(`{"to":[{"to":"bob","ct":"AAAA"}],"x":1}`), 400, server.CodeUnknownField},
		{"body over 64 KiB", []byte(`{"to":[{"to":"bob","ct":"` + strings.Repeat("A", 64<<10) + `"}]}`), 413, server.CodeBodyTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := postTyping(t, srv, alice, tc.body); r.status != tc.status || r.code != tc.code {
				t.Fatalf("%d %s, want %d %s", r.status, r.code, tc.status, tc.code)
			}
		})
	}
	t.Run("auth over another body", func(t *testing.T) {
		body := typingBody(t, server.TypingRecipient{To: "bob", CT: ct})
		other := typingBody(t, server.TypingRecipient{To: "bob", CT: "BBBB"})
		if r := postTypingSigned(t, srv, alice, body, other); r.status != 401 || r.code != server.CodeBadAuth {
			t.Fatalf("%d %s, want 401 bad_auth", r.status, r.code)
		}
	})
}

func TestTypingFloodOnAStreamThatDoesNotReadIsDroppedNotQueuedAndNeverEndsIt(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) { c.StreamWriteTimeout = time.Minute }})
	c, alice, bob := chatPair(t, srv)
	// A reader with a small, fixed receive window, so the server's writes
	// block once the socket buffers are full.
	st := openRawWithDialer(t, srv, bob, &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}, "")
	testutil.Eventually(t, 5*time.Second, "the stream to open", func() bool { return srv.Service.OpenStreams() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// 4.8 MiB of messages: more than the socket buffers hold with that
	// window, fewer envelopes than the stream's buffer, so the pump is
	// stuck in a write.
	body := strings.Repeat("x", 60<<10)
	for i := range 80 {
		if _, err := c.Send(ctx, alice, "bob", body); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	for i := range 300 {
		body := typingBody(t, server.TypingRecipient{To: "bob", CT: signing.EncodeB64(randomCT(t, server.MaxTypingCiphertext))})
		if r := postTyping(t, srv, alice, body); r.status != http.StatusAccepted {
			t.Fatalf("typing %d while bob's stream is stuck: %d %s", i, r.status, r.code)
		}
	}
	if n := srv.Service.OpenStreams(); n != 1 {
		t.Fatalf("%d open streams after the flood; typing must never end one", n)
	}
	marker, err := c.Send(ctx, alice, "bob", "after the flood")
	if err != nil {
		t.Fatal(err)
	}
	// Reading now yields every envelope and, before the last one, of the
	// 300 typing events only what waited in the stream's bounded buffer.
	typing := 0
	for seq := uint64(0); seq < marker.Seq; {
		for _, line := range st.nextEvent(t) {
			if line == "event: typing" {
				typing++
			}
			if id, ok := strings.CutPrefix(line, "id: "); ok {
				seq, _ = strconv.ParseUint(id, 10, 64)
			}
		}
	}
	if typing > server.TypingBuffer+1 {
		t.Fatalf("%d typing events reached a stream that was not reading; at most %d may wait", typing, server.TypingBuffer+1)
	}
}
