package httpapi_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/sigclient"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// chatWithSigServer starts a sig-server and a chat server that resolves
// device keys there, and registers alice (whose key chain is returned) and
// bob.
func chatWithSigServer(t *testing.T, keys func(*sigclient.Config)) (*testutil.SigServer, *testutil.Server, *keyChain, *identity) {
	t.Helper()
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	srv := testutil.StartServer(t, testutil.Options{SigServerURL: sig.URL, Keys: keys})
	chain := newKeyChain(t, "ed25519")
	bob := newIdentity(t, "ed25519", "bob")
	register(t, srv, chain.primary)
	register(t, srv, bob)
	return sig, srv, chain, bob
}

// asDevice is alice's handle with a device's signing key.
func asDevice(alice *identity, s signing.Signer) *identity {
	return &identity{signer: s, enc: alice.enc, handle: alice.handle}
}

// sendAs posts a message from id to "to" and returns the answer.
func sendAs(t *testing.T, srv *testutil.Server, id *identity, to string) response {
	t.Helper()
	return postJSON(t, srv.URL+"/v1/messages", id.sign(t, id.messagePayload(to, "m-"+strconv.FormatInt(time.Now().UnixNano(), 36), []byte("ct"))))
}

// pollAs polls id's inbox and returns the answer.
func pollAs(t *testing.T, srv *testutil.Server, id *identity) response {
	t.Helper()
	path := "/v1/inbox/" + id.handle
	return do(t, http.MethodGet, srv.URL+path+"?since=0", nil, map[string]string{
		"X-KEZ-Auth": id.auth(t, http.MethodGet, path, time.Now().Unix(), "since=0"),
	})
}

func TestDeviceKeyIsAcceptedOncePublishedAndRefusedOnceRevoked(t *testing.T) {
	for _, alg := range signing.Algorithms() {
		t.Run(alg, func(t *testing.T) {
			sig, srv, chain, bob := chatWithSigServer(t, nil)
			phone := asDevice(chain.primary, newSigner(t, alg))

			if r := sendAs(t, srv, phone, bob.handle); r.status != 403 || r.code != server.CodeKeyNotAuthorized {
				t.Fatalf("message from an unpublished device key: %d %s, want 403 %s", r.status, r.code, server.CodeKeyNotAuthorized)
			}
			if r := pollAs(t, srv, phone); r.status != 401 || r.code != server.CodeBadAuth {
				t.Fatalf("poll by an unpublished device key: %d %s, want 401 %s", r.status, r.code, server.CodeBadAuth)
			}

			chain.mustPublish(t, sig.URL, phone.signer)
			if r := sendAs(t, srv, phone, bob.handle); r.status != http.StatusCreated {
				t.Fatalf("message from a published device key: %d %s %s", r.status, r.code, r.body)
			}
			if r := pollAs(t, srv, phone); r.status != http.StatusOK {
				t.Fatalf("poll by a published device key: %d %s", r.status, r.code)
			}
			// The registered key keeps working alongside.
			if r := sendAs(t, srv, chain.primary, bob.handle); r.status != http.StatusCreated {
				t.Fatalf("message from the registered key: %d %s", r.status, r.code)
			}

			chain.mustPublish(t, sig.URL) // version 2 drops the phone
			if r := sendAs(t, srv, phone, bob.handle); r.status != 403 || r.code != server.CodeKeyNotAuthorized {
				t.Errorf("message from a revoked device key: %d %s, want 403 %s", r.status, r.code, server.CodeKeyNotAuthorized)
			}
			if r := pollAs(t, srv, phone); r.status != 401 || r.code != server.CodeBadAuth {
				t.Errorf("poll by a revoked device key: %d %s, want 401 %s", r.status, r.code, server.CodeBadAuth)
			}
			if r := pollAs(t, srv, chain.primary); r.status != http.StatusOK {
				t.Errorf("poll by the registered key after the revocation: %d %s", r.status, r.code)
			}
		})
	}
}

