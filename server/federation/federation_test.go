package federation_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// These tests run several real chat servers on loopback, each its own
// domain (127.0.0.1:<port>), federating over HTTP as they would over
// HTTPS, and speak the protocol's wire format directly.

// startFederated starts a federated server whose federation settings
// change may adjust (limits off unless set).
func startFederated(t testing.TB, change func(*app.Federation), opts ...func(*testutil.Options)) *testutil.Server {
	t.Helper()
	fed := app.Federation{}
	if change != nil {
		change(&fed)
	}
	o := testutil.Options{Federation: &fed}
	for _, f := range opts {
		f(&o)
	}
	return testutil.StartServer(t, o)
}

func domainOf(srv *testutil.Server) string { return srv.Service.Domain() }

// person is a registered identity on one server.
type person struct {
	signer signing.Signer
	enc    []byte
	handle string
	srv    *testutil.Server
}

func (p *person) address() string { return p.handle + "@" + domainOf(p.srv) }

func newPerson(t testing.TB, srv *testutil.Server, handle string) *person {
	t.Helper()
	s, err := signing.GenerateKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &person{signer: s, enc: k.PublicKey().Bytes(), handle: handle, srv: srv}
	doc := p.sign(t, map[string]any{
		"type": server.TypeRegister, "server": domainOf(srv), "handle": handle,
		"primary_id": signing.PrimaryID(s.Alg(), s.PublicKey()), "enc_key": signing.EncodeB64(p.enc), "ts": time.Now().Unix(),
	})
	if r := post(t, srv.URL+"/v1/register", doc, nil); r.status != http.StatusCreated {
		t.Fatalf("registering %s: %d %s", handle, r.status, r.body)
	}
	return p
}

