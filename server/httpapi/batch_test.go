package httpapi_test

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// groupBody is a group send's body of docs.
func groupBody(t testing.TB, docs ...any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"messages": docs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// batchAuth is by's X-KEZ-Auth for a group send of body to handle.
func batchAuth(t testing.TB, by *identity, handle string, body []byte) string {
	t.Helper()
	sum := sha256.Sum256(body)
	return by.auth(t, http.MethodPost, "/v1/batch/"+handle, time.Now().Unix(), "sha256="+signing.EncodeB64(sum[:]))
}

// postBatch posts body as handle's group send with auth.
func postBatch(t testing.TB, srv *testutil.Server, handle string, body []byte, auth string) response {
	t.Helper()
	h := map[string]string{"Content-Type": "application/json"}
	if auth != "" {
		h["X-KEZ-Auth"] = auth
	}
	return do(t, http.MethodPost, srv.URL+"/v1/batch/"+handle, body, h)
}

// sendGroup posts docs as id's group send, signed by id.
func sendGroup(t testing.TB, srv *testutil.Server, id *identity, docs ...any) response {
	t.Helper()
	body := groupBody(t, docs...)
	return postBatch(t, srv, id.handle, body, batchAuth(t, id, id.handle, body))
}

// errorIndex is the index of an error answer, -1 when it has none.
func errorIndex(t testing.TB, r response) int {
	t.Helper()
	var e struct {
		Error struct {
			Index *int `json:"index"`
		} `json:"error"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatal(err)
	}
	if e.Error.Index == nil {
		return -1
	}
	return *e.Error.Index
}

type receipts struct {
	Receipts []server.Receipt `json:"receipts"`
}

func TestGroupSendStoresOneEnvelopePerRecipientAndAnswersAReplayWithTheSameReceipts(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice, bob, carol := newIdentity(t, "ed25519", "alice"), newIdentity(t, "bip340", "bob"), newIdentity(t, "ed25519", "carol")
	for _, id := range []*identity{alice, bob, carol} {
		register(t, srv, id)
	}
	body := groupBody(t,
		alice.sign(t, alice.messagePayload("bob", "Q2n:bob", []byte("to bob"))),
		alice.sign(t, alice.messagePayload("carol", "Q2n:carol", []byte("to carol"))),
		alice.sign(t, alice.messagePayload("alice", "Q2n:alice", []byte("sync copy"))))
	auth := batchAuth(t, alice, "alice", body)
	r := postBatch(t, srv, "alice", body, auth)
	if r.status != http.StatusCreated || r.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("group send: %d %s %s", r.status, r.code, r.body)
	}
	var got receipts
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatal(err)
	}
	want := []server.Receipt{{To: "bob", Seq: 1, ID: "Q2n:bob"}, {To: "carol", Seq: 1, ID: "Q2n:carol"}, {To: "alice", Seq: 1, ID: "Q2n:alice"}}
	if fmt.Sprint(got.Receipts) != fmt.Sprint(want) {
		t.Fatalf("receipts %v, want %v", got.Receipts, want)
	}
	for _, id := range []*identity{bob, carol, alice} {
		page := poll(t, srv, id, 0)
		if len(page.Messages) != 1 {
			t.Fatalf("%s's inbox holds %d messages, want 1", id.handle, len(page.Messages))
		}
		var p server.MessagePayload
		if err := json.Unmarshal(page.Messages[0].Message.Payload, &p); err != nil || p.To != id.handle || p.From != "alice" {
			t.Fatalf("%s received %s (%v)", id.handle, page.Messages[0].Message.Payload, err)
		}
		if _, _, err := page.Messages[0].Message.Verify(); err != nil {
			t.Fatalf("%s's message does not verify: %v", id.handle, err)
		}
	}
	// A retry with the same header: the same receipts, nothing stored.
	r = postBatch(t, srv, "alice", body, auth)
	if r.status != http.StatusOK || r.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replayed group send: %d %s, Idempotent-Replayed %q", r.status, r.code, r.header.Get("Idempotent-Replayed"))
	}
	var again receipts
	if err := json.Unmarshal(r.body, &again); err != nil || fmt.Sprint(again.Receipts) != fmt.Sprint(want) {
		t.Fatalf("replay receipts %v, %v; want %v", again.Receipts, err, want)
	}
	if n := len(poll(t, srv, bob, 0).Messages); n != 1 {
		t.Fatalf("bob's inbox holds %d messages after the replay, want 1", n)
	}
}

func TestGroupSendRefusesEachBadRequestWithItsCodeAndTheDocumentsIndex(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice, bob, carol := newIdentity(t, "ed25519", "alice"), newIdentity(t, "ed25519", "bob"), newIdentity(t, "ed25519", "carol")
	for _, id := range []*identity{alice, bob, carol} {
		register(t, srv, id)
	}
	mallory := newIdentity(t, "ed25519", "alice") // claims to be alice
	ok := func(to string) any { return alice.sign(t, alice.messagePayload(to, "g:"+to, []byte("x"))) }
	with := func(to string, change func(map[string]any)) any {
		p := alice.messagePayload(to, "g:"+to, []byte("x"))
		change(p)
		return alice.sign(t, p)
	}
	many := make([]any, server.MaxBatchDocuments+1)
	for i := range many {
		many[i] = ok("bob")
	}
	cases := []struct {
		name   string
		body   []byte
		status int
		code   string
		index  int
	}{
		{"no documents", groupBody(t), 400, server.CodeInvalidField, -1},
		{"257 documents", groupBody(t, many...), 400, server.CodeInvalidField, -1},
		{"an unknown member", []byte(`{"messages":[],"extra":1}`), 400, server.CodeUnknownField, -1},
		{"not JSON", []byte(`{"messages":[`), 400, server.CodeInvalidJSON, -1},
		{"a body over 4 MiB", []byte(`{"messages":["` + strings.Repeat("x", 4<<20) + `"]}`), 413, server.CodeBodyTooLarge, -1},
		{"a document from bob", groupBody(t, ok("bob"), bob.sign(t, bob.messagePayload("carol", "b1", []byte("x")))), 400, server.CodeInvalidField, 1},
		{"two documents to bob", groupBody(t, ok("bob"), with("bob", func(p map[string]any) { p["id"] = "other" })), 400, server.CodeInvalidField, 1},
		{"two documents with one id", groupBody(t, ok("bob"), with("carol", func(p map[string]any) { p["id"] = "g:bob" })), 400, server.CodeInvalidField, 1},
		{"an unknown recipient", groupBody(t, ok("bob"), ok("carol"), ok("nobody")), 404, server.CodeUnknownRecipient, 2},
		{"a document signed by a key not alice's", groupBody(t, ok("bob"), mallory.sign(t, mallory.messagePayload("carol", "m", []byte("x")))), 403, server.CodeKeyNotAuthorized, 1},
		{"ct over 64 KiB", groupBody(t, ok("bob"), alice.sign(t, alice.messagePayload("carol", "big", make([]byte, server.MaxCiphertext+1)))), 413, server.CodeCiphertextTooLarge, 1},
		{"a bad id", groupBody(t, with("bob", func(p map[string]any) { p["id"] = "a/b" })), 400, server.CodeInvalidMessageID, 0},
		{"a stale ts", groupBody(t, ok("bob"), with("carol", func(p map[string]any) { p["ts"] = time.Now().Add(-time.Hour).Unix() })), 400, server.CodeStaleTimestamp, 1},
		{"another server", groupBody(t, with("bob", func(p map[string]any) { p["server"] = "other.example" })), 400, server.CodeWrongServer, 0},
		{"an unknown payload member", groupBody(t, ok("bob"), with("carol", func(p map[string]any) { p["Ct"] = "x" })), 400, server.CodeUnknownField, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := postBatch(t, srv, "alice", tc.body, batchAuth(t, alice, "alice", tc.body))
			if r.status != tc.status || r.code != tc.code {
				t.Fatalf("%d %s (%s), want %d %s", r.status, r.code, r.body, tc.status, tc.code)
			}
			if i := errorIndex(t, r); i != tc.index {
				t.Fatalf("index %d, want %d", i, tc.index)
			}
		})
	}
	for _, id := range []*identity{alice, bob, carol} {
		if n := len(poll(t, srv, id, 0).Messages); n != 0 {
			t.Fatalf("%s's inbox holds %d messages of refused group sends", id.handle, n)
		}
	}
}

func TestGroupSendAuthBindsTheHandleAndTheBody(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice, bob := newIdentity(t, "ed25519", "alice"), newIdentity(t, "ed25519", "bob")
	register(t, srv, alice)
	register(t, srv, bob)
	body := groupBody(t, alice.sign(t, alice.messagePayload("bob", "g:bob", []byte("x"))))
	other := groupBody(t, alice.sign(t, alice.messagePayload("bob", "g2:bob", []byte("y"))))
	for _, tc := range []struct {
		name string
		auth string
		code string
	}{
		{"no header", "", server.CodeMissingAuth},
		{"bob's header for alice's handle", batchAuth(t, bob, "alice", body), server.CodeBadAuth},
		{"alice's header for another body", batchAuth(t, alice, "alice", other), server.CodeBadAuth},
		{"alice's header for bob's handle", batchAuth(t, alice, "bob", body), server.CodeBadAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := postBatch(t, srv, "alice", body, tc.auth); r.code != tc.code {
				t.Fatalf("%d %s, want %s", r.status, r.code, tc.code)
			}
		})
	}
	// bob's own header does not carry alice's documents either.
	if r := postBatch(t, srv, "bob", body, batchAuth(t, bob, "bob", body)); r.status != 400 || r.code != server.CodeInvalidField || errorIndex(t, r) != 0 {
		t.Fatalf("alice's documents in bob's group send: %d %s index %d", r.status, r.code, errorIndex(t, r))
	}
	if n := len(poll(t, srv, bob, 0).Messages); n != 0 {
		t.Fatalf("bob's inbox holds %d messages", n)
	}
}

func TestGroupSendChecksWhoSignedEachDocumentButDoesNotVerifyIt(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice, bob := newIdentity(t, "ed25519", "alice"), newIdentity(t, "ed25519", "bob")
	register(t, srv, alice)
	register(t, srv, bob)
	doc := alice.sign(t, alice.messagePayload("bob", "g:bob", []byte("x")))
	doc.Signature.Sig = signing.EncodeB64(make([]byte, 64)) // well formed, and no signature of it
	if r := sendGroup(t, srv, alice, doc); r.status != http.StatusCreated {
		t.Fatalf("a document with a signature that does not verify: %d %s", r.status, r.code)
	}
	// The recipient verifies: it finds the forgery (of alice's own making).
	page := poll(t, srv, bob, 0)
	if len(page.Messages) != 1 {
		t.Fatalf("bob's inbox holds %d messages", len(page.Messages))
	}
	if _, _, err := page.Messages[0].Message.Verify(); err == nil {
		t.Fatal("the stored document verifies; the test sent a bad signature")
	}
	short := alice.sign(t, alice.messagePayload("bob", "g2:bob", []byte("x")))
	short.Signature.Sig = signing.EncodeB64(make([]byte, 63))
	if r := sendGroup(t, srv, alice, short); r.status != 400 || r.code != server.CodeInvalidField || errorIndex(t, r) != 0 {
		t.Fatalf("a 63-byte signature: %d %s index %d", r.status, r.code, errorIndex(t, r))
	}
}

func TestGroupSendWithOneFullInboxStoresNothingAnywhere(t *testing.T) {
	for _, store := range []string{"sqlite", "jetstream"} {
		t.Run(store, func(t *testing.T) {
			opts := testutil.Options{Config: func(c *app.Config) {
				c.Service.MaxPending = 1
				if c.JetStream != nil {
					c.JetStream.MaxPending = 1
				}
			}}
			if store == "jetstream" {
				opts.NATS, opts.JetStream = testutil.StartNATS(t, testutil.NATSOptions{}), true
			}
			srv := testutil.StartServer(t, opts)
			alice, bob, carol := newIdentity(t, "ed25519", "alice"), newIdentity(t, "ed25519", "bob"), newIdentity(t, "ed25519", "carol")
			for _, id := range []*identity{alice, bob, carol} {
				register(t, srv, id)
			}
			if r := sendAs(t, srv, carol, "bob"); r.status != http.StatusCreated { // bob's inbox is full
				t.Fatalf("filling bob's inbox: %d %s", r.status, r.code)
			}
			r := sendGroup(t, srv, alice,
				alice.sign(t, alice.messagePayload("carol", "g:carol", []byte("x"))),
				alice.sign(t, alice.messagePayload("bob", "g:bob", []byte("x"))),
				alice.sign(t, alice.messagePayload("alice", "g:alice", []byte("x"))))
			if r.status != http.StatusConflict || r.code != server.CodeInboxFull || errorIndex(t, r) != 1 {
				t.Fatalf("group send with bob's inbox full: %d %s index %d, want 409 %s index 1", r.status, r.code, errorIndex(t, r), server.CodeInboxFull)
			}
			for _, id := range []*identity{carol, alice} {
				if n := len(poll(t, srv, id, 0).Messages); n != 0 {
					t.Fatalf("%s's inbox holds %d messages of a refused group send", id.handle, n)
				}
			}
		})
	}
}

func TestGroupSendSpendsOneSendTokenPerRequest(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{Config: func(c *app.Config) {
		c.HandleSendLimit = app.Limit{Rate: 0.001, Burst: 2}
	}})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	var recipients []*identity
	for i := range 5 {
		id := newIdentity(t, "ed25519", fmt.Sprint("rcpt", i))
		register(t, srv, id)
		recipients = append(recipients, id)
	}
	group := func(n int) []any {
		var docs []any
		for _, r := range recipients {
			docs = append(docs, alice.sign(t, alice.messagePayload(r.handle, fmt.Sprint(n, ":", r.handle), []byte("x"))))
		}
		return docs
	}
	for n := range 2 {
		if r := sendGroup(t, srv, alice, group(n)...); r.status != http.StatusCreated {
			t.Fatalf("group send %d of a burst of 2: %d %s", n, r.status, r.code)
		}
	}
	if r := sendGroup(t, srv, alice, group(2)...); r.status != http.StatusTooManyRequests || r.code != server.CodeRateLimited {
		t.Fatalf("third group send: %d %s, want 429 rate_limited", r.status, r.code)
	}
}

func TestGroupSendTakesADeviceKeysHeaderAndDocumentsUntilTheKeyIsRevoked(t *testing.T) {
	sig, srv, chain, bob := chatWithSigServer(t, nil)
	phone := asDevice(chain.primary, newSigner(t, "ed25519"))
	docs := func(id string) []any {
		return []any{phone.sign(t, phone.messagePayload("bob", id+":bob", []byte("x"))),
			phone.sign(t, phone.messagePayload(phone.handle, id+":"+phone.handle, []byte("x")))}
	}
	if r := sendGroup(t, srv, phone, docs("before")...); r.status != http.StatusUnauthorized || r.code != server.CodeBadAuth {
		t.Fatalf("group send by an unpublished device key: %d %s, want 401 %s", r.status, r.code, server.CodeBadAuth)
	}
	// The registered key's header does not make the phone's documents
	// authorized.
	body := groupBody(t, docs("mixed")...)
	if r := postBatch(t, srv, phone.handle, body, batchAuth(t, chain.primary, phone.handle, body)); r.status != 403 || r.code != server.CodeKeyNotAuthorized || errorIndex(t, r) != 0 {
		t.Fatalf("an unpublished device key's documents: %d %s index %d", r.status, r.code, errorIndex(t, r))
	}
	chain.mustPublish(t, sig.URL, phone.signer)
	if r := sendGroup(t, srv, phone, docs("published")...); r.status != http.StatusCreated {
		t.Fatalf("group send by a published device key: %d %s %s", r.status, r.code, r.body)
	}
	chain.mustPublish(t, sig.URL) // version 2 drops the phone
	if r := sendGroup(t, srv, phone, docs("revoked")...); r.status != http.StatusUnauthorized || r.code != server.CodeBadAuth {
		t.Fatalf("group send by a revoked device key: %d %s, want 401 %s", r.status, r.code, server.CodeBadAuth)
	}
	if n := len(poll(t, srv, bob, 0).Messages); n != 1 {
		t.Fatalf("bob's inbox holds %d messages, want 1", n)
	}
}

func TestGroupSendTakes256DocumentsInABodyOfAlmost4MiB(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	alice := newIdentity(t, "ed25519", "alice")
	register(t, srv, alice)
	docs := make([]any, server.MaxBatchDocuments)
	for i := range docs {
		to := newIdentity(t, "ed25519", fmt.Sprint("rcpt", i))
		register(t, srv, to)
		docs[i] = alice.sign(t, alice.messagePayload(to.handle, "big:"+to.handle, randomCT(t, 12000)))
	}
	body := groupBody(t, docs...)
	if len(body) < 4<<20-64<<10 || len(body) > 4<<20 {
		t.Fatalf("the body is %d bytes, not just under 4 MiB", len(body))
	}
	r := postBatch(t, srv, "alice", body, batchAuth(t, alice, "alice", body))
	if r.status != http.StatusCreated {
		t.Fatalf("256 documents in %d bytes: %d %s", len(body), r.status, r.code)
	}
	var got receipts
	if err := json.Unmarshal(r.body, &got); err != nil || len(got.Receipts) != server.MaxBatchDocuments || got.Receipts[255].To != "rcpt255" {
		t.Fatalf("receipts: %d, %v", len(got.Receipts), err)
	}
}