func TestDeviceKeyOpensAStreamAndSubscribesNothingOnceRevoked(t *testing.T) {
	sig, srv, chain, _ := chatWithSigServer(t, nil)
	laptop := asDevice(chain.primary, newSigner(t, "ed25519"))
	chain.mustPublish(t, sig.URL, laptop.signer)
	path := "/v1/inbox/alice/stream"
	stream := func() int {
		auth := laptop.auth(t, http.MethodGet, path, streamTS())
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path+"?auth="+url.QueryEscape(auth), nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close() // the stream ends with the test
		return res.StatusCode
	}
	if got := stream(); got != http.StatusOK {
		t.Fatalf("stream opened by a published device key: %d", got)
	}
	chain.mustPublish(t, sig.URL)
	if got := stream(); got != http.StatusUnauthorized {
		t.Errorf("stream opened by a revoked device key: %d, want 401", got)
	}
}

func TestPublicRecordShowsTheCurrentDeviceKeysAndEncKey(t *testing.T) {
	sig, srv, chain, _ := chatWithSigServer(t, nil)
	r := do(t, http.MethodGet, srv.URL+"/v1/u/alice", nil, nil)
	if r.status != http.StatusOK || bytes.Contains(r.body, []byte("signing_keys")) {
		t.Fatalf("record before any key document: %d %s; want no signing_keys", r.status, r.body)
	}
	phone := newSigner(t, "bip340")
	newEnc := newIdentity(t, "ed25519", "x").enc
	p := chain.payload(phone)
	p["enc_key"] = signing.EncodeB64(newEnc)
	if r := chain.publish(t, sig.URL, p); r.status != http.StatusCreated {
		t.Fatalf("publishing: %d %s", r.status, r.body)
	}
	r = do(t, http.MethodGet, srv.URL+"/v1/u/alice", nil, nil)
	var rec server.PublicUser
	if err := json.Unmarshal(r.body, &rec); err != nil {
		t.Fatal(err)
	}
	u, err := rec.User()
	if err != nil {
		t.Fatalf("record does not decode: %v", err)
	}
	if u.KeysVersion != 1 || len(u.SigningKeys) != 2 || !u.Authorizes(phone.Alg(), phone.PublicKey()) ||
		rec.EncKey != signing.EncodeB64(newEnc) || rec.Key != signing.EncodeB64(chain.primary.signer.PublicKey()) {
		t.Errorf("record = %s; want version 1, the primary and the phone, the new enc_key and the registered key", r.body)
	}
}

func TestWebFingerLinksTheKeyDocument(t *testing.T) {
	sig, srv, chain, _ := chatWithSigServer(t, nil)
	r := do(t, http.MethodGet, srv.URL+"/.well-known/webfinger?resource=acct:alice@"+testutil.Domain, nil, nil)
	var j struct {
		Links []struct{ Rel, Href string }
	}
	if err := json.Unmarshal(r.body, &j); err != nil {
		t.Fatal(err)
	}
	want := sig.URL + "/v1/keys/" + chain.primaryID()
	for _, l := range j.Links {
		if l.Rel == "https://kez.lat/rel/keys" && l.Href == want {
			return
		}
	}
	t.Errorf("WebFinger links = %+v, want rel https://kez.lat/rel/keys to %s", j.Links, want)
}

// switchProxy forwards to one of two sig-servers, so a test can make the
// chat server's sig-server start serving another history.
type switchProxy struct {
	target atomic.Pointer[url.URL]
}

func (p *switchProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	target := p.target.Load()
	httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
}

func (p *switchProxy) point(t *testing.T, rawURL string) {
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	p.target.Store(u)
}

// frontOf serves the sig-server at url through a switchProxy, which a
// test points elsewhere (a stale or forked sig-server) as the chat
// server's one sig-server URL: the proxy and that URL.
func frontOf(t *testing.T, url string) (*switchProxy, string) {
	t.Helper()
	proxy := &switchProxy{}
	proxy.point(t, url)
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)
	return proxy, front.URL
}