func (p *person) sign(t testing.TB, payload map[string]any) signing.Signed {
	t.Helper()
	doc, err := signing.Sign(p.signer, payload)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// message is p's signed document to handle on domain with id.
func (p *person) message(t testing.TB, to *person, id string) signing.Signed {
	t.Helper()
	from := p.handle
	if to.srv != p.srv {
		from = p.address()
	}
	return p.sign(t, map[string]any{
		"type": server.TypeMessage, "server": domainOf(to.srv), "from": from, "to": to.handle,
		"id": id, "ts": time.Now().Unix(), "ct": signing.EncodeB64([]byte("ciphertext of " + id)),
	})
}

func (p *person) auth(t testing.TB, method, path string, bindings ...string) string {
	t.Helper()
	v, err := signing.SignRequest(p.signer, domainOf(p.srv), method, path, time.Now().Unix(), bindings...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

type response struct {
	status int
	code   string
	header http.Header
	body   []byte
}

func do(t testing.TB, method, url string, body []byte, header map[string]string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	r := response{status: res.StatusCode, header: res.Header, body: b}
	if res.StatusCode >= 400 {
		var e struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Error.Code == "" {
			t.Fatalf("%s %s: %d with a body that is not an error: %q", method, url, res.StatusCode, b)
		}
		r.code = e.Error.Code
	}
	return r
}

func post(t testing.TB, url string, v any, header map[string]string) response {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, http.MethodPost, url, b, header)
}

// send posts a single document to p's own server.
func (p *person) send(t testing.TB, doc signing.Signed) response {
	t.Helper()
	return post(t, p.srv.URL+"/v1/messages", doc, nil)
}

// batch posts a group send of docs to p's own server.
func (p *person) batch(t testing.TB, docs ...signing.Signed) response {
	t.Helper()
	body, err := json.Marshal(map[string]any{"messages": docs})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	path := "/v1/batch/" + p.handle
	return do(t, http.MethodPost, p.srv.URL+path, body, map[string]string{
		"X-KEZ-Auth": p.auth(t, http.MethodPost, path, "sha256="+signing.EncodeB64(sum[:])),
	})
}

type stored struct {
	Seq     uint64         `json:"seq"`
	Message signing.Signed `json:"message"`
}

// inbox reads p's whole inbox.
func (p *person) inbox(t testing.TB) []stored {
	t.Helper()
	path := "/v1/inbox/" + p.handle
	r := do(t, http.MethodGet, p.srv.URL+path+"?since=0", nil, map[string]string{"X-KEZ-Auth": p.auth(t, http.MethodGet, path, "since=0")})
	if r.status != http.StatusOK {
		t.Fatalf("polling %s: %d %s", p.handle, r.status, r.code)
	}
	var page struct{ Messages []stored }
	if err := json.Unmarshal(r.body, &page); err != nil {
		t.Fatal(err)
	}
	return page.Messages
}

// waitInbox waits until p's inbox holds n envelopes and returns them.
func (p *person) waitInbox(t testing.TB, n int) []stored {
	t.Helper()
	var got []stored
	testutil.Eventually(t, 20*time.Second, fmt.Sprintf("%d envelopes for %s", n, p.address()), func() bool {
		got = p.inbox(t)
		return len(got) >= n
	})
	if len(got) != n {
		t.Fatalf("%s holds %d envelopes, want %d", p.address(), len(got), n)
	}
	return got
}

type payload struct {
	Server, From, To, ID string
}

func payloadOf(t testing.TB, s stored) payload {
	t.Helper()
	var p payload
	if err := json.Unmarshal(s.Message.Payload, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// outbox reads p's outbox.
func (p *person) outbox(t testing.TB) []server.OutboxEntry {
	t.Helper()
	path := "/v1/outbox/" + p.handle
	r := do(t, http.MethodGet, p.srv.URL+path, nil, map[string]string{"X-KEZ-Auth": p.auth(t, http.MethodGet, path)})
	if r.status != http.StatusOK {
		t.Fatalf("reading the outbox of %s: %d %s", p.handle, r.status, r.code)
	}
	var body struct{ Entries []server.OutboxEntry }
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatal(err)
	}
	return body.Entries
}

// waitOutbox waits until p's outbox entry id is in state and returns it.
func (p *person) waitOutbox(t testing.TB, id, state string) server.OutboxEntry {
	t.Helper()
	var got server.OutboxEntry
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, e := range p.outbox(t) {
			if e.ID == id {
				got = e
			}
		}
		if got.State == state {
			return got
		}
	}
	t.Fatalf("outbox entry %s is %+v (error %+v), want %s", id, got, got.Error, state)
	return got
}

func TestAMessageToAnotherServerIsQueuedThenStoredThereAndAReplyComesBack(t *testing.T) {
	one, two := startFederated(t, nil), startFederated(t, nil)
	alice, bob := newPerson(t, one, "alice"), newPerson(t, two, "bob")

	first := alice.message(t, bob, "m1")
	r := alice.send(t, first)
	if r.status != http.StatusAccepted {
		t.Fatalf("sending to %s: %d %s, want 202", bob.address(), r.status, r.body)
	}
	var receipt server.Receipt
	json.Unmarshal(r.body, &receipt)
	if receipt != (server.Receipt{To: bob.address(), ID: "m1", State: server.OutboxQueued}) {
		t.Fatalf("receipt %+v", receipt)
	}
	got := bob.waitInbox(t, 1)
	if p := payloadOf(t, got[0]); p.From != alice.address() || p.To != "bob" || p.Server != domainOf(two) {
		t.Fatalf("bob received %+v", p)
	}
	if e := alice.waitOutbox(t, "m1", server.OutboxDelivered); e.To != bob.address() || e.Error != nil || e.Attempts != 1 {
		t.Fatalf("outbox entry %+v", e)
	}

	if r := bob.send(t, bob.message(t, alice, "r1")); r.status != http.StatusAccepted {
		t.Fatalf("replying: %d %s", r.status, r.body)
	}
	back := alice.waitInbox(t, 1)
	if p := payloadOf(t, back[0]); p.From != bob.address() || p.To != "alice" {
		t.Fatalf("alice received %+v", p)
	}
	// A retry of the first message is answered as before and stores
	// nothing more anywhere; another document under its id is refused.
	if r := alice.send(t, first); r.status != http.StatusAccepted || r.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("a retry: %d %s", r.status, r.body)
	}
	other := alice.sign(t, map[string]any{
		"type": server.TypeMessage, "server": domainOf(two), "from": alice.address(), "to": "bob",
		"id": "m1", "ts": time.Now().Unix(), "ct": signing.EncodeB64([]byte("another")),
	})
	if r := alice.send(t, other); r.status != http.StatusConflict || r.code != server.CodeMessageIDConflict {
		t.Fatalf("the same id with another document: %d %s", r.status, r.code)
	}
	if n := len(bob.inbox(t)); n != 1 {
		t.Fatalf("bob holds %d envelopes after the retry, want 1", n)
	}
}

func TestAGroupSendSpansThreeServersAndItsLocalPart(t *testing.T) {
	one, two, three := startFederated(t, nil), startFederated(t, nil), startFederated(t, nil)
	alice, dave := newPerson(t, one, "alice"), newPerson(t, one, "dave")
	bob, bea := newPerson(t, two, "bob"), newPerson(t, two, "bea")
	carol := newPerson(t, three, "carol")

	r := alice.batch(t, alice.message(t, bob, "g1:bob"), alice.message(t, dave, "g1:dave"),
		alice.message(t, carol, "g1:carol"), alice.message(t, bea, "g1:bea"))
	if r.status != http.StatusCreated {
		t.Fatalf("group send: %d %s", r.status, r.body)
	}
	var body struct{ Receipts []server.Receipt }
	json.Unmarshal(r.body, &body)
	want := []server.Receipt{
		{To: bob.address(), ID: "g1:bob", State: server.OutboxQueued},
		{To: "dave", Seq: 1, ID: "g1:dave"},
		{To: carol.address(), ID: "g1:carol", State: server.OutboxQueued},
		{To: bea.address(), ID: "g1:bea", State: server.OutboxQueued},
	}
	for i := range want {
		if body.Receipts[i] != want[i] {
			t.Fatalf("receipt %d = %+v, want %+v", i, body.Receipts[i], want[i])
		}
	}
	for _, p := range []*person{bob, bea, carol, dave} {
		got := p.waitInbox(t, 1)
		if pl := payloadOf(t, got[0]); pl.ID != "g1:"+p.handle {
			t.Fatalf("%s received %+v", p.address(), pl)
		}
	}
	// The two documents for two.example went as one unit.
	for _, id := range []string{"g1:bob", "g1:carol", "g1:bea"} {
		if e := alice.waitOutbox(t, id, server.OutboxDelivered); e.Attempts != 1 {
			t.Fatalf("outbox entry %+v, want delivered at the first attempt", e)
		}
	}
}

func TestASenderItsDomainDoesNotPublishIsRefused(t *testing.T) {
	one, two := startFederated(t, nil), startFederated(t, nil)
	alice, bob := newPerson(t, one, "alice"), newPerson(t, two, "bob")
	mallory := newPerson(t, one, "mallory")

	forge := func(from string, signer *person, id string) signing.Signed {
		return signer.sign(t, map[string]any{
			"type": server.TypeMessage, "server": domainOf(two), "from": from, "to": "bob",
			"id": id, "ts": time.Now().Unix(), "ct": signing.EncodeB64([]byte("x")),
		})
	}
	tests := []struct {
		name string
		doc  signing.Signed
		code string
	}{
		{"alice's address with mallory's key", forge(alice.address(), mallory, "f1"), server.CodeKeyNotAuthorized},
		{"a handle its domain does not know", forge("nobody@"+domainOf(one), mallory, "f2"), server.CodeKeyNotAuthorized},
		{"an address on the recipient's own server", forge("bob@"+domainOf(two), mallory, "f3"), server.CodeInvalidField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := post(t, two.URL+"/v1/federation/messages", map[string]any{"messages": []signing.Signed{tt.doc}}, nil)
			if r.code != tt.code {
				t.Fatalf("POST /v1/federation/messages: %d %s, want %s", r.status, r.code, tt.code)
			}
		})
	}
	if n := len(bob.inbox(t)); n != 0 {
		t.Fatalf("bob holds %d forged envelopes", n)
	}
}

