package httpapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

func TestRegisterRefusesEachBadDocumentWithItsOwnCode(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	taken := newIdentity(t, "ed25519", "taken")
	register(t, srv, taken)

	cases := []struct {
		name   string
		build  func(id *identity) any
		status int
		code   string
	}{
		{"tampered payload", func(id *identity) any {
			doc := id.sign(t, id.registerPayload())
			doc.Payload = json.RawMessage(strings.Replace(string(doc.Payload), `"handle":"`, `"handle":"x`, 1))
			return doc
		}, 401, server.CodeBadSignature},
		{"signature by another key", func(id *identity) any {
			doc := id.sign(t, id.registerPayload())
			other := newIdentity(t, "ed25519", "other")
			doc.Signature.Key = signing.EncodeB64(other.signer.PublicKey())
			return doc
		}, 401, server.CodeBadSignature},
		{"unknown alg", func(id *identity) any {
			doc := id.sign(t, id.registerPayload())
			doc.Signature.Alg = "rsa"
			return doc
		}, 400, server.CodeUnknownAlg},
		{"alg swapped to the other suite", func(id *identity) any {
			doc := id.sign(t, id.registerPayload())
			doc.Signature.Alg = "bip340"
			return doc
		}, 401, server.CodeBadSignature},
		{"another server", func(id *identity) any {
			p := id.registerPayload()
			p["server"] = "evil.example"
			return id.sign(t, p)
		}, 400, server.CodeWrongServer},
		{"a message signature", func(id *identity) any {
			p := id.registerPayload()
			p["type"] = server.TypeMessage
			return id.sign(t, p)
		}, 400, server.CodeWrongType},
		{"ts six minutes old", func(id *identity) any {
			p := id.registerPayload()
			p["ts"] = time.Now().Add(-6 * time.Minute).Unix()
			return id.sign(t, p)
		}, 400, server.CodeStaleTimestamp},
		{"ts six minutes ahead", func(id *identity) any {
			p := id.registerPayload()
			p["ts"] = time.Now().Add(6 * time.Minute).Unix()
			return id.sign(t, p)
		}, 400, server.CodeStaleTimestamp},
		{"primary_id of another key", func(id *identity) any {
			p := id.registerPayload()
			p["primary_id"] = signing.PrimaryID("ed25519", taken.signer.PublicKey())
			return id.sign(t, p)
		}, 400, server.CodePrimaryIDMismatch},
		{"handle too short", func(id *identity) any {
			p := id.registerPayload()
			p["handle"] = "ab"
			return id.sign(t, p)
		}, 400, server.CodeInvalidHandle},
		{"handle with upper case", func(id *identity) any {
			p := id.registerPayload()
			p["handle"] = "Alice"
			return id.sign(t, p)
		}, 400, server.CodeInvalidHandle},
		{"handle starting with a dot", func(id *identity) any {
			p := id.registerPayload()
			p["handle"] = ".alice"
			return id.sign(t, p)
		}, 400, server.CodeInvalidHandle},
		{"handle of 33 characters", func(id *identity) any {
			p := id.registerPayload()
			p["handle"] = strings.Repeat("a", 33)
			return id.sign(t, p)
		}, 400, server.CodeInvalidHandle},
		{"reserved handle", func(id *identity) any {
			p := id.registerPayload()
			p["handle"] = "postmaster"
			return id.sign(t, p)
		}, 400, server.CodeReservedHandle},
		{"handle taken", func(id *identity) any {
			p := id.registerPayload()
			p["handle"] = "taken"
			return id.sign(t, p)
		}, 409, server.CodeHandleTaken},
		{"primary_id taken", func(id *identity) any {
			p := taken.registerPayload()
			p["handle"] = "taken-again"
			return taken.sign(t, p)
		}, 409, server.CodePrimaryIDTaken},
		{"enc_key of 31 bytes", func(id *identity) any {
			p := id.registerPayload()
			p["enc_key"] = signing.EncodeB64(make([]byte, 31))
			return id.sign(t, p)
		}, 400, server.CodeInvalidField},
		{"enc_key with padding", func(id *identity) any {
			p := id.registerPayload()
			p["enc_key"] = signing.EncodeB64(id.enc) + "="
			return id.sign(t, p)
		}, 400, server.CodeInvalidEncoding},
		{"unknown payload field", func(id *identity) any {
			p := id.registerPayload()
			p["admin"] = true
			return id.sign(t, p)
		}, 400, server.CodeUnknownField},
		{"ts as a string", func(id *identity) any {
			p := id.registerPayload()
			p["ts"] = fmt.Sprint(time.Now().Unix())
			return id.sign(t, p)
		}, 400, server.CodeInvalidField},
		{"unknown top-level field", func(id *identity) any {
			doc := id.sign(t, id.registerPayload())
			return map[string]any{"payload": doc.Payload, "signature": doc.Signature, "extra": 1}
		}, 400, server.CodeUnknownField},
		{"payload that is not an object", func(id *identity) any {
			doc := id.sign(t, id.registerPayload())
			doc.Payload = json.RawMessage(`[1,2]`)
			return doc
		}, 400, server.CodeInvalidField},
		{"sig in standard base64", func(id *identity) any {
			doc := id.sign(t, id.registerPayload())
			doc.Signature.Sig = strings.NewReplacer("-", "+", "_", "/").Replace(doc.Signature.Sig) + "=="
			return doc
		}, 400, server.CodeInvalidEncoding},
		{"key of 33 bytes", func(id *identity) any {
			doc := id.sign(t, id.registerPayload())
			doc.Signature.Key = signing.EncodeB64(make([]byte, 33))
			return doc
		}, 400, server.CodeInvalidField},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := newIdentity(t, "ed25519", "newcomer")
			r := postJSON(t, srv.URL+"/v1/register", tc.build(id))
			if r.status != tc.status || r.code != tc.code {
				t.Fatalf("got %d %s (%s), want %d %s", r.status, r.code, r.body, tc.status, tc.code)
			}
		})
	}
}