// revokePhone registers an identity and bob on srv, publishes on current
// version 1 of the identity's keys, listing a phone, and copies it to
// stale, then publishes version 2 without the phone on current and checks
// that srv refuses the phone: stale is a sig-server to roll back to.
func revokePhone(t *testing.T, srv *testutil.Server, current, stale *testutil.SigServer) (chain *keyChain, bob, phone *identity) {
	t.Helper()
	chain = newKeyChain(t, "ed25519")
	bob = newIdentity(t, "ed25519", "bob")
	register(t, srv, chain.primary)
	register(t, srv, bob)
	phone = asDevice(chain.primary, newSigner(t, "ed25519"))
	chain.mustPublish(t, current.URL, phone.signer)
	if r := postJSON(t, stale.URL+"/v1/keys", chain.docs[0]); r.status != http.StatusCreated {
		t.Fatalf("copying version 1: %d %s", r.status, r.body)
	}
	chain.mustPublish(t, current.URL) // version 2 revokes the phone
	if r := sendAs(t, srv, phone, bob.handle); r.status != 403 {
		t.Fatalf("revoked phone: %d %s, want 403", r.status, r.code)
	}
	return chain, bob, phone
}

func TestRollbackToAnOlderKeyDocumentIsRefusedAndCounted(t *testing.T) {
	current := testutil.StartSigServer(t, testutil.SigOptions{})
	stale := testutil.StartSigServer(t, testutil.SigOptions{})
	proxy, front := frontOf(t, current.URL)
	srv := testutil.StartServer(t, testutil.Options{SigServerURL: front})
	_, bob, phone := revokePhone(t, srv, current, stale)

	proxy.point(t, stale.URL)
	if r := sendAs(t, srv, phone, bob.handle); r.status != 403 || r.code != server.CodeKeyNotAuthorized {
		t.Errorf("revoked phone after the sig-server rolled back to version 1: %d %s, want 403 %s", r.status, r.code, server.CodeKeyNotAuthorized)
	}
	if n, _ := metricValue(t, srv.Metrics, "kezchat_sig_fetches_total", map[string]string{"outcome": "rollback"}); n < 1 {
		t.Errorf("kezchat_sig_fetches_total{outcome=rollback} = %v, want at least 1", n)
	}
	// A sig-server that forgets the identity altogether is a rollback too.
	empty := testutil.StartSigServer(t, testutil.SigOptions{})
	proxy.point(t, empty.URL)
	if r := sendAs(t, srv, phone, bob.handle); r.status != 403 {
		t.Errorf("revoked phone after the sig-server forgot alice: %d %s, want 403", r.status, r.code)
	}
}

func TestForkedHistoryFromTheSigServerIsRefused(t *testing.T) {
	honest := testutil.StartSigServer(t, testutil.SigOptions{})
	forked := testutil.StartSigServer(t, testutil.SigOptions{})
	proxy, front := frontOf(t, honest.URL)
	srv := testutil.StartServer(t, testutil.Options{SigServerURL: front})
	chain := newKeyChain(t, "ed25519")
	bob := newIdentity(t, "ed25519", "bob")
	register(t, srv, chain.primary)
	register(t, srv, bob)
	phone := asDevice(chain.primary, newSigner(t, "ed25519"))
	chain.mustPublish(t, honest.URL)
	if r := sendAs(t, srv, phone, bob.handle); r.status != 403 {
		t.Fatalf("unlisted phone: %d, want 403", r.status)
	}
	// The forked sig-server holds another version 1, one listing the phone
	// (a document the primary key signed, say, and never published).
	p := chain.payload(phone.signer)
	p["version"], p["prev"] = 1, ""
	if r := postJSON(t, forked.URL+"/v1/keys", chain.primary.sign(t, p)); r.status != http.StatusCreated {
		t.Fatalf("forked version 1: %d %s", r.status, r.body)
	}
	proxy.point(t, forked.URL)
	if r := sendAs(t, srv, phone, bob.handle); r.status != 403 {
		t.Errorf("phone listed only by a forked version 1: %d %s, want 403", r.status, r.code)
	}
	if n, _ := metricValue(t, srv.Metrics, "kezchat_sig_fetches_total", map[string]string{"outcome": "fork"}); n < 1 {
		t.Errorf("kezchat_sig_fetches_total{outcome=fork} = %v, want at least 1", n)
	}
}