func TestAServerThatIsDownGetsTheMessagesLaterInOrderExactlyOnce(t *testing.T) {
	one := startFederated(t, nil)
	dbPath := t.TempDir() + "/two.db"
	two := startFederated(t, nil, func(o *testutil.Options) { o.DBPath = dbPath })
	alice, bob := newPerson(t, one, "alice"), newPerson(t, two, "bob")
	bind := domainOf(two)
	two.Stop()

	const n = 5
	alice.queueNumbered(t, bob, n)
	e := alice.waitOutbox(t, "d0", server.OutboxQueued)
	testutil.Eventually(t, 10*time.Second, "a failed attempt recorded", func() bool {
		e = alice.waitOutbox(t, "d0", server.OutboxQueued)
		return e.Attempts > 0
	})
	if e.Error == nil || e.Error.Code != server.CodeUnavailable {
		t.Fatalf("outbox entry while two is down: %+v", e)
	}

	two = startFederated(t, nil, func(o *testutil.Options) { o.DBPath, o.Bind = dbPath, bind })
	bob.srv = two
	wantDeliveredInOrder(t, alice, bob, 0, n)
}

// queueNumbered has p send n messages d0, d1, ... to to, whose server is
// down: each is queued.
func (p *person) queueNumbered(t *testing.T, to *person, n int) {
	t.Helper()
	for i := range n {
		if r := p.send(t, p.message(t, to, "d"+strconv.Itoa(i))); r.status != http.StatusAccepted {
			t.Fatalf("sending while %s is down: %d %s", to.address(), r.status, r.body)
		}
	}
}

// wantDeliveredInOrder waits for to's inbox to hold the n messages of
// from.queueNumbered after the before it held, in the order sent, each
// delivered in from's outbox, and nothing more.
func wantDeliveredInOrder(t *testing.T, from, to *person, before, n int) {
	t.Helper()
	got := to.waitInbox(t, before+n)
	for i, s := range got[before:] {
		if p := payloadOf(t, s); p.ID != "d"+strconv.Itoa(i) {
			t.Fatalf("envelope %d is %s; want the order they were sent in", before+i, p.ID)
		}
	}
	for i := range n {
		from.waitOutbox(t, "d"+strconv.Itoa(i), server.OutboxDelivered)
	}
	if again := to.inbox(t); len(again) != before+n {
		t.Fatalf("%s holds %d envelopes, want %d exactly once", to.address(), len(again), before+n)
	}
}

