package httpapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

func TestHealthzNamesTheServerAndVersion(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	r := do(t, http.MethodGet, srv.URL+"/v1/healthz", nil, nil)
	var body map[string]string
	json.Unmarshal(r.body, &body)
	if r.status != 200 || body["server"] != testutil.Domain || body["status"] != "ok" || body["version"] != "test" {
		t.Fatalf("healthz: %d %s", r.status, r.body)
	}
}

func TestReadyzFailsOnceTheDatabaseIsUnusable(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	if r := do(t, http.MethodGet, srv.URL+"/v1/readyz", nil, nil); r.status != 200 {
		t.Fatalf("readyz with a working database: %d", r.status)
	}
	srv.Store.Close()
	if r := do(t, http.MethodGet, srv.URL+"/v1/readyz", nil, nil); r.status != 503 || r.code != server.CodeUnavailable {
		t.Fatalf("readyz with a closed database: %d %s", r.status, r.code)
	}
}

func TestUserRecordIsPublicAndComplete(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	bob := newIdentity(t, "bip340", "bob")
	register(t, srv, bob)
	r := do(t, http.MethodGet, srv.URL+"/v1/u/bob", nil, nil)
	var u map[string]any
	if err := json.Unmarshal(r.body, &u); err != nil || r.status != 200 {
		t.Fatalf("lookup: %d %s", r.status, r.body)
	}
	want := map[string]any{
		"handle": "bob", "server": testutil.Domain, "alg": "bip340",
		"primary_id": signing.PrimaryID("bip340", bob.signer.PublicKey()),
		"key":        signing.EncodeB64(bob.signer.PublicKey()),
		"enc_key":    signing.EncodeB64(bob.enc),
	}
	for k, v := range want {
		if u[k] != v {
			t.Errorf("%s = %v, want %v", k, u[k], v)
		}
	}
	if ts, _ := u["created_at"].(float64); ts < 1e9 {
		t.Errorf("created_at = %v, want Unix seconds", u["created_at"])
	}
	if r := do(t, http.MethodGet, srv.URL+"/v1/u/nobody", nil, nil); r.status != 404 || r.code != server.CodeUnknownHandle {
		t.Fatalf("unknown handle: %d %s", r.status, r.code)
	}
}

func TestWebFinger(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	register(t, srv, newIdentity(t, "ed25519", "alice"))
	cases := []struct {
		name, resource string
		status         int
		code           string
	}{
		{"registered handle", "acct:alice@" + testutil.Domain, 200, ""},
		{"domain in another case", "acct:alice@CHAT.test", 200, ""},
		{"unknown handle", "acct:nobody@" + testutil.Domain, 404, server.CodeUnknownHandle},
		{"another server", "acct:alice@elsewhere.example", 404, server.CodeUnknownHandle},
		{"missing resource", "", 400, server.CodeInvalidResource},
		{"not an acct URI", "https://chat.test/alice", 400, server.CodeInvalidResource},
		{"no domain", "acct:alice", 400, server.CodeInvalidResource},
		{"two at signs", "acct:alice@x@" + testutil.Domain, 400, server.CodeInvalidResource},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, http.MethodGet, srv.URL+"/.well-known/webfinger?resource="+tc.resource, nil, nil)
			if r.status != tc.status || r.code != tc.code {
				t.Fatalf("got %d %s (%s), want %d %s", r.status, r.code, r.body, tc.status, tc.code)
			}
			if tc.status != 200 {
				return
			}
			var jrd struct {
				Subject string
				Links   []struct{ Rel, Type, Href string }
			}
			json.Unmarshal(r.body, &jrd)
			if r.header.Get("Content-Type") != "application/jrd+json" || jrd.Subject != "acct:alice@"+testutil.Domain ||
				len(jrd.Links) != 1 || jrd.Links[0].Href != "https://"+testutil.Domain+"/v1/u/alice" {
				t.Fatalf("JRD %s (%s)", r.body, r.header.Get("Content-Type"))
			}
		})
	}
}

func TestRootServesTheWebApp(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	res, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(b), "kez-chat") {
		t.Fatalf("GET /: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if r := do(t, http.MethodPost, srv.URL+"/", nil, nil); r.status != 405 || r.code != server.CodeMethodNotAllowed {
		t.Fatalf("POST /: %d %s", r.status, r.code)
	}
}

func TestAckDeletesUpToNAndSeqKeepsGrowing(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	for _, id := range []string{"a", "b", "c"} {
		postJSON(t, srv.URL+"/v1/messages", alice.sign(t, alice.messagePayload("alice", id, []byte(id))))
	}
	if n := ack(t, srv, alice, 2); n != 2 {
		t.Fatalf("ack up to 2 deleted %d, want 2", n)
	}
	page := poll(t, srv, alice, 0)
	if len(page.Messages) != 1 || page.Messages[0].Seq != 3 || page.Next != 3 {
		t.Fatalf("after ack: %+v", page)
	}
	r := postJSON(t, srv.URL+"/v1/messages", alice.sign(t, alice.messagePayload("alice", "d", []byte("d"))))
	var receipt server.Receipt
	json.Unmarshal(r.body, &receipt)
	if receipt.Seq != 4 {
		t.Fatalf("seq after ack = %d, want 4 (never reused)", receipt.Seq)
	}
	// The envelope is the sender's signed document, byte for byte canonical.
	env := poll(t, srv, alice, 3).Messages[0]
	canonical, pub, err := env.Message.Verify()
	if err != nil || string(pub) != string(alice.signer.PublicKey()) || string(canonical) != string(env.Message.Payload) {
		t.Fatalf("stored envelope does not verify as sent: %v", err)
	}
}