func TestSigServerDownLeavesRegisteredAndCachedKeysWorking(t *testing.T) {
	sig, srv, chain, bob := chatWithSigServer(t, nil)
	phone := asDevice(chain.primary, newSigner(t, "ed25519"))
	chain.mustPublish(t, sig.URL, phone.signer)
	if r := sendAs(t, srv, phone, bob.handle); r.status != http.StatusCreated {
		t.Fatalf("published phone: %d %s", r.status, r.code)
	}
	carol := newIdentity(t, "ed25519", "carol")
	register(t, srv, carol)

	sig.Stop()
	for name, r := range map[string]response{
		"message from the registered key":      sendAs(t, srv, chain.primary, bob.handle),
		"poll by the registered key":           pollAs(t, srv, bob),
		"message from the cached device key":   sendAs(t, srv, phone, bob.handle),
		"poll by the cached device key":        pollAs(t, srv, phone),
		"record of a handle with device keys":  do(t, http.MethodGet, srv.URL+"/v1/u/alice", nil, nil),
		"record of a handle never resolved":    do(t, http.MethodGet, srv.URL+"/v1/u/carol", nil, nil),
		"message from a never-resolved handle": sendAs(t, srv, carol, bob.handle),
	} {
		if r.status >= 300 {
			t.Errorf("%s with the sig-server down: %d %s", name, r.status, r.code)
		}
	}
	if up, ok := metricValue(t, srv.Metrics, "kezchat_sig_server_up", nil); !ok || up != 0 {
		t.Errorf("kezchat_sig_server_up = %v (found %v), want 0", up, ok)
	}
	// A key nobody could check is refused as unavailable, to be retried.
	stranger := asDevice(carol, newSigner(t, "ed25519"))
	if r := sendAs(t, srv, stranger, bob.handle); r.status != http.StatusServiceUnavailable || r.code != server.CodeUnavailable {
		t.Errorf("unknown key of a handle never resolved, sig-server down: %d %s, want 503 %s", r.status, r.code, server.CodeUnavailable)
	}
}

func TestConcurrentChecksOfOneIdentityShareOneFetch(t *testing.T) {
	sig, srv, chain, bob := chatWithSigServer(t, func(c *sigclient.Config) { c.TTL = time.Hour })
	phone := asDevice(chain.primary, newSigner(t, "ed25519"))
	chain.mustPublish(t, sig.URL, phone.signer)
	const n = 16
	docs := make([]signing.Signed, n)
	for i := range docs {
		docs[i] = phone.sign(t, phone.messagePayload(bob.handle, "m"+strconv.Itoa(i), []byte("ct")))
	}
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range docs {
		wg.Go(func() { statuses[i] = postJSON(t, srv.URL+"/v1/messages", docs[i]).status })
	}
	wg.Wait()
	for i, s := range statuses {
		if s != http.StatusCreated {
			t.Errorf("message %d: %d", i, s)
		}
	}
	fetches, _ := metricValue(t, sig.Metrics, "kezsig_http_requests_total", map[string]string{"route": "GET /v1/keys/{primary_id}"})
	if fetches != 1 {
		t.Errorf("the sig-server was asked %v times for alice's keys, want 1", fetches)
	}
}

func TestAnOpenStreamEndsOnceItsDeviceKeyIsRevoked(t *testing.T) {
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	srv := testutil.StartServer(t, testutil.Options{SigServerURL: sig.URL,
		Config: func(c *app.Config) { c.KeepAlive = 20 * time.Millisecond }})
	chain := newKeyChain(t, "ed25519")
	register(t, srv, chain.primary)
	laptop := asDevice(chain.primary, newSigner(t, "ed25519"))
	chain.mustPublish(t, sig.URL, laptop.signer)
	path := "/v1/inbox/alice/stream"
	auth := laptop.auth(t, http.MethodGet, path, streamTS())
	res, err := http.Get(srv.URL + path + "?auth=" + url.QueryEscape(auth))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("stream opened by a published device key: %d", res.StatusCode)
	}
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, res.Body); ended <- err }()
	select {
	case err := <-ended:
		t.Fatalf("the stream ended before the revocation: %v", err)
	case <-time.After(200 * time.Millisecond): // ten keep-alive checks
	}
	chain.mustPublish(t, sig.URL) // version 2 drops the laptop
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream of a revoked device key is still open 5 s after the revocation")
	}
}

