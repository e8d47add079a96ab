package httpapi_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

func TestSendRefusesEachBadMessageWithItsOwnCode(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice := newIdentity(t, "ed25519", "alice")
	bob := newIdentity(t, "bip340", "bob")
	register(t, srv, alice)
	register(t, srv, bob)
	mallory := newIdentity(t, "ed25519", "alice") // claims to be alice

	cases := []struct {
		name   string
		doc    func() any
		status int
		code   string
	}{
		{"signed by a key that is not alice's", func() any {
			return mallory.sign(t, mallory.messagePayload("bob", "m1", []byte("x")))
		}, 403, server.CodeKeyNotAuthorized},
		{"from an unregistered sender", func() any {
			eve := newIdentity(t, "ed25519", "eve")
			return eve.sign(t, eve.messagePayload("bob", "m1", []byte("x")))
		}, 403, server.CodeUnknownSender},
		{"to an unknown recipient", func() any {
			return alice.sign(t, alice.messagePayload("nobody", "m1", []byte("x")))
		}, 404, server.CodeUnknownRecipient},
		{"another server", func() any {
			p := alice.messagePayload("bob", "m1", []byte("x"))
			p["server"] = "other.example"
			return alice.sign(t, p)
		}, 400, server.CodeWrongServer},
		{"a registration signature", func() any {
			p := alice.messagePayload("bob", "m1", []byte("x"))
			p["type"] = server.TypeRegister
			return alice.sign(t, p)
		}, 400, server.CodeWrongType},
		{"stale ts", func() any {
			p := alice.messagePayload("bob", "m1", []byte("x"))
			p["ts"] = time.Now().Add(-10 * time.Minute).Unix()
			return alice.sign(t, p)
		}, 400, server.CodeStaleTimestamp},
		{"empty id", func() any {
			return alice.sign(t, alice.messagePayload("bob", "", []byte("x")))
		}, 400, server.CodeInvalidMessageID},
		{"id with a slash", func() any {
			return alice.sign(t, alice.messagePayload("bob", "a/b", []byte("x")))
		}, 400, server.CodeInvalidMessageID},
		{"empty ct", func() any {
			return alice.sign(t, alice.messagePayload("bob", "m1", nil))
		}, 400, server.CodeInvalidField},
		{"ct not base64url", func() any {
			p := alice.messagePayload("bob", "m1", nil)
			p["ct"] = "not base64!"
			return alice.sign(t, p)
		}, 400, server.CodeInvalidEncoding},
		{"ct of 64 KiB and one byte", func() any {
			return alice.sign(t, alice.messagePayload("bob", "m1", make([]byte, server.MaxCiphertext+1)))
		}, 413, server.CodeCiphertextTooLarge},
		{"missing to", func() any {
			p := alice.messagePayload("bob", "m1", []byte("x"))
			delete(p, "to")
			return alice.sign(t, p)
		}, 404, server.CodeUnknownRecipient},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := postJSON(t, srv.URL+"/v1/messages", tc.doc())
			if r.status != tc.status || r.code != tc.code {
				t.Fatalf("got %d %s (%s), want %d %s", r.status, r.code, r.body, tc.status, tc.code)
			}
		})
	}
}

func TestSendAcceptsCiphertextOfExactly64KiB(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	r := postJSON(t, srv.URL+"/v1/messages", alice.sign(t, alice.messagePayload("alice", "big", randomCT(t, server.MaxCiphertext))))
	if r.status != http.StatusCreated {
		t.Fatalf("got %d %s, want 201", r.status, r.code)
	}
}