func TestTheSameRelayedRequestTwiceStoresOnce(t *testing.T) {
	one, two := startFederated(t, nil), startFederated(t, nil)
	alice, bob := newPerson(t, one, "alice"), newPerson(t, two, "bob")
	relayTwice(t, two, alice, bob)
	if n := len(bob.inbox(t)); n != 1 {
		t.Fatalf("bob holds %d envelopes, want 1", n)
	}
}

// relayTwice posts a message from from to to, to srv (to's server) twice,
// as a courier whose first answer was lost would: stored, then answered
// as a retry.
func relayTwice(t *testing.T, srv *testutil.Server, from, to *person) {
	t.Helper()
	body := map[string]any{"messages": []signing.Signed{from.message(t, to, "once")}}
	first := post(t, srv.URL+"/v1/federation/messages", body, nil)
	second := post(t, srv.URL+"/v1/federation/messages", body, nil)
	if first.status != http.StatusCreated || second.status != http.StatusOK || second.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("first %d %s, second %d %s", first.status, first.body, second.status, second.body)
	}
}

func TestBlockedDomainsSendersAndStrangersAreRefusedWithTheirCodes(t *testing.T) {
	one := startFederated(t, nil)
	two := startFederated(t, nil)
	three := startFederated(t, func(f *app.Federation) { f.Block = []string{domainOf(one)} })
	alice, eve := newPerson(t, one, "alice"), newPerson(t, one, "eve")
	bob, carol := newPerson(t, two, "bob"), newPerson(t, three, "carol")

	// bob blocks eve and takes no strangers but alice.
	setting := map[string]any{"strangers": "refuse", "known": []string{alice.address()}, "blocked": []string{eve.address()}}
	b, _ := json.Marshal(setting)
	sum := sha256.Sum256(b)
	path := "/v1/privacy/bob"
	if r := do(t, http.MethodPut, two.URL+path, b, map[string]string{
		"X-KEZ-Auth": bob.auth(t, http.MethodPut, path, "sha256="+signing.EncodeB64(sum[:])),
	}); r.status != http.StatusOK {
		t.Fatalf("setting bob's privacy: %d %s", r.status, r.body)
	}
	stranger := newPerson(t, one, "stranger")

	tests := []struct {
		name   string
		from   *person
		to     *person
		code   string
		status int
	}{
		{"a blocked domain", alice, carol, server.CodeDomainBlocked, http.StatusForbidden},
		{"a blocked sender", eve, bob, server.CodeSenderBlocked, http.StatusForbidden},
		{"a stranger", stranger, bob, server.CodeStrangerRefused, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			direct := post(t, tt.to.srv.URL+"/v1/federation/messages",
				map[string]any{"messages": []signing.Signed{tt.from.message(t, tt.to, "direct")}}, nil)
			if direct.status != tt.status || direct.code != tt.code {
				t.Fatalf("relayed directly: %d %s, want %d %s", direct.status, direct.code, tt.status, tt.code)
			}
			if r := tt.from.send(t, tt.from.message(t, tt.to, "queued")); r.status != http.StatusAccepted {
				t.Fatalf("sending: %d %s", r.status, r.body)
			}
			e := tt.from.waitOutbox(t, "queued", server.OutboxFailed)
			if e.Error == nil || e.Error.Code != tt.code {
				t.Fatalf("outbox entry %+v, want failed with %s", e, tt.code)
			}
		})
	}
	// alice, known to bob, still reaches him.
	if r := alice.send(t, alice.message(t, bob, "known")); r.status != http.StatusAccepted {
		t.Fatalf("sending: %d %s", r.status, r.body)
	}
	alice.waitOutbox(t, "known", server.OutboxDelivered)
	// And one's own list refuses a domain before anything is queued.
	four := startFederated(t, func(f *app.Federation) { f.Block = []string{domainOf(two)} })
	frank := newPerson(t, four, "frank")
	if r := frank.send(t, frank.message(t, bob, "x")); r.status != http.StatusForbidden || r.code != server.CodeDomainBlocked {
		t.Fatalf("sending to a blocked domain: %d %s", r.status, r.code)
	}
}

func TestAServerWithoutFederationRefusesBothWays(t *testing.T) {
	one := startFederated(t, nil)
	plain := testutil.StartServer(t, testutil.Options{})
	alice := newPerson(t, one, "alice")
	r := post(t, plain.URL+"/v1/federation/messages", map[string]any{"messages": []signing.Signed{alice.sign(t, map[string]any{
		"type": server.TypeMessage, "server": testutil.Domain, "from": alice.address(), "to": "bob",
		"id": "x", "ts": time.Now().Unix(), "ct": "eA",
	})}}, nil)
	if r.status != http.StatusForbidden || r.code != server.CodeFederationDisabled {
		t.Fatalf("relaying to a server without federation: %d %s", r.status, r.code)
	}
}

