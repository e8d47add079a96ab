package natsbus_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"kez.lat/chat/client/clienttest"
	"kez.lat/chat/server"
	"kez.lat/chat/server/push"
	"kez.lat/chat/server/push/pushtest"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

const pushSubject = "mailto:ops@chat.test"

func TestPushGoesOutOnlyWhenNoReplicaStreamsTheRecipient(t *testing.T) {
	ctx := context.Background()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ps := pushtest.New(t, pushSubject, &key.PublicKey)
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	db := filepath.Join(t.TempDir(), "shared.db")
	replica := func() *testutil.Server {
		// One worker keeps the notices of a replica in order.
		return testutil.StartServer(t, testutil.Options{NATS: n, DBPath: db,
			Push: &push.Config{Key: key, Subject: pushSubject, Workers: 1}, AllowEndpoints: []string{ps.Origin()}})
	}
	a, b := replica(), replica()
	ca, cb := clienttest.New(t, a.URL, 10*time.Second), clienttest.New(t, b.URL, 10*time.Second)
	alice := clienttest.Register(t, ca, "alice")
	bob := clienttest.Register(t, ca, "bob")

	sub := ps.Subscribe()
	path := "/v1/push/subscribe/bob"
	auth, err := signing.SignRequest(bob.Signer, testutil.Domain, http.MethodPost, path, time.Now().Unix(), "endpoint="+sub.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(sub)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.URL+path, bytesReader(body))
	req.Header.Set("X-KEZ-Auth", auth)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("subscribing: %d", resp.StatusCode)
	}

	// bob streams on B; a message sent through A, which has no stream of
	// his, reaches him live and is not pushed.
	st, err := cb.Stream(ctx, bob, 0)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "A to see bob's stream on B", func() bool {
		on, err := a.Bus.Streaming(ctx, "bob")
		return err == nil && on
	})
	live, err := ca.Send(ctx, alice, "bob", "you are online on B")
	if err != nil {
		t.Fatal(err)
	}
	if env, err := st.Next(); err != nil || env.Seq != live.Seq {
		t.Fatalf("stream on B: seq %d, %v; want %d", env.Seq, err, live.Seq)
	}
	// The notice is judged when A's push worker takes it, so the stream
	// stays open until then.
	testutil.Eventually(t, 5*time.Second, "A to skip the push for the live message", func() bool {
		return onlineSkips(t, a) == 1
	})
	st.Close()
	testutil.Eventually(t, 5*time.Second, "no replica to stream bob", func() bool {
		on, err := a.Bus.Streaming(ctx, "bob")
		return err == nil && !on
	})

	offline, err := ca.Send(ctx, alice, "bob", "you are offline")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-ps.Received():
		want, _ := json.Marshal(server.PushNotice{Type: "message", To: "bob", Seq: offline.Seq})
		if string(p.Plaintext) != string(want) {
			t.Fatalf("push %s, want exactly %s (the live message must not have been pushed)", p.Plaintext, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no push for the offline message")
	}
}

// onlineSkips is how many pushes srv skipped for a recipient streaming on
// another replica.
func onlineSkips(t *testing.T, srv *testutil.Server) float64 {
	t.Helper()
	families, err := srv.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "kezchat_push_notifications_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == "online" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
