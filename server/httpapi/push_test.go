package httpapi_test

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/push"
	"kez.lat/chat/server/push/pushtest"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

const pushSubject = "mailto:ops@chat.test"

// pushServer is a chat server with Web Push on, and a local push service
// it is allowed to reach.
func pushServer(t *testing.T, cfg push.Config) (*testutil.Server, *pushtest.Service) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ps := pushtest.New(t, pushSubject, &key.PublicKey)
	cfg.Key, cfg.Subject = key, pushSubject
	srv := testutil.StartServer(t, testutil.Options{Push: &cfg, AllowEndpoints: []string{ps.Origin()}})
	return srv, ps
}

// subscribe posts sub for id with auth bound to endpoint.
func subscribe(t *testing.T, srv *testutil.Server, id *client.Identity, route string, sub server.PushSubscriptionJSON, signedEndpoint string) response {
	t.Helper()
	path := "/v1/push/" + route + "/" + id.Handle
	auth, err := signing.SignRequest(id.Signer, testutil.Domain, http.MethodPost, path, time.Now().Unix(), "endpoint="+signedEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(sub)
	return do(t, http.MethodPost, srv.URL+path, body, map[string]string{"X-KEZ-Auth": auth})
}

func nextPush(t *testing.T, ps *pushtest.Service) pushtest.Push {
	t.Helper()
	select {
	case p := <-ps.Received():
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no push arrived")
		return pushtest.Push{}
	}
}

func TestVAPIDPublicKeyIsServedOnlyWithPushOn(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	on := testutil.StartServer(t, testutil.Options{Push: &push.Config{Key: key, Subject: pushSubject}})
	r := do(t, http.MethodGet, on.URL+"/v1/push/vapid-public-key", nil, nil)
	var body struct {
		PublicKey string `json:"public_key"`
	}
	json.Unmarshal(r.body, &body)
	point, err := signing.DecodeB64(body.PublicKey)
	if r.status != 200 || err != nil || len(point) != 65 || body.PublicKey != push.PublicKey(key) {
		t.Fatalf("vapid key: %d %s", r.status, r.body)
	}
	if _, err := ecdh.P256().NewPublicKey(point); err != nil {
		t.Fatalf("vapid key is not a P-256 point: %v", err)
	}
	off := testutil.StartServer(t, testutil.Options{})
	if r := do(t, http.MethodGet, off.URL+"/v1/push/vapid-public-key", nil, nil); r.status != 404 || r.code != server.CodePushDisabled {
		t.Fatalf("push off: %d %s", r.status, r.code)
	}
}

func TestOfflineRecipientGetsAMetadataOnlyPushButNotWhileStreaming(t *testing.T) {
	srv, ps := pushServer(t, push.Config{Workers: 1}) // one worker keeps pushes in order
	c, alice, bob := chatPair(t, srv)
	ctx := context.Background()
	sub := ps.Subscribe()
	if r := subscribe(t, srv, bob, "subscribe", sub, sub.Endpoint); r.status != http.StatusCreated {
		t.Fatalf("subscribe: %d %s", r.status, r.code)
	}

	// While bob streams, a message reaches him live and causes no push.
	st, err := c.Stream(ctx, bob, 0)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "bob's stream to register", func() bool { return srv.Service.HasStream("bob") })
	live, err := c.Send(ctx, alice, "bob", "you are online")
	if err != nil {
		t.Fatal(err)
	}
	if env, err := st.Next(); err != nil || env.Seq != live.Seq {
		t.Fatalf("stream: %v %v", env.Seq, err)
	}
	st.Close()
	testutil.Eventually(t, 5*time.Second, "bob's stream to close", func() bool { return !srv.Service.HasStream("bob") })

	offline, err := c.Send(ctx, alice, "bob", "secret words")
	if err != nil {
		t.Fatal(err)
	}
	p := nextPush(t, ps)
	want, _ := json.Marshal(server.PushNotice{Type: "message", To: "bob", Seq: offline.Seq})
	if string(p.Plaintext) != string(want) {
		t.Fatalf("push plaintext %s, want exactly %s (the live message must not have been pushed)", p.Plaintext, want)
	}
	if p.Endpoint != sub.Endpoint || p.TTL != "86400" || p.Urgency != "high" || p.Topic == "" || len(p.Topic) > 32 {
		t.Fatalf("push headers: %+v", p)
	}
}