// publishKeys publishes version 1 of p's key document on sig, listing
// its primary key and device.
func (p *person) publishKeys(t testing.TB, sig *testutil.SigServer, device signing.Signer) {
	t.Helper()
	doc := p.sign(t, map[string]any{
		"type": "kez.sig.keys/v1", "primary_id": signing.PrimaryID(p.signer.Alg(), p.signer.PublicKey()),
		"version": 1, "prev": "",
		"signing_keys": []map[string]string{
			{"alg": p.signer.Alg(), "key": signing.EncodeB64(p.signer.PublicKey()), "label": "primary"},
			{"alg": device.Alg(), "key": signing.EncodeB64(device.PublicKey()), "label": "phone"},
		},
		"enc_key": signing.EncodeB64(p.enc), "ts": time.Now().Unix(),
	})
	if r := post(t, sig.URL+"/v1/keys", doc, nil); r.status != http.StatusCreated {
		t.Fatalf("publishing keys: %d %s", r.status, r.body)
	}
}

func TestADeviceKeyTheSendersDomainPublishesIsAcceptedAndAnotherIsNot(t *testing.T) {
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	one := startFederated(t, nil, func(o *testutil.Options) { o.SigServerURL = sig.URL })
	two := startFederated(t, nil)
	alice, bob := newPerson(t, one, "alice"), newPerson(t, two, "bob")
	phone, err := signing.GenerateKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	alice.publishKeys(t, sig, phone)

	fromPhone := func(signer signing.Signer, id string) signing.Signed {
		doc, err := signing.Sign(signer, map[string]any{
			"type": server.TypeMessage, "server": domainOf(two), "from": alice.address(), "to": "bob",
			"id": id, "ts": time.Now().Unix(), "ct": signing.EncodeB64([]byte("from the phone")),
		})
		if err != nil {
			t.Fatal(err)
		}
		return doc
	}
	if r := alice.send(t, fromPhone(phone, "p1")); r.status != http.StatusAccepted {
		t.Fatalf("sending from the phone: %d %s", r.status, r.body)
	}
	alice.waitOutbox(t, "p1", server.OutboxDelivered)
	if got := bob.waitInbox(t, 1); payloadOf(t, got[0]).ID != "p1" {
		t.Fatalf("bob received %+v", payloadOf(t, got[0]))
	}

	unpublished, err := signing.GenerateKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	r := post(t, two.URL+"/v1/federation/messages", map[string]any{"messages": []signing.Signed{fromPhone(unpublished, "p2")}}, nil)
	if r.code != server.CodeKeyNotAuthorized {
		t.Fatalf("a key alice's domain does not publish: %d %s", r.status, r.code)
	}
}

// onJetStream makes a server a replica on nats's JetStream store, at
// domain when set (another replica's: replicas share their domain).
func onJetStream(nats *testutil.NATS, domain string) func(*testutil.Options) {
	return func(o *testutil.Options) {
		o.NATS, o.JetStream = nats, true
		if domain != "" {
			o.Config = func(c *app.Config) { c.Service.Domain, c.PublicURL = domain, "http://"+domain }
		}
	}
}

// delivered is what srv's courier counted as delivered.
func delivered(t testing.TB, srv *testutil.Server) float64 {
	t.Helper()
	families, err := srv.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "kezchat_federation_deliveries_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == "delivered" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatal("no kezchat_federation_deliveries_total{outcome=delivered}")
	return 0
}

// front is a domain served by replicas, as a Service in front of a
// Deployment's pods: it forwards every request to the replica use names.
type front struct {
	domain  string
	backend atomic.Pointer[url.URL]
}

func startFront(t testing.TB) *front {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &front{domain: ln.Addr().String()}
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(f.backend.Load())
		r.Out.Host = r.In.Host
	}}
	hs := &http.Server{Handler: proxy}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return f
}

func (f *front) use(srv *testutil.Server) {
	u, _ := url.Parse(srv.URL)
	f.backend.Store(u)
}

