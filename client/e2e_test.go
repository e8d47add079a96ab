package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/testutil"
)

// register makes and registers a new identity on the test server.
func register(t *testing.T, c *client.Client, alg, handle string) *client.Identity {
	t.Helper()
	id, err := client.NewIdentity(alg)
	if err != nil {
		t.Fatal(err)
	}
	u, err := c.Register(context.Background(), id, handle)
	if err != nil {
		t.Fatalf("registering %s: %v", handle, err)
	}
	if u.Handle != handle || u.Server != testutil.Domain || u.PrimaryID != id.PrimaryID() {
		t.Fatalf("registered %+v", u)
	}
	if id.Handle != handle || id.Server != testutil.Domain {
		t.Fatalf("identity not updated: %q %q", id.Handle, id.Server)
	}
	return id
}

// startServer starts a test server and a client for it.
func startServer(t *testing.T) (*testutil.Server, *client.Client) {
	srv := testutil.StartServer(t, testutil.Options{})
	tr := &http.Transport{}
	// Runs before the server's cleanup: a connection the transport dialed
	// but never used would hold up the server's graceful shutdown.
	t.Cleanup(tr.CloseIdleConnections)
	return srv, client.New(srv.URL, &http.Client{Transport: tr, Timeout: 10 * time.Second})
}

func TestEndToEnd(t *testing.T) {
	ctx := context.Background()
	srv, c := startServer(t)

	if d, err := c.Domain(ctx); err != nil || d != testutil.Domain {
		t.Fatalf("Domain: %q %v", d, err)
	}
	alice := register(t, c, "ed25519", "alice")
	bob := register(t, c, "bip340", "bob")

	// Errors carry the protocol's code and status.
	other, _ := client.NewIdentity("ed25519")
	_, err := c.Register(ctx, other, "alice")
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusConflict || apiErr.Code != server.CodeHandleTaken {
		t.Fatalf("second registration of alice: %v", err)
	}
	if _, err := c.Lookup(ctx, "nobody"); client.ErrorCode(err) != server.CodeUnknownHandle {
		t.Fatalf("lookup of nobody: %v", err)
	}

	// Lookup and WebFinger.
	u, err := client.New(srv.URL, &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Lookup(ctx, "bob")
	if err != nil || u.Alg != "bip340" || u.PrimaryID != bob.PrimaryID() {
		t.Fatalf("lookup bob: %+v %v", u, err)
	}
	jrd, err := c.WebFinger(ctx, "bob")
	if err != nil || jrd.Subject != "acct:bob@"+testutil.Domain || len(jrd.Links) != 1 {
		t.Fatalf("webfinger: %+v %v", jrd, err)
	}

	// Send, poll, decrypt.
	r, err := c.Send(ctx, alice, "bob", "hello <bob> & co")
	if err != nil {
		t.Fatal(err)
	}
	if r.To != "bob" || r.Seq == 0 {
		t.Fatalf("receipt %+v", r)
	}
	page, err := c.Poll(ctx, bob, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Messages) != 1 || page.Next != r.Seq || page.Messages[0].Seq != r.Seq {
		t.Fatalf("page %+v", page)
	}
	pt, err := c.Decrypt(ctx, bob, page.Messages[0])
	if err != nil || pt.Body != "hello <bob> & co" || pt.From != "alice" {
		t.Fatalf("decrypt: %+v %v", pt, err)
	}
	if hdr, _ := page.Messages[0].Payload(); hdr.ID != r.ID {
		t.Fatalf("message id %q, receipt %q", hdr.ID, r.ID)
	}

	// A retried post answers the original receipt.
	bobU, _ := c.Lookup(ctx, "bob")
	doc, err := client.NewMessage(alice, bobU, "retry-1", "once")
	if err != nil {
		t.Fatal(err)
	}
	r1, replayed1, err := c.Post(ctx, doc)
	if err != nil || replayed1 {
		t.Fatalf("first post: %v %v", replayed1, err)
	}
	r2, replayed2, err := c.Post(ctx, doc)
	if err != nil || !replayed2 || r2 != r1 {
		t.Fatalf("retried post: %+v %v %v (first %+v)", r2, replayed2, err, r1)
	}

	// Poll pages, then ack; acking the same upto twice is two requests.
	page, err = c.Poll(ctx, bob, 0, 1)
	if err != nil || len(page.Messages) != 1 {
		t.Fatalf("page of 1: %+v %v", page, err)
	}
	page, err = c.Poll(ctx, bob, page.Next, 10)
	if err != nil || len(page.Messages) != 1 || page.Messages[0].Seq != r1.Seq {
		t.Fatalf("second page: %+v %v", page, err)
	}
	if n, err := c.Ack(ctx, bob, r1.Seq); err != nil || n != 2 {
		t.Fatalf("ack: %d %v", n, err)
	}
	if n, err := c.Ack(ctx, bob, r1.Seq); err != nil || n != 0 {
		t.Fatalf("second ack: %d %v", n, err)
	}
	if page, err := c.Poll(ctx, bob, 0, 0); err != nil || len(page.Messages) != 0 || page.Next != 0 {
		t.Fatalf("after ack: %+v %v", page, err)
	}

	// Alice cannot read bob's inbox: her key does not speak for bob.
	impostor := *alice
	impostor.Handle = "bob"
	if _, err := c.Poll(ctx, &impostor, 0, 0); client.ErrorCode(err) != server.CodeBadAuth {
		t.Fatalf("poll as impostor: %v", err)
	}
}

func TestEndToEndStream(t *testing.T) {
	ctx := context.Background()
	_, c := startServer(t)
	alice := register(t, c, "bip340", "alice")
	bob := register(t, c, "ed25519", "bob")

	first, err := c.Send(ctx, alice, "bob", "stored before the stream")
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Stream(ctx, bob, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range 3 {
		if _, err := c.Send(ctx, alice, "bob", fmt.Sprint("live ", i)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"stored before the stream", "live 0", "live 1", "live 2"}
	var last uint64
	for i, w := range want {
		env, err := st.Next()
		if err != nil {
			t.Fatal(err)
		}
		if env.Seq <= last || (i == 0 && env.Seq != first.Seq) {
			t.Fatalf("seq %d after %d", env.Seq, last)
		}
		last = env.Seq
		pt, err := c.Decrypt(ctx, bob, env)
		if err != nil || pt.Body != w {
			t.Fatalf("event %d: %+v %v", i, pt, err)
		}
	}
	if st.LastSeq() != last {
		t.Fatalf("LastSeq %d, want %d", st.LastSeq(), last)
	}
	st.Close()

	// Listen delivers from since onwards and stops with its context.
	lctx, cancel := context.WithCancel(ctx)
	got := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		done <- c.Listen(lctx, bob, first.Seq, func(env client.Envelope) error {
			pt, err := c.Decrypt(lctx, bob, env)
			if err != nil {
				return err
			}
			got <- pt.Body
			return nil
		})
	}()
	for _, w := range want[1:] {
		select {
		case b := <-got:
			if b != w {
				t.Fatalf("listen got %q, want %q", b, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("listen delivered nothing")
		}
	}
	if _, err := c.Send(ctx, alice, "bob", "while listening"); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if b != "while listening" {
			t.Fatalf("listen got %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("listen delivered nothing live")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Listen returned %v", err)
	}

	// A callback error ends Listen with that error.
	boom := errors.New("boom")
	if err := c.Listen(ctx, bob, 0, func(client.Envelope) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Listen returned %v, want boom", err)
	}
}
