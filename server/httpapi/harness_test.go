package httpapi_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// identity is a test user's keys, built from the protocol's primitives
// directly so these tests check the wire format, not the Go client.
type identity struct {
	signer signing.Signer
	enc    []byte
	handle string
}

func newIdentity(t testing.TB, alg, handle string) *identity {
	t.Helper()
	s, err := signing.GenerateKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &identity{signer: s, enc: k.PublicKey().Bytes(), handle: handle}
}

func (id *identity) registerPayload() map[string]any {
	return map[string]any{
		"type":       server.TypeRegister,
		"server":     testutil.Domain,
		"handle":     id.handle,
		"primary_id": signing.PrimaryID(id.signer.Alg(), id.signer.PublicKey()),
		"enc_key":    signing.EncodeB64(id.enc),
		"ts":         time.Now().Unix(),
	}
}

func (id *identity) messagePayload(to, msgID string, ct []byte) map[string]any {
	return map[string]any{
		"type":   server.TypeMessage,
		"server": testutil.Domain,
		"from":   id.handle,
		"to":     to,
		"id":     msgID,
		"ts":     time.Now().Unix(),
		"ct":     signing.EncodeB64(ct),
	}
}

func (id *identity) sign(t testing.TB, payload map[string]any) signing.Signed {
	t.Helper()
	doc, err := signing.Sign(id.signer, payload)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func (id *identity) auth(t testing.TB, method, path string, ts int64, bindings ...string) string {
	t.Helper()
	v, err := signing.SignRequest(id.signer, testutil.Domain, method, path, ts, bindings...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// response is an HTTP answer with its error code, if any.
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
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := response{status: res.StatusCode, header: res.Header, body: b}
	if res.StatusCode >= 400 {
		var e struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
			t.Fatalf("%s %s: %d with a body that is not {\"error\":{code,message}}: %q", method, url, res.StatusCode, b)
		}
		r.code = e.Error.Code
	}
	return r
}

func postJSON(t testing.TB, url string, v any) response {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, http.MethodPost, url, b, map[string]string{"Content-Type": "application/json"})
}

func register(t testing.TB, srv *testutil.Server, id *identity) {
	t.Helper()
	if r := postJSON(t, srv.URL+"/v1/register", id.sign(t, id.registerPayload())); r.status != http.StatusCreated {
		t.Fatalf("registering %s: %d %s %s", id.handle, r.status, r.code, r.body)
	}
}

func randomCT(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

type inboxPage struct {
	Messages []struct {
		Seq        uint64         `json:"seq"`
		ReceivedAt int64          `json:"received_at"`
		Message    signing.Signed `json:"message"`
	} `json:"messages"`
	Next uint64 `json:"next"`
}

func poll(t testing.TB, srv *testutil.Server, id *identity, since uint64) inboxPage {
	t.Helper()
	path := "/v1/inbox/" + id.handle
	s := strconv.FormatUint(since, 10)
	r := do(t, http.MethodGet, srv.URL+path+"?since="+s, nil, map[string]string{
		"X-KEZ-Auth": id.auth(t, http.MethodGet, path, time.Now().Unix(), "since="+s),
	})
	if r.status != http.StatusOK {
		t.Fatalf("polling %s: %d %s", id.handle, r.status, r.code)
	}
	var page inboxPage
	if err := json.Unmarshal(r.body, &page); err != nil {
		t.Fatal(err)
	}
	return page
}

func ack(t testing.TB, srv *testutil.Server, id *identity, upto uint64) int {
	t.Helper()
	path := "/v1/inbox/" + id.handle
	u := strconv.FormatUint(upto, 10)
	r := do(t, http.MethodDelete, srv.URL+path+"?upto="+u, nil, map[string]string{
		"X-KEZ-Auth": id.auth(t, http.MethodDelete, path, time.Now().Unix(), "upto="+u),
	})
	if r.status != http.StatusOK {
		t.Fatalf("acknowledging %s up to %d: %d %s", id.handle, upto, r.status, r.code)
	}
	var body struct{ Deleted int }
	json.Unmarshal(r.body, &body)
	return body.Deleted
}

// signingRequest signs the stream request string for a client identity.
func signingRequest(id *client.Identity, path string) (string, error) {
	return signing.SignRequest(id.Signer, testutil.Domain, http.MethodGet, path, streamTS())
}

// lastStreamTS makes every stream auth a test signs unique, as clients do:
// the server accepts each once.
var lastStreamTS atomic.Int64

func streamTS() int64 {
	for {
		last := lastStreamTS.Load()
		ts := max(time.Now().Unix(), last+1)
		if lastStreamTS.CompareAndSwap(last, ts) {
			return ts
		}
	}
}

// digestBinding is the "sha256=<D>" line that binds a request body.
func digestBinding(body []byte) string {
	sum := sha256.Sum256(body)
	return "sha256=" + signing.EncodeB64(sum[:])
}