func TestOnJetStreamOneReplicaDeliversAndAnotherTakesTheQueueOver(t *testing.T) {
	nats := testutil.StartNATS(t, testutil.NATSOptions{})
	one := startFront(t)
	a := startFederated(t, nil, onJetStream(nats, one.domain))
	b := startFederated(t, nil, onJetStream(nats, one.domain))
	one.use(a)
	twoPath := t.TempDir() + "/two.db"
	two := startFederated(t, nil, func(o *testutil.Options) { o.DBPath = twoPath })
	alice, bob := newPerson(t, a, "alice"), newPerson(t, two, "bob")
	holds := func(srv *testutil.Server) bool { return srv.Store.(*jsstore.Store).HoldsWriterLease() }
	testutil.Eventually(t, 10*time.Second, "a replica holding the writer lease", func() bool { return holds(a) || holds(b) })
	holder, other := a, b
	if holds(b) {
		holder, other = b, a
	}

	// Sent through the replica without the lease, delivered by the holder
	// alone; the reply reaches alice through either.
	alice.srv = other
	if r := alice.send(t, alice.message(t, bob, "m0")); r.status != http.StatusAccepted {
		t.Fatalf("sending through the replica without the lease: %d %s", r.status, r.body)
	}
	bob.waitInbox(t, 1)
	alice.waitOutbox(t, "m0", server.OutboxDelivered)
	if h, o := delivered(t, holder), delivered(t, other); h != 1 || o != 0 {
		t.Fatalf("deliveries: %v by the lease holder, %v by the other replica; want 1 and 0", h, o)
	}
	if r := bob.send(t, bob.message(t, alice, "r0")); r.status != http.StatusAccepted {
		t.Fatalf("replying: %d %s", r.status, r.body)
	}
	if p := payloadOf(t, alice.waitInbox(t, 1)[0]); p.From != bob.address() {
		t.Fatalf("alice received %+v", p)
	}

	// Two is down while alice queues; the holder stops; the other replica
	// takes the lease and delivers the queue, in order, exactly once.
	bind := domainOf(two)
	two.Stop()
	alice.queueNumbered(t, bob, 3)
	one.use(other)
	holder.Stop()
	testutil.Eventually(t, 10*time.Second, "the other replica taking the writer lease", func() bool { return holds(other) })
	two = startFederated(t, nil, func(o *testutil.Options) { o.DBPath, o.Bind = twoPath, bind })
	bob.srv = two
	wantDeliveredInOrder(t, alice, bob, 1, 3)

	// Relayed to the JetStream replica twice, a request stores once.
	relayTwice(t, other, bob, alice)
	if n := len(alice.inbox(t)); n != 2 {
		t.Fatalf("alice holds %d envelopes, want 2", n)
	}
}

// hostileDomain serves, at its own loopback domain, a WebFinger answer and
// a record for victim's keys that are well formed but padded past the
// answer limit: a server that read them whole would accept them.
func hostileDomain(t testing.TB, victim *person, pad int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	domain := ln.Addr().String()
	padded := func(v any) []byte {
		b, _ := json.Marshal(v)
		return append(b, bytes.Repeat([]byte(" "), pad)...)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/webfinger", func(w http.ResponseWriter, r *http.Request) {
		w.Write(padded(map[string]any{"subject": "acct:mallory@" + domain,
			"links": []map[string]string{{"rel": "self", "href": "http://" + domain + "/v1/u/mallory"}}}))
	})
	mux.HandleFunc("GET /v1/u/mallory", func(w http.ResponseWriter, r *http.Request) {
		w.Write(padded(map[string]any{"handle": "mallory", "server": domain,
			"primary_id": signing.PrimaryID(victim.signer.Alg(), victim.signer.PublicKey()),
			"alg":        victim.signer.Alg(), "key": signing.EncodeB64(victim.signer.PublicKey()),
			"enc_key": signing.EncodeB64(victim.enc)}))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return domain
}

func TestAnAnswerPastTheLimitFromASendersDomainIsNotRead(t *testing.T) {
	two := startFederated(t, nil)
	bob := newPerson(t, two, "bob")
	mallory := &person{handle: "mallory"}
	var err error
	if mallory.signer, err = signing.GenerateKey("ed25519"); err != nil {
		t.Fatal(err)
	}
	mallory.enc = make([]byte, 32)
	for _, tt := range []struct {
		name string
		pad  int
		code string
	}{
		// Within the limit the keys are taken, which shows the padding
		// alone is what is refused.
		{"answers within 64 KiB", 1 << 10, ""},
		{"answers of 1 MiB", 1 << 20, server.CodeUnavailable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			domain := hostileDomain(t, mallory, tt.pad)
			doc := mallory.sign(t, map[string]any{
				"type": server.TypeMessage, "server": domainOf(two), "from": "mallory@" + domain, "to": "bob",
				"id": "pad" + strconv.Itoa(tt.pad), "ts": time.Now().Unix(), "ct": signing.EncodeB64([]byte("x")),
			})
			r := post(t, two.URL+"/v1/federation/messages", map[string]any{"messages": []signing.Signed{doc}}, nil)
			if r.code != tt.code {
				t.Fatalf("%d %s, want %q", r.status, r.code, tt.code)
			}
		})
	}
	if n := len(bob.inbox(t)); n != 1 {
		t.Fatalf("bob holds %d envelopes, want the one within the limit", n)
	}
}

