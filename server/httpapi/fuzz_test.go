package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
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
			if rec.Code/100 == 3 {
				continue // net/http's redirect to the clean path
			}
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %s answered a body that is not JSON: %q", req.Method, req.URL, rec.Body)
			}
		}
	})
}

// FuzzKeyDocuments posts arbitrary bodies to the sig-server's POST
// /v1/keys and arbitrary paths to its reads: the answer is always a JSON
// body below 500.
func FuzzKeyDocuments(f *testing.F) {
	sig := testutil.StartSigServer(f, testutil.SigOptions{})
	chain := newKeyChain(f, "ed25519")
	chain.mustPublish(f, sig.URL)
	v2, _ := json.Marshal(chain.primary.sign(f, chain.payload(newSigner(f, "bip340"))))
	v1, _ := json.Marshal(chain.docs[0])
	for _, seed := range [][]byte{
		v1, v2, []byte(`{}`), []byte(`{"payload":{"type":"kez.sig.keys/v1","version":1e400},"signature":{}}`),
		[]byte(`{"payload":{"signing_keys":[{"alg":"ed25519","key":"","label":"\u202e"}]},"signature":{"alg":"ed25519"}}`),
	} {
		f.Add(seed, chain.primaryID()+"/log?from=1&limit=1000")
	}
	f.Add([]byte(`{}`), ".") // ServeMux redirects unclean paths

	handler := sig.API.Handler()
	f.Fuzz(func(t *testing.T, body []byte, path string) {
		reqs := []*http.Request{httptest.NewRequest(http.MethodPost, "/v1/keys", bytes.NewReader(body))}
		if u, err := url.Parse("/v1/keys/" + path); err == nil {
			reqs = append(reqs, &http.Request{Method: http.MethodGet, URL: u, Header: http.Header{}, RemoteAddr: "192.0.2.1:1234"})
		}
		for _, req := range reqs {
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, req.WithContext(context.Background()))
			if rec.Code >= 500 {
				t.Fatalf("%s %s answered %d: %s", req.Method, req.URL, rec.Code, rec.Body)
			}
			if rec.Code/100 == 3 {
				continue // net/http's redirect to the clean path
			}
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %s answered a body that is not JSON: %q", req.Method, req.URL, rec.Body)
			}
		}
	})
}