func TestPushEndpointsOffTheAllowListAreRefused(t *testing.T) {
	srv, ps := pushServer(t, push.Config{})
	_, _, bob := chatPair(t, srv)
	good := ps.Subscribe()
	for _, endpoint := range []string{
		"https://evil.example/push/1",
		"http://fcm.googleapis.com/fcm/send/x",
		"https://127.0.0.1/push",
		"https://169.254.169.254/latest/meta-data",
		"http://127.0.0.1:1/push", // loopback, but not the allowed origin
	} {
		sub := good
		sub.Endpoint = endpoint
		if r := subscribe(t, srv, bob, "subscribe", sub, endpoint); r.status != 400 || r.code != server.CodeEndpointNotAllowed {
			t.Errorf("%s: %d %s, want 400 endpoint_not_allowed", endpoint, r.status, r.code)
		}
	}
}

func TestSubscribeAuthIsBoundToTheEndpointAndUsedOnce(t *testing.T) {
	srv, ps := pushServer(t, push.Config{})
	_, _, bob := chatPair(t, srv)
	signed, other := ps.Subscribe(), ps.Subscribe()
	if r := subscribe(t, srv, bob, "subscribe", other, signed.Endpoint); r.status != 401 || r.code != server.CodeBadAuth {
		t.Fatalf("auth for one endpoint used for another: %d %s", r.status, r.code)
	}
	path := "/v1/push/subscribe/bob"
	auth, _ := signing.SignRequest(bob.Signer, testutil.Domain, http.MethodPost, path, time.Now().Unix(), "endpoint="+signed.Endpoint)
	body, _ := json.Marshal(signed)
	h := map[string]string{"X-KEZ-Auth": auth}
	if r := do(t, http.MethodPost, srv.URL+path, body, h); r.status != 201 {
		t.Fatalf("subscribe: %d %s", r.status, r.code)
	}
	if r := do(t, http.MethodPost, srv.URL+path, body, h); r.status != 401 || r.code != server.CodeReplayedAuth {
		t.Fatalf("replayed subscribe: %d %s", r.status, r.code)
	}
}

func TestUnsubscribedAndGoneEndpointsGetNoMorePushes(t *testing.T) {
	srv, ps := pushServer(t, push.Config{})
	c, alice, bob := chatPair(t, srv)
	ctx := context.Background()
	kept, gone := ps.Subscribe(), ps.Subscribe()
	for _, sub := range []server.PushSubscriptionJSON{kept, gone} {
		if r := subscribe(t, srv, bob, "subscribe", sub, sub.Endpoint); r.status != 201 {
			t.Fatalf("subscribe: %d %s", r.status, r.code)
		}
	}
	ps.SetResponse(gone.Endpoint, http.StatusGone, 1)
	if _, err := c.Send(ctx, alice, "bob", "one"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the gone subscription to be pruned", func() bool {
		subs, _ := srv.Store.PushSubscriptions(ctx, "bob")
		return len(subs) == 1 && subs[0].Endpoint == kept.Endpoint
	})
	if r := subscribe(t, srv, bob, "unsubscribe", server.PushSubscriptionJSON{Endpoint: kept.Endpoint}, kept.Endpoint); r.status != 200 {
		t.Fatalf("unsubscribe: %d %s", r.status, r.code)
	}
	subs, _ := srv.Store.PushSubscriptions(ctx, "bob")
	if len(subs) != 0 {
		t.Fatalf("%d subscriptions left after unsubscribing", len(subs))
	}
}

func TestHangingPushServiceDoesNotHoldUpSends(t *testing.T) {
	srv, ps := pushServer(t, push.Config{Timeout: time.Minute, Workers: 2})
	c, alice, bob := chatPair(t, srv)
	sub := ps.Subscribe()
	subscribe(t, srv, bob, "subscribe", sub, sub.Endpoint)
	ps.Hang(sub.Endpoint)
	// Far less than the push timeout: every send must answer while the
	// push service holds every push request open.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 50 {
		if _, err := c.Send(ctx, alice, "bob", "while push hangs"); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	testutil.Eventually(t, 5*time.Second, "the push service to be holding requests", func() bool { return ps.Requests(sub.Endpoint) >= 1 })
}
