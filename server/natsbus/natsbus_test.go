package natsbus_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"kez.lat/chat/client/clienttest"
	"kez.lat/chat/server"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

func newBus(t *testing.T, n *testutil.NATS) *natsbus.Bus {
	t.Helper()
	b, err := natsbus.New(natsbus.Config{URL: n.URL, ReconnectWait: 20 * time.Millisecond}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// next waits for the next envelope of sub, failing after 5 s.
func next(t *testing.T, sub server.Subscription) *server.Envelope {
	t.Helper()
	select {
	case e, ok := <-sub.C():
		if !ok {
			t.Fatal("subscription closed")
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no envelope within 5s")
	}
	return nil
}

func TestMessageSentThroughOneReplicaReachesAStreamOnAnother(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	db := filepath.Join(t.TempDir(), "shared.db") // one SQLite file, as one pod would have
	a := testutil.StartServer(t, testutil.Options{NATS: n, DBPath: db})
	b := testutil.StartServer(t, testutil.Options{NATS: n, DBPath: db})
	ca, cb := clienttest.New(t, a.URL, 10*time.Second), clienttest.New(t, b.URL, 10*time.Second)

	bob := clienttest.Register(t, ca, "bob.smith") // a dot: the subject token differs from the handle
	alice := clienttest.Register(t, cb, "alice")
	st, err := ca.Stream(ctx, bob, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var seqs []uint64
	var bodies []string
	for i := range 3 {
		body := fmt.Sprint("through B ", i)
		r, err := cb.Send(ctx, alice, "bob.smith", body)
		if err != nil {
			t.Fatal(err)
		}
		seqs, bodies = append(seqs, r.Seq), append(bodies, body)
	}
	clienttest.ExpectStreamed(t, ca, bob, st, seqs, bodies)
}

func TestTokenIsOneSubjectTokenAndOneToOne(t *testing.T) {
	tests := []struct{ handle, token string }{
		{"alice", "alice"},
		{"bob.smith", "bob=smith"},
		{"a..b.", "a==b="},
		{"x_y-z9", "x_y-z9"},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		got := natsbus.Token(tt.handle)
		if got != tt.token {
			t.Errorf("Token(%q) = %q, want %q", tt.handle, got, tt.token)
		}
		if strings.ContainsAny(got, ".*> \t") {
			t.Errorf("Token(%q) = %q is not one subject token", tt.handle, got)
		}
		if other, ok := seen[got]; ok {
			t.Errorf("%q and %q share token %q", other, tt.handle, got)
		}
		seen[got] = tt.handle
	}
}

func TestPresenceAnswersWhileAnotherReplicaHasASubscription(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := newBus(t, n), newBus(t, n)

	if on, err := a.Streaming(ctx, "bob"); err != nil || on {
		t.Fatalf("Streaming before any subscription = %v, %v; want false", on, err)
	}
	sub, err := b.Subscribe(ctx, "bob", 4)
	if err != nil {
		t.Fatal(err)
	}
	if on, err := a.Streaming(ctx, "bob"); err != nil || !on {
		t.Fatalf("Streaming with a subscription on b = %v, %v; want true", on, err)
	}
	if on, err := a.Streaming(ctx, "carol"); err != nil || on {
		t.Fatalf("Streaming(carol) = %v, %v; want false", on, err)
	}
	sub.Close()
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if on, err := a.Streaming(ctx, "bob"); err != nil || on {
		t.Fatalf("Streaming after the subscription closed = %v, %v; want false", on, err)
	}
}

func TestPublishReachesLocalAndRemoteSubscriptionsOnce(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := newBus(t, n), newBus(t, n)
	onA, err := a.Subscribe(ctx, "bob", 8)
	if err != nil {
		t.Fatal(err)
	}
	onB, err := b.Subscribe(ctx, "bob", 8)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 2; seq++ {
		e := &server.Envelope{Recipient: "bob", Seq: seq, ReceivedAt: time.Unix(1_700_000_000, 0), Message: []byte(`{"x":1}`)}
		if err := a.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []server.Subscription{onA, onB} {
		for seq := uint64(1); seq <= 2; seq++ {
			e := next(t, sub)
			if e.Seq != seq || string(e.Message) != `{"x":1}` || e.ReceivedAt.Unix() != 1_700_000_000 {
				t.Fatalf("got %+v, want seq %d", e, seq)
			}
		}
	}
	// NoEcho: a's own publishes do not come back to it through NATS.
	if err := a.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-onA.C():
		t.Fatalf("a delivered seq %d twice", e.Seq)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestNATSOutageKeepsLocalDeliveryAndEndsRemoteSubscriptionsAfterReconnect(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a := newBus(t, n)
	sub, err := a.Subscribe(ctx, "bob", 8)
	if err != nil {
		t.Fatal(err)
	}
	n.Shutdown()
	waitFor(t, "Ping to fail with NATS down", func() bool { return a.Ping(ctx) != nil })
	// While NATS is down the publish is buffered and the local stream still
	// gets the envelope.
	if err := a.Publish(ctx, &server.Envelope{Recipient: "bob", Seq: 1, Message: []byte(`{}`)}); err != nil {
		t.Fatalf("Publish while reconnecting: %v", err)
	}
	if e := next(t, sub); e.Seq != 1 {
		t.Fatalf("got seq %d", e.Seq)
	}
	n.Start(t)
	// After the reconnect the subscription ends, so its stream resumes from
	// the store, where whatever other replicas stored meanwhile is.
	select {
	case _, ok := <-sub.C():
		if ok {
			t.Fatal("got an envelope, want the subscription closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("subscription still open 10s after NATS came back")
	}
	if err := a.Ping(ctx); err != nil {
		t.Fatalf("Ping after reconnect: %v", err)
	}
}

// waitFor polls cond every 10ms for up to 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

func TestTypingReachesSubscriptionsOnEveryReplicaAndNeverTheInboxSubject(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := newBus(t, n), newBus(t, n)
	onA, err := a.Subscribe(ctx, "bob.smith", 8)
	if err != nil {
		t.Fatal(err)
	}
	onB, err := b.Subscribe(ctx, "bob.smith", 8)
	if err != nil {
		t.Fatal(err)
	}
	// A follower of the inbox subject over NATS WebSocket reads envelopes
	// there; a typing event must never appear on it.
	follower := make(chan string, 4)
	inboxSub, err := b.Conn().Subscribe(natsbus.InboxSubject("bob.smith"), func(m *nats.Msg) { follower <- string(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer inboxSub.Unsubscribe()
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if err := a.PublishTyping(ctx, &server.Typing{Recipient: "bob.smith", From: "alice", CT: "AAAA"}); err != nil {
		t.Fatal(err)
	}
	for name, sub := range map[string]server.Subscription{"local": onA, "remote": onB} {
		select {
		case ty := <-sub.Typing():
			if ty.From != "alice" || ty.CT != "AAAA" || ty.Recipient != "bob.smith" {
				t.Fatalf("%s typing event %+v", name, ty)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no typing event on the %s replica", name)
		}
	}
	if err := a.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-follower:
		t.Fatalf("a typing event reached the inbox subject: %s", m)
	case e := <-onB.C():
		t.Fatalf("a typing event arrived as envelope %d", e.Seq)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestTypingFromNATSThatIsNotAHandleAndBase64urlIsDropped(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	b := newBus(t, n)
	sub, err := b.Subscribe(ctx, "bob", 8)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, data := range []string{`{"from":"alice","ct":"a\"}\n\nevent: message"}`, `{"from":"","ct":"AAAA"}`, `not json`, `{"from":"alice","ct":"AAAA"}`} {
		if err := nc.Publish(natsbus.TypingSubject("bob"), []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case ty := <-sub.Typing():
		if ty.CT != "AAAA" || ty.From != "alice" {
			t.Fatalf("a malformed typing event got through: %+v", ty)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the well-formed typing event did not arrive")
	}
}

func TestTypingSentThroughOneReplicaReachesAStreamOnAnother(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	db := filepath.Join(t.TempDir(), "shared.db")
	a := testutil.StartServer(t, testutil.Options{NATS: n, DBPath: db})
	b := testutil.StartServer(t, testutil.Options{NATS: n, DBPath: db})
	ca := clienttest.New(t, a.URL, 10*time.Second)
	bob := clienttest.Register(t, ca, "bob.smith")
	alice := clienttest.Register(t, ca, "alice")

	path := "/v1/inbox/bob.smith/stream"
	auth, err := signing.SignRequest(bob.Signer, testutil.Domain, http.MethodGet, path, time.Now().Unix())
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.Get(b.URL + path + "?auth=" + auth)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("stream on b: %d", res.StatusCode)
	}
	testutil.Eventually(t, 5*time.Second, "bob's stream on b", func() bool { return b.Service.HasStream("bob.smith") })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	body := []byte(`{"to":[{"to":"bob.smith","ct":"AAAA"}]}`)
	sum := sha256.Sum256(body)
	tpath := "/v1/typing/alice"
	tauth, err := signing.SignRequest(alice.Signer, testutil.Domain, http.MethodPost, tpath, time.Now().Unix(), "sha256="+signing.EncodeB64(sum[:]))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, a.URL+tpath, bytes.NewReader(body))
	req.Header.Set("X-KEZ-Auth", tauth)
	tres, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	tres.Body.Close()
	if tres.StatusCode != http.StatusAccepted {
		t.Fatalf("typing through a: %d", tres.StatusCode)
	}
	var event []string
	timeout := time.After(10 * time.Second)
	for len(event) < 2 {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatal("stream ended")
			}
			if strings.HasPrefix(line, "event:") || strings.HasPrefix(line, "data:") || strings.HasPrefix(line, "id:") {
				event = append(event, line)
			}
		case <-timeout:
			t.Fatalf("no typing event on b; got %q", event)
		}
	}
	if event[0] != "event: typing" || event[1] != `data: {"from":"alice","ct":"AAAA"}` {
		t.Fatalf("event on b: %q", event)
	}
}
