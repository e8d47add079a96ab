package natsauth_test

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"kez.lat/chat/client"
	"kez.lat/chat/client/clienttest"
	"kez.lat/chat/server"
	"kez.lat/chat/server/natsauth"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// setup starts NATS with the auth callout, a chat server answering it, and
// registers bob and carol.
func setup(t *testing.T) (n *testutil.NATS, c *client.Client, bob, carol *client.Identity) {
	t.Helper()
	issuer, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := issuer.PublicKey()
	n = testutil.StartNATS(t, testutil.NATSOptions{CalloutIssuer: pub, User: "kezchat", Password: "s3cret"})
	srv := testutil.StartServer(t, testutil.Options{NATS: n, NATSUser: "kezchat", NATSPassword: "s3cret",
		Callout: &natsauth.Config{Issuer: issuer}})
	c = clienttest.New(t, srv.URL, 10*time.Second)
	return n, c, clienttest.Register(t, c, "bob"), clienttest.Register(t, c, "carol")
}

// token is the NATS password that authorizes id to follow its inbox.
func token(t *testing.T, id *client.Identity, ts time.Time) string {
	t.Helper()
	auth, err := signing.SignRequest(id.Signer, testutil.Domain, natsauth.Method, natsbus.InboxSubject(id.Handle), ts.Unix())
	if err != nil {
		t.Fatal(err)
	}
	return auth
}

// connectWS connects to NATS's WebSocket listener as a browser would.
func connectWS(n *testutil.NATS, user, pass string, errs chan<- error) (*nats.Conn, error) {
	return nats.Connect(n.WSURL, nats.UserInfo(user, pass), nats.MaxReconnects(0), nats.Timeout(5*time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
}

func TestValidTokenFollowsItsOwnInboxOnly(t *testing.T) {
	ctx := context.Background()
	n, c, bob, carol := setup(t)
	errs := make(chan error, 4)
	nc, err := connectWS(n, "bob", token(t, bob, time.Now()), errs)
	if err != nil {
		t.Fatalf("connecting with a valid token: %v", err)
	}
	defer nc.Close()
	own, err := nc.SubscribeSync(natsbus.InboxSubject("bob"))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// The replica publishes every envelope it stores on the inbox subject.
	r, err := c.Send(ctx, carol, "bob", "over NATS")
	if err != nil {
		t.Fatal(err)
	}
	m, err := own.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("own inbox: %v", err)
	}
	if !strings.Contains(string(m.Data), `"seq":`) || !strings.HasPrefix(string(m.Data), `{"seq":`+strconv.FormatUint(r.Seq, 10)+`,`) {
		t.Fatalf("own inbox got %s, want the envelope with seq %d", m.Data, r.Seq)
	}

	if _, err := nc.SubscribeSync(natsbus.InboxSubject("carol")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("subscribing to carol's inbox: %v, want a permissions violation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("subscribing to carol's inbox was not refused")
	}
	if err := nc.Publish(natsbus.InboxSubject("bob"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("publishing: %v, want a permissions violation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("publishing was not refused")
	}
}

func TestInvalidTokenIsRefused(t *testing.T) {
	n, _, bob, carol := setup(t)
	tests := []struct{ name, user, pass string }{
		{"another handle's signature", "bob", token(t, carol, time.Now())},
		{"stale", "bob", token(t, bob, time.Now().Add(-time.Hour))},
		{"malformed", "bob", "not-a-signature"},
		{"unknown handle", "nobody", token(t, bob, time.Now())},
		{"no password", "bob", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := connectWS(n, tt.user, tt.pass, make(chan error, 1))
			if err == nil {
				nc.Close()
				t.Fatal("connected")
			}
			// NATS answers -ERR 'Authorization Violation' and closes; the
			// client sometimes sees only the close.
			if !strings.Contains(strings.ToLower(err.Error()), "authorization violation") &&
				!errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
				t.Fatalf("err = %v, want an authorization violation", err)
			}
		})
	}
}

// A NATS connection lives no longer than the signature it was authorized
// with (before: an hour, whatever the signature's age).
func TestAConnectionEndsWhenItsSignatureLeavesTheWindow(t *testing.T) {
	n, _, bob, _ := setup(t)
	signed := time.Now().Add(-server.ClockSkew + 2*time.Second)
	nc, err := connectWS(n, "bob", token(t, bob, signed), make(chan error, 4))
	if err != nil {
		t.Fatalf("connecting with a token 2 s from expiry: %v", err)
	}
	defer nc.Close()
	testutil.Eventually(t, 15*time.Second, "NATS to close the connection once its signature expired", nc.IsClosed)
	if took := time.Since(signed.Add(server.ClockSkew)); took > 5*time.Second {
		t.Fatalf("the connection outlived its signature by %s", took)
	}
}