func TestARemoteSendersDailyBytesAreBoundedAtTheRecipientsServer(t *testing.T) {
	one := startFederated(t, nil)
	two := startFederated(t, func(f *app.Federation) { f.SenderQuota = app.Quota{BytesPerDay: 6 << 10} })
	alice, bob := newPerson(t, one, "alice"), newPerson(t, two, "bob")
	big := func(id string) signing.Signed {
		return alice.sign(t, map[string]any{
			"type": server.TypeMessage, "server": domainOf(two), "from": alice.address(), "to": "bob",
			"id": id, "ts": time.Now().Unix(), "ct": signing.EncodeB64(bytes.Repeat([]byte("c"), 1500)),
		})
	}
	for i := range 2 {
		if r := post(t, two.URL+"/v1/federation/messages", map[string]any{"messages": []signing.Signed{big("q" + strconv.Itoa(i))}}, nil); r.status != http.StatusCreated {
			t.Fatalf("message %d within the quota: %d %s", i, r.status, r.body)
		}
	}
	r := post(t, two.URL+"/v1/federation/messages", map[string]any{"messages": []signing.Signed{big("q2")}}, nil)
	if r.status != http.StatusTooManyRequests || r.code != server.CodeSenderQuota || r.header.Get("Retry-After") == "" {
		t.Fatalf("past the quota: %d %s (Retry-After %q)", r.status, r.code, r.header.Get("Retry-After"))
	}
	if n := len(bob.inbox(t)); n != 2 {
		t.Fatalf("bob holds %d envelopes, want 2", n)
	}
}

// typingEvents follows p's inbox stream and sends the data of each typing
// event to the channel it returns.
func typingEvents(t *testing.T, p *person) <-chan string {
	t.Helper()
	path := "/v1/inbox/" + p.handle + "/stream"
	auth, err := signing.SignRequest(p.signer, domainOf(p.srv), http.MethodGet, path, time.Now().Unix())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.srv.URL+path+"?auth="+auth, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("opening the stream: %v", err)
	}
	events := make(chan string, 16)
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		typing := false
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "event: typing":
				typing = true
			case typing && strings.HasPrefix(line, "data: "):
				events <- strings.TrimPrefix(line, "data: ")
				typing = false
			}
		}
	}()
	return events
}

func (p *person) typingDoc(t testing.TB, signer *person, to *person, ts int64) signing.Signed {
	t.Helper()
	return signer.sign(t, map[string]any{
		"type": server.TypeTyping, "server": domainOf(to.srv), "from": p.address(), "ts": ts,
		"to": []map[string]string{{"to": to.handle, "ct": "dHlwaW5n"}},
	})
}