func TestRetriedMessageAnswersTheOriginalSeqAndADifferentOneConflicts(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	doc := alice.sign(t, alice.messagePayload("alice", "once", []byte("first")))
	first := postJSON(t, srv.URL+"/v1/messages", doc)
	postJSON(t, srv.URL+"/v1/messages", alice.sign(t, alice.messagePayload("alice", "other", []byte("x"))))
	retry := postJSON(t, srv.URL+"/v1/messages", doc)
	if first.status != 201 || retry.status != 201 || string(first.body) != string(retry.body) {
		t.Fatalf("first %d %s, retry %d %s: want the same receipt", first.status, first.body, retry.status, retry.body)
	}
	if retry.header.Get("Idempotent-Replayed") != "true" {
		t.Fatal("retry not marked Idempotent-Replayed")
	}
	if first.header.Get("Idempotent-Replayed") != "" {
		t.Fatal("first send marked as a replay")
	}
	conflict := postJSON(t, srv.URL+"/v1/messages", alice.sign(t, alice.messagePayload("alice", "once", []byte("second"))))
	if conflict.status != 409 || conflict.code != server.CodeMessageIDConflict {
		t.Fatalf("same id, other message: %d %s", conflict.status, conflict.code)
	}
	page := poll(t, srv, alice, 0)
	if len(page.Messages) != 2 {
		t.Fatalf("inbox holds %d messages, want 2 (the retry stored once)", len(page.Messages))
	}
}

func TestFullInboxRefusesSendsUntilAcknowledged(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) { c.Service.MaxPending = 2 }})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	send := func(id string) response {
		return postJSON(t, srv.URL+"/v1/messages", alice.sign(t, alice.messagePayload("alice", id, []byte(id))))
	}
	send("1")
	send("2")
	if r := send("3"); r.status != 409 || r.code != server.CodeInboxFull {
		t.Fatalf("third message to a full inbox: %d %s", r.status, r.code)
	}
	ack(t, srv, alice, 1)
	if r := send("4"); r.status != 201 {
		t.Fatalf("send after ack: %d %s", r.status, r.code)
	}
}

func TestSendsPastTheHandleLimitGet429WithRetryAfter(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) { c.HandleSendLimit = app.Limit{Rate: 0.01, Burst: 2} }})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	var last response
	for i := range 3 {
		last = postJSON(t, srv.URL+"/v1/messages", alice.sign(t, alice.messagePayload("alice", strconv.Itoa(i), []byte("x"))))
	}
	if last.status != 429 || last.code != server.CodeRateLimited || last.header.Get("Retry-After") == "" {
		t.Fatalf("third send: %d %s Retry-After=%q", last.status, last.code, last.header.Get("Retry-After"))
	}
}

func TestRegistrationsPastTheAddressLimitGet429(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) { c.RegisterLimit = app.Limit{Rate: 0.01, Burst: 2} }})
	for i := range 2 {
		register(t, srv, newIdentity(t, "ed25519", "user"+strconv.Itoa(i)))
	}
	id := newIdentity(t, "ed25519", "user2")
	r := postJSON(t, srv.URL+"/v1/register", id.sign(t, id.registerPayload()))
	if r.status != 429 || r.code != server.CodeRateLimited || r.header.Get("Retry-After") == "" {
		t.Fatalf("third registration: %d %s", r.status, r.code)
	}
}

func TestInboxAuthRefusals(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice := newIdentity(t, "ed25519", "alice")
	bob := newIdentity(t, "bip340", "bob")
	register(t, srv, alice)
	register(t, srv, bob)
	now := time.Now().Unix()
	path := "/v1/inbox/alice"
	cases := []struct {
		name, method, query, auth string
		status                    int
		code                      string
	}{
		{"poll without auth", "GET", "?since=0", "", 400, server.CodeMissingAuth},
		{"poll with malformed auth", "GET", "?since=0", "yesterday:abc", 401, server.CodeBadAuth},
		{"poll signed by bob", "GET", "?since=0", bob.auth(t, "GET", path, now, "since=0"), 401, server.CodeBadAuth},
		{"poll signed for another since", "GET", "?since=5", alice.auth(t, "GET", path, now, "since=0"), 401, server.CodeBadAuth},
		{"stream auth used to poll", "GET", "?since=0", alice.auth(t, "GET", path+"/stream", now), 401, server.CodeBadAuth},
		{"poll auth six minutes old", "GET", "?since=0", alice.auth(t, "GET", path, now-360, "since=0"), 401, server.CodeStaleAuth},
		{"poll with since in another spelling", "GET", "?since=007", alice.auth(t, "GET", path, now, "since=7"), 400, server.CodeInvalidField},
		{"ack without upto", "DELETE", "", alice.auth(t, "DELETE", path, now, "upto="), 400, server.CodeInvalidField},
		{"ack signed for another upto", "DELETE", "?upto=9", alice.auth(t, "DELETE", path, now, "upto=1"), 401, server.CodeBadAuth},
		{"poll for an unknown handle", "GET", "?since=0", alice.auth(t, "GET", "/v1/inbox/nobody", now, "since=0"), 404, server.CodeUnknownHandle},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := path
			if strings.Contains(tc.name, "unknown handle") {
				p = "/v1/inbox/nobody"
			}
			h := map[string]string{}
			if tc.auth != "" {
				h["X-KEZ-Auth"] = tc.auth
			}
			r := do(t, tc.method, srv.URL+p+tc.query, nil, h)
			if r.status != tc.status || r.code != tc.code {
				t.Fatalf("got %d %s (%s), want %d %s", r.status, r.code, r.body, tc.status, tc.code)
			}
		})
	}
}

