package httpapi_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"kez.lat/chat/server/testutil"
)

// FuzzRequestBodies posts arbitrary bodies to the signed-document routes and
// arbitrary auth values to the inbox: whatever arrives, the answer is a
// well-formed response below 500, and nothing panics.
func FuzzRequestBodies(f *testing.F) {
	srv := testutil.StartServer(f, testutil.Options{})
	alice := newIdentity(f, "ed25519", "alice")
	register(f, srv, alice)
	valid, _ := json.Marshal(alice.sign(f, alice.messagePayload("alice", "seed", []byte("ct"))))
	reg, _ := json.Marshal(alice.sign(f, alice.registerPayload()))
	for _, seed := range [][]byte{
		valid, reg, []byte(`{}`), []byte(`{"payload":{},"signature":{}}`), []byte(`{"payload":[],"signature":null}`),
		[]byte(`{"payload":{"a":"\ud800"},"signature":{"alg":"bip340","key":"AA","sig":"AA"}}`),
		[]byte("{\"payload\":{\"\xff\":1}}"), []byte(`{"payload":{"ts":1e999}}`),
	} {
		f.Add(seed, "1700000000:AAAA")
	}
	handler := srv.API.Handler()
	f.Fuzz(func(t *testing.T, body []byte, auth string) {
		for _, req := range []*http.Request{
			httptest.NewRequest(http.MethodPost, "/v1/messages", bytes.NewReader(body)),
			httptest.NewRequest(http.MethodPost, "/v1/register", bytes.NewReader(body)),
			httptest.NewRequest(http.MethodGet, "/v1/inbox/alice?since=0", nil),
		} {
			req.Header.Set("X-KEZ-Auth", auth)
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, req)
			if rec.Code >= 500 {
				t.Fatalf("%s %s answered %d: %s", req.Method, req.URL, rec.Code, rec.Body)
			}
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %s answered a body that is not JSON: %q", req.Method, req.URL, rec.Body)
			}
		}
	})
}
