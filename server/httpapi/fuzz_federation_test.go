package httpapi_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// FuzzFederationBodies posts arbitrary bodies to a federated server's
// routes that take documents from or for other servers (messages, typing,
// privacy): whatever arrives,
// the answer is a JSON body below 500, except 503 unavailable when a
// sender's domain named in it cannot be asked (nothing listens there), and
// nothing panics.
func FuzzFederationBodies(f *testing.F) {
	srv := testutil.StartServer(f, testutil.Options{Federation: &app.Federation{}})
	domain := srv.Service.Domain()
	alice := newIdentity(f, "ed25519", "alice")
	relayed := func(from, server string) []byte {
		b, _ := json.Marshal(map[string]any{"messages": []signing.Signed{alice.sign(f, map[string]any{
			"type": "kez.chat.message/v1", "server": server, "from": from, "to": "bob",
			"id": "seed", "ts": time.Now().Unix(), "ct": "Y3Q"})}})
		return b
	}
	for _, seed := range [][]byte{
		relayed("alice@127.0.0.1:1", domain), relayed("alice@"+domain, domain), relayed("alice", "two.example"),
		[]byte(`{"messages":[]}`), []byte(`{"messages":[{"payload":{"from":"a@b@c"},"signature":{}}]}`),
		[]byte(`{"strangers":"refuse","known":["x@y.example"],"blocked":["z.example","@"]}`),
		[]byte(`{"payload":{"type":"kez.chat.typing/v1","server":"` + domain + `","from":"a@127.0.0.1:1","ts":1,"to":[{"to":"bob","ct":"eA"}]},"signature":{"alg":"ed25519","key":"AA","sig":"AA"}}`),
	} {
		f.Add(seed)
	}
	handler := srv.API.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, req := range []*http.Request{
			httptest.NewRequest(http.MethodPost, "/v1/federation/messages", bytes.NewReader(body)),
			httptest.NewRequest(http.MethodPost, "/v1/federation/typing", bytes.NewReader(body)),
			httptest.NewRequest(http.MethodPost, "/v1/messages", bytes.NewReader(body)),
			httptest.NewRequest(http.MethodPut, "/v1/privacy/alice", bytes.NewReader(body)),
		} {
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, req)
			var e struct{ Error struct{ Code string } }
			_ = json.Unmarshal(rec.Body.Bytes(), &e)
			if rec.Code >= 500 && !(rec.Code == http.StatusServiceUnavailable && e.Error.Code == server.CodeUnavailable) {
				t.Fatalf("%s %s answered %d: %s", req.Method, req.URL, rec.Code, rec.Body)
			}
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %s answered a body that is not JSON: %q", req.Method, req.URL, rec.Body)
			}
		}
	})
}