func TestAckSignatureIsAcceptedOnce(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	h := map[string]string{"X-KEZ-Auth": alice.auth(t, "DELETE", "/v1/inbox/alice", time.Now().Unix(), "upto=0")}
	if r := do(t, "DELETE", srv.URL+"/v1/inbox/alice?upto=0", nil, h); r.status != 200 {
		t.Fatalf("first ack: %d %s", r.status, r.code)
	}
	if r := do(t, "DELETE", srv.URL+"/v1/inbox/alice?upto=0", nil, h); r.status != 401 || r.code != server.CodeReplayedAuth {
		t.Fatalf("replayed ack: %d %s, want 401 replayed_auth", r.status, r.code)
	}
}

func TestStreamAuthRefusals(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	now := time.Now().Unix()
	cases := []struct {
		name, query string
		status      int
		code        string
	}{
		{"no auth", "", 400, server.CodeMissingAuth},
		{"poll auth used for the stream", "?auth=" + alice.auth(t, "GET", "/v1/inbox/alice", now, "since=0"), 401, server.CodeBadAuth},
		{"stale auth", "?auth=" + alice.auth(t, "GET", "/v1/inbox/alice/stream", now-400), 401, server.CodeStaleAuth},
		{"garbage auth", "?auth=%00%01", 401, server.CodeBadAuth},
		{"bad since", "?since=-1&auth=" + alice.auth(t, "GET", "/v1/inbox/alice/stream", now), 400, server.CodeInvalidField},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, "GET", srv.URL+"/v1/inbox/alice/stream"+tc.query, nil, nil)
			if r.status != tc.status || r.code != tc.code {
				t.Fatalf("got %d %s (%s), want %d %s", r.status, r.code, r.body, tc.status, tc.code)
			}
		})
	}
}

func TestRepeatedAuthFailuresFromOneAddressGet429(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) { c.FailedAuthLimit = app.Limit{Rate: 0.01, Burst: 3} }})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	bad := map[string]string{"X-KEZ-Auth": strconv.FormatInt(time.Now().Unix(), 10) + ":" + signing.EncodeB64(make([]byte, 64))}
	var codes []string
	for range 5 {
		codes = append(codes, do(t, "GET", srv.URL+"/v1/inbox/alice", nil, bad).code)
	}
	if codes[0] != server.CodeBadAuth || codes[4] != server.CodeRateLimited {
		t.Fatalf("codes %v: want bad_auth first and rate_limited once over the limit", codes)
	}
}

func TestACorrectlySignedRequestPassesWhateverFailedFromItsAddressOrForItsHandle(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) { c.FailedAuthLimit = app.Limit{Rate: 0.01, Burst: 3} }})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	bad := map[string]string{"X-KEZ-Auth": strconv.FormatInt(time.Now().Unix(), 10) + ":" + signing.EncodeB64(make([]byte, 64))}
	for range 10 {
		do(t, "GET", srv.URL+"/v1/inbox/alice", nil, bad)
	}
	if r := do(t, "GET", srv.URL+"/v1/inbox/alice", nil, bad); r.code != server.CodeRateLimited {
		t.Fatalf("another failure: %d %s, want rate_limited", r.status, r.code)
	}
	// The same address and handle, signed by alice: poll fails the test
	// on anything but 200.
	poll(t, srv, alice, 0)
}