func TestMalformedBodiesGetClear4xxNever5xx(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	cases := []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"empty body", "/v1/register", ``, 400, server.CodeInvalidJSON},
		{"truncated JSON", "/v1/register", `{"payload":{`, 400, server.CodeInvalidJSON},
		{"trailing data", "/v1/messages", `{"payload":{},"signature":{}} {}`, 400, server.CodeInvalidJSON},
		{"array body", "/v1/messages", `[]`, 400, server.CodeInvalidField},
		{"signature as a string", "/v1/messages", `{"payload":{},"signature":"x"}`, 400, server.CodeInvalidField},
		{"duplicate payload members", "/v1/messages", `{"payload":{"a":1,"a":2},"signature":{"alg":"ed25519","key":"","sig":""}}`, 400, server.CodeInvalidJSON},
		{"invalid UTF-8", "/v1/register", "{\"payload\":{\"a\":\"\xff\"},\"signature\":{\"alg\":\"ed25519\",\"key\":\"\",\"sig\":\"\"}}", 400, server.CodeInvalidJSON},
		{"register body over 4 KiB", "/v1/register", `{"payload":{"pad":"` + strings.Repeat("a", 5000) + `"}}`, 413, server.CodeBodyTooLarge},
		{"message body over 96 KiB", "/v1/messages", `{"payload":{"ct":"` + strings.Repeat("a", 100<<10) + `"}}`, 413, server.CodeBodyTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, http.MethodPost, srv.URL+tc.path, []byte(tc.body), nil)
			if r.status != tc.status || r.code != tc.code {
				t.Fatalf("got %d %s (%s), want %d %s", r.status, r.code, r.body, tc.status, tc.code)
			}
		})
	}
}

func TestUnknownRoutesAndMethodsAnswerJSON(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	if r := do(t, http.MethodGet, srv.URL+"/v1/nope", nil, nil); r.status != 404 || r.code != server.CodeNotFound {
		t.Fatalf("unknown route: %d %s", r.status, r.code)
	}
	if r := do(t, http.MethodPut, srv.URL+"/v1/register", nil, nil); r.status != 405 || r.code != server.CodeMethodNotAllowed {
		t.Fatalf("wrong method: %d %s", r.status, r.code)
	}
}

func TestConcurrentRegistrationsOfOneHandleGiveExactlyOne201(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	const n = 16
	docs := make([]signing.Signed, n)
	for i := range docs {
		id := newIdentity(t, []string{"ed25519", "bip340"}[i%2], "contested")
		docs[i] = id.sign(t, id.registerPayload())
	}
	statuses := make([]response, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range docs {
		wg.Go(func() {
			<-start
			statuses[i] = postJSON(t, srv.URL+"/v1/register", docs[i])
		})
	}
	close(start)
	wg.Wait()
	created := 0
	for _, r := range statuses {
		switch {
		case r.status == http.StatusCreated:
			created++
		case r.status == http.StatusConflict && r.code == server.CodeHandleTaken:
		default:
			t.Errorf("unexpected answer %d %s", r.status, r.code)
		}
	}
	if created != 1 {
		t.Fatalf("%d registrations succeeded, want exactly 1", created)
	}
}