func TestATypingIndicatorReachesAPersonOnAnotherServerAndNoForgeryDoes(t *testing.T) {
	one, two := startFederated(t, nil), startFederated(t, nil)
	alice, mallory := newPerson(t, one, "alice"), newPerson(t, one, "mallory")
	bob := newPerson(t, two, "bob")
	events := typingEvents(t, bob)

	body, _ := json.Marshal(map[string]any{"to": []any{}, "remote": []signing.Signed{alice.typingDoc(t, alice, bob, time.Now().Unix())}})
	sum := sha256.Sum256(body)
	path := "/v1/typing/alice"
	r := do(t, http.MethodPost, one.URL+path, body, map[string]string{"X-KEZ-Auth": alice.auth(t, http.MethodPost, path, "sha256="+signing.EncodeB64(sum[:]))})
	if r.status != http.StatusAccepted || string(bytes.TrimSpace(r.body)) != `{"recipients":0,"servers":1}` {
		t.Fatalf("typing to bob@two: %d %s", r.status, r.body)
	}
	select {
	case ev := <-events:
		if want := `{"from":"` + alice.address() + `","ct":"dHlwaW5n"}`; ev != want {
			t.Fatalf("bob's typing event %s, want %s", ev, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no typing event reached bob")
	}

	relay := func(doc signing.Signed) response {
		return post(t, two.URL+"/v1/federation/typing", doc, nil)
	}
	for _, tt := range []struct {
		name string
		doc  signing.Signed
		code string
	}{
		{"alice's address with mallory's key", alice.typingDoc(t, mallory, bob, time.Now().Unix()), server.CodeKeyNotAuthorized},
		{"an old indicator", alice.typingDoc(t, alice, bob, time.Now().Add(-10*time.Minute).Unix()), server.CodeStaleTimestamp},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if r := relay(tt.doc); r.code != tt.code {
				t.Fatalf("%d %s, want %s", r.status, r.code, tt.code)
			}
		})
	}
	// A person who blocked the sender gets nothing, and the sender learns
	// nothing of it.
	setting, _ := json.Marshal(map[string]any{"strangers": "accept", "known": []string{}, "blocked": []string{alice.address()}})
	psum := sha256.Sum256(setting)
	if r := do(t, http.MethodPut, two.URL+"/v1/privacy/bob", setting, map[string]string{
		"X-KEZ-Auth": bob.auth(t, http.MethodPut, "/v1/privacy/bob", "sha256="+signing.EncodeB64(psum[:])),
	}); r.status != http.StatusOK {
		t.Fatalf("blocking alice: %d %s", r.status, r.body)
	}
	if r := relay(alice.typingDoc(t, alice, bob, time.Now().Unix()+1)); r.status != http.StatusAccepted || string(bytes.TrimSpace(r.body)) != `{"recipients":0}` {
		t.Fatalf("typing to a person who blocked the sender: %d %s", r.status, r.body)
	}
	// Someone he did not block comes through, and first: nothing of the
	// forgeries' or alice's was relayed before it.
	dave := newPerson(t, one, "dave")
	if r := relay(dave.typingDoc(t, dave, bob, time.Now().Unix())); r.status != http.StatusAccepted {
		t.Fatalf("dave typing: %d %s", r.status, r.body)
	}
	select {
	case ev := <-events:
		if !strings.Contains(ev, dave.address()) {
			t.Fatalf("bob got %s after the forgeries and his block, before dave's", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("dave's typing event did not reach bob")
	}
}

func TestAPrivacySettingIsBoundedInBytesAndEntries(t *testing.T) {
	one := startFederated(t, nil)
	alice := newPerson(t, one, "alice")
	put := func(body []byte) response {
		sum := sha256.Sum256(body)
		return do(t, http.MethodPut, one.URL+"/v1/privacy/alice", body, map[string]string{
			"X-KEZ-Auth": alice.auth(t, http.MethodPut, "/v1/privacy/alice", "sha256="+signing.EncodeB64(sum[:])),
		})
	}
	list := func(n int, format string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf(format, i)
		}
		return out
	}
	setting := func(known, blocked []string) []byte {
		b, _ := json.Marshal(map[string]any{"strangers": "refuse", "known": known, "blocked": blocked})
		return b
	}
	for _, tt := range []struct {
		name   string
		body   []byte
		status int
		code   string
	}{
		{"at the caps", setting(list(server.MaxPrivacyKnown, "p%04d@two.example"), list(server.MaxPrivacyBlocked, "s%d.example")), http.StatusOK, ""},
		{"one known address too many", setting(list(server.MaxPrivacyKnown+1, "p%04d@two.example"), nil), http.StatusBadRequest, server.CodeInvalidField},
		{"one blocked entry too many", setting(nil, list(server.MaxPrivacyBlocked+1, "s%d.example")), http.StatusBadRequest, server.CodeInvalidField},
		{"a body over 256 KiB", setting(list(server.MaxPrivacyKnown-100, "p%08d@a-long-domain-name-that-fills-the-body-past-its-limit.example"), nil),
			http.StatusRequestEntityTooLarge, server.CodeBodyTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if r := put(tt.body); r.status != tt.status || r.code != tt.code {
				t.Fatalf("PUT %d bytes: %d %s, want %d %s", len(tt.body), r.status, r.code, tt.status, tt.code)
			}
		})
	}
}

func TestATypingRequestCarriesAtMost16DocumentsForOtherServers(t *testing.T) {
	one := startFederated(t, nil)
	alice := newPerson(t, one, "alice")
	docs := make([]signing.Signed, server.MaxRemoteTyping+1)
	for i := range docs {
		docs[i] = alice.sign(t, map[string]any{
			// Loopback ports where nothing listens: the forwards fail at once
			// and reach nothing beyond this machine.
			"type": server.TypeTyping, "server": fmt.Sprintf("127.0.0.1:%d", i+1), "from": alice.address(), "ts": time.Now().Unix(),
			"to": []map[string]string{{"to": "bob", "ct": "eA"}},
		})
	}
	for _, tt := range []struct {
		n      int
		status int
	}{{server.MaxRemoteTyping, http.StatusAccepted}, {server.MaxRemoteTyping + 1, http.StatusBadRequest}} {
		body, _ := json.Marshal(map[string]any{"to": []any{}, "remote": docs[:tt.n]})
		sum := sha256.Sum256(body)
		r := do(t, http.MethodPost, one.URL+"/v1/typing/alice", body, map[string]string{
			"X-KEZ-Auth": alice.auth(t, http.MethodPost, "/v1/typing/alice", "sha256="+signing.EncodeB64(sum[:])),
		})
		if r.status != tt.status {
			t.Fatalf("%d documents: %d %s, want %d", tt.n, r.status, r.body, tt.status)
		}
	}
}
