package httpapi_test

import (
	"net/http"
	"testing"

	"kez.lat/chat/server/testutil"
)

// TestPublicReadsAnswerAnyOriginRefusalsIncluded: what a web app reads of
// people on other servers (docs/protocol.md, "Conversations across
// servers") carries Access-Control-Allow-Origin: * on every answer, so
// that the app reads a refusal's code and not a network error.
func TestPublicReadsAnswerAnyOriginRefusalsIncluded(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	unknown := "0000000000000000000000000000000000000000"
	for _, tt := range []struct {
		name, url string
		status    int
	}{
		{"a record", srv.URL + "/v1/u/alice", http.StatusOK},
		{"an unknown record", srv.URL + "/v1/u/nobody", http.StatusNotFound},
		{"WebFinger", srv.URL + "/.well-known/webfinger?resource=acct:alice@" + testutil.Domain, http.StatusOK},
		{"WebFinger of nobody", srv.URL + "/.well-known/webfinger?resource=acct:nobody@" + testutil.Domain, http.StatusNotFound},
		{"a malformed WebFinger resource", srv.URL + "/.well-known/webfinger?resource=alice", http.StatusBadRequest},
		{"an unknown blob", srv.URL + "/v1/blobs/AAAA", http.StatusNotFound},
		{"an unknown key document", sig.URL + "/v1/keys/" + unknown, http.StatusNotFound},
		{"an unknown key log", sig.URL + "/v1/keys/" + unknown + "/log", http.StatusNotFound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, http.MethodGet, tt.url, nil, map[string]string{"Origin": "https://other.example"})
			if r.status != tt.status || r.header.Get("Access-Control-Allow-Origin") != "*" {
				t.Fatalf("GET %s: %d, Access-Control-Allow-Origin %q; want %d and *", tt.url, r.status, r.header.Get("Access-Control-Allow-Origin"), tt.status)
			}
		})
	}
}