// The highest document verified is kept in the chat server's store: a
// restarted server (or another replica) refuses a rollback too (before, it
// lived in memory, and a restart let the sig-server undo a revocation).
func TestARestartedServerStillRefusesARollback(t *testing.T) {
	current := testutil.StartSigServer(t, testutil.SigOptions{})
	stale := testutil.StartSigServer(t, testutil.SigOptions{})
	proxy, front := frontOf(t, current.URL)
	db := filepath.Join(t.TempDir(), "kez-chat.db")
	first := testutil.StartServer(t, testutil.Options{SigServerURL: front, DBPath: db})
	chain, bob, phone := revokePhone(t, first, current, stale)
	first.Stop()

	proxy.point(t, stale.URL)
	second := testutil.StartServer(t, testutil.Options{SigServerURL: front, DBPath: db})
	if r := sendAs(t, second, phone, bob.handle); r.status != 403 || r.code != server.CodeKeyNotAuthorized {
		t.Errorf("revoked phone on a restarted server after the sig-server rolled back: %d %s, want 403 %s", r.status, r.code, server.CodeKeyNotAuthorized)
	}
	if r := sendAs(t, second, chain.primary, bob.handle); r.status != http.StatusCreated {
		t.Errorf("the registered key on the restarted server: %d %s", r.status, r.code)
	}
}

// A device linked after its identity's keys were cached (a TTL of an hour
// here) is accepted at once: a key the cached document lacks makes the
// server ask the sig-server again.
func TestADeviceLinkedAfterItsIdentitysKeysWereCachedIsAcceptedAtOnce(t *testing.T) {
	sig, srv, chain, bob := chatWithSigServer(t, func(c *sigclient.Config) { c.TTL, c.MinRefresh = time.Hour, 0 })
	if r := do(t, http.MethodGet, srv.URL+"/v1/u/"+chain.primary.handle, nil, nil); r.status != http.StatusOK {
		t.Fatalf("looking alice up: %d %s", r.status, r.code)
	}
	phone := asDevice(chain.primary, newSigner(t, "ed25519"))
	chain.mustPublish(t, sig.URL, phone.signer)
	if r := pollAs(t, srv, phone); r.status != http.StatusOK {
		t.Errorf("poll by a device published after the cache: %d %s", r.status, r.code)
	}
	laptop := asDevice(chain.primary, newSigner(t, "ed25519"))
	chain.mustPublish(t, sig.URL, phone.signer, laptop.signer)
	if r := sendAs(t, srv, laptop, bob.handle); r.status != http.StatusCreated {
		t.Errorf("message from a device published after the cache: %d %s %s", r.status, r.code, r.body)
	}
}

// What bounds that: keys the document lacks make the server ask the
// sig-server at most once per identity per MinRefresh (an hour here),
// however many come.
func TestUnknownKeysAskTheSigServerAtMostOncePerMinRefresh(t *testing.T) {
	sig, srv, chain, bob := chatWithSigServer(t, func(c *sigclient.Config) { c.TTL, c.MinRefresh = time.Hour, time.Hour })
	fetches := func() float64 {
		n, _ := metricValue(t, sig.Metrics, "kezsig_http_requests_total", map[string]string{"route": "GET /v1/keys/{primary_id}"})
		return n
	}
	if r := do(t, http.MethodGet, srv.URL+"/v1/u/"+chain.primary.handle, nil, nil); r.status != http.StatusOK {
		t.Fatalf("looking alice up: %d %s", r.status, r.code)
	}
	before := fetches()
	for range 10 {
		stranger := asDevice(chain.primary, newSigner(t, "ed25519"))
		if r := sendAs(t, srv, stranger, bob.handle); r.status != http.StatusForbidden {
			t.Fatalf("message from an unknown key: %d %s", r.status, r.code)
		}
		if r := pollAs(t, srv, stranger); r.status != http.StatusUnauthorized {
			t.Fatalf("poll by an unknown key: %d %s", r.status, r.code)
		}
	}
	if got := fetches() - before; got != 1 {
		t.Errorf("20 requests with unknown keys asked the sig-server %v more times, want once: for the first, and none within MinRefresh of it", got)
	}
}
