package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// keyChain builds an identity's key documents from the protocol's
// primitives, so these tests check the wire format, not the Go client.
type keyChain struct {
	primary *identity
	docs    []signing.Signed
	hashes  [][]byte
}

func newKeyChain(t testing.TB, alg string) *keyChain {
	return &keyChain{primary: newIdentity(t, alg, "alice")}
}

func (c *keyChain) primaryID() string {
	return signing.PrimaryID(c.primary.signer.Alg(), c.primary.signer.PublicKey())
}

// keyEntry is a signing_keys entry for s.
func keyEntry(s signing.Signer, label string) map[string]any {
	return map[string]any{"alg": s.Alg(), "key": signing.EncodeB64(s.PublicKey()), "label": label}
}

// payload is the next version's payload listing the primary key and extra.
func (c *keyChain) payload(extra ...signing.Signer) map[string]any {
	keys := []any{keyEntry(c.primary.signer, "primary")}
	for i, s := range extra {
		keys = append(keys, keyEntry(s, "device "+string(rune('a'+i))))
	}
	prev := ""
	if n := len(c.hashes); n > 0 {
		prev = signing.EncodeB64(c.hashes[n-1])
	}
	return map[string]any{
		"type":         server.TypeKeys,
		"primary_id":   c.primaryID(),
		"version":      len(c.docs) + 1,
		"prev":         prev,
		"signing_keys": keys,
		"enc_key":      signing.EncodeB64(c.primary.enc),
		"ts":           time.Now().Unix(),
	}
}

// publish signs p with the primary key, posts it and, on success, records
// it as the chain's next link.
func (c *keyChain) publish(t testing.TB, url string, p map[string]any) response {
	t.Helper()
	doc := c.primary.sign(t, p)
	r := postJSON(t, url+"/v1/keys", doc)
	if r.status == http.StatusCreated {
		c.docs = append(c.docs, doc)
		canonical, err := signing.Canonicalize(doc.Payload)
		if err != nil {
			t.Fatal(err)
		}
		c.hashes = append(c.hashes, server.KeyHash(canonical))
	}
	return r
}

func (c *keyChain) mustPublish(t testing.TB, url string, extra ...signing.Signer) {
	t.Helper()
	if r := c.publish(t, url, c.payload(extra...)); r.status != http.StatusCreated {
		t.Fatalf("publishing version %d: %d %s %s", len(c.docs)+1, r.status, r.code, r.body)
	}
}

func newSigner(t testing.TB, alg string) signing.Signer {
	t.Helper()
	s, err := signing.GenerateKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSigServerAppendsAChainThatVerifiesEndToEnd(t *testing.T) {
	for _, alg := range signing.Algorithms() {
		t.Run(alg, func(t *testing.T) {
			sig := testutil.StartSigServer(t, testutil.SigOptions{})
			chain := newKeyChain(t, alg)
			phone, laptop := newSigner(t, "ed25519"), newSigner(t, "bip340")
			chain.mustPublish(t, sig.URL)
			chain.mustPublish(t, sig.URL, phone)
			chain.mustPublish(t, sig.URL, phone, laptop)
			chain.mustPublish(t, sig.URL, laptop)

			c := client.New(sig.URL, nil)
			latest, err := c.LatestKeys(context.Background(), chain.primaryID())
			if err != nil {
				t.Fatal(err)
			}
			if latest.Version != 4 || !latest.Authorizes(laptop.Alg(), laptop.PublicKey()) || latest.Authorizes(phone.Alg(), phone.PublicKey()) {
				t.Errorf("latest = version %d with keys %v; want version 4 listing the laptop and not the phone", latest.Version, latest.SigningKeys)
			}
			log, err := c.KeyLog(context.Background(), chain.primaryID())
			if err != nil {
				t.Fatal(err)
			}
			if len(log) != 4 {
				t.Fatalf("log has %d documents, want 4", len(log))
			}
			for i, d := range log {
				if !bytes.Equal(d.Hash, chain.hashes[i]) {
					t.Errorf("version %d hash %x, want %x", d.Version, d.Hash, chain.hashes[i])
				}
			}
			// Served documents are the canonical payloads that were signed.
			r := do(t, http.MethodGet, sig.URL+"/v1/keys/"+chain.primaryID(), nil, nil)
			var served signing.Signed
			if err := json.Unmarshal(r.body, &served); err != nil || !bytes.Equal(served.Payload, chain.docs[3].Payload) {
				t.Errorf("GET latest payload = %s, want %s", served.Payload, chain.docs[3].Payload)
			}
		})
	}
}

func TestSigServerLogPagesFollowEachOther(t *testing.T) {
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	chain := newKeyChain(t, "ed25519")
	for range 5 {
		chain.mustPublish(t, sig.URL)
	}
	var got []uint64
	for from := "1"; from != "0"; {
		r := do(t, http.MethodGet, sig.URL+"/v1/keys/"+chain.primaryID()+"/log?limit=2&from="+from, nil, nil)
		var page struct {
			Documents []signing.Signed
			Next      uint64
		}
		if r.status != http.StatusOK || json.Unmarshal(r.body, &page) != nil {
			t.Fatalf("log from %s: %d %s", from, r.status, r.body)
		}
		for _, d := range page.Documents {
			var p server.KeyPayload
			json.Unmarshal(d.Payload, &p)
			got = append(got, p.Version)
		}
		from = jsonNumber(page.Next)
	}
	if want := []uint64{1, 2, 3, 4, 5}; !equalU64(got, want) {
		t.Errorf("paged log versions = %v, want %v", got, want)
	}
}

func jsonNumber(n uint64) string { b, _ := json.Marshal(n); return string(b) }

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSigServerRefusesEachBadDocumentWithItsOwnCode(t *testing.T) {
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	chain := newKeyChain(t, "ed25519")
	chain.mustPublish(t, sig.URL)
	chain.mustPublish(t, sig.URL)
	mallory := newIdentity(t, "ed25519", "mallory")
	tooMany := make([]signing.Signer, server.MaxSigningKeys)
	for i := range tooMany {
		tooMany[i] = newSigner(t, "ed25519")
	}

	tests := []struct {
		name   string
		doc    func() any // the body posted: JSON-encoded, or as is when []byte
		status int
		code   string
	}{
		{"version gap", func() any { p := chain.payload(); p["version"] = 4; return chain.primary.sign(t, p) }, 409, server.CodeVersionGap},
		{"wrong prev", func() any {
			p := chain.payload()
			p["prev"] = signing.EncodeB64(chain.hashes[0])
			return chain.primary.sign(t, p)
		}, 409, server.CodeWrongPrev},
		{"a fork of a stored version", func() any {
			p := chain.payload(newSigner(t, "ed25519"))
			p["version"], p["prev"] = 2, signing.EncodeB64(chain.hashes[0])
			return chain.primary.sign(t, p)
		}, 409, server.CodeVersionTaken},
		{"a fork of version 1", func() any {
			p := chain.payload(newSigner(t, "ed25519"))
			p["version"], p["prev"] = 1, ""
			return chain.primary.sign(t, p)
		}, 409, server.CodeVersionTaken},
		{"signed by a foreign key", func() any { return mallory.sign(t, chain.payload()) }, 403, server.CodeNotPrimaryKey},
		{"signed by a listed device key", func() any {
			dev := &identity{signer: newSigner(t, "ed25519")}
			return dev.sign(t, chain.payload(dev.signer))
		}, 403, server.CodeNotPrimaryKey},
		{"tampered after signing", func() any {
			doc := chain.primary.sign(t, chain.payload())
			doc.Payload = bytes.Replace(doc.Payload, []byte(`"version":3`), []byte(`"version":4`), 1)
			return doc
		}, 401, server.CodeBadSignature},
		{"version 1 without the primary key", func() any {
			other := newKeyChain(t, "ed25519")
			p := other.payload()
			p["signing_keys"] = []any{keyEntry(newSigner(t, "ed25519"), "phone")}
			return other.primary.sign(t, p)
		}, 400, server.CodePrimaryKeyMissing},
		{"version 1 with a prev", func() any {
			other := newKeyChain(t, "ed25519")
			p := other.payload()
			p["prev"] = signing.EncodeB64(chain.hashes[0])
			return other.primary.sign(t, p)
		}, 400, server.CodeInvalidField},
		{"version 0", func() any { p := chain.payload(); p["version"] = 0; return chain.primary.sign(t, p) }, 400, server.CodeInvalidField},
		{"version past the limit", func() any {
			p := chain.payload()
			p["version"] = server.MaxKeyVersion + 1
			return chain.primary.sign(t, p)
		}, 400, server.CodeInvalidField},
		{"negative version", func() any { p := chain.payload(); p["version"] = -1; return chain.primary.sign(t, p) }, 400, server.CodeInvalidField},
		{"prev not 32 bytes", func() any { p := chain.payload(); p["prev"] = "AAAA"; return chain.primary.sign(t, p) }, 400, server.CodeInvalidField},
		{"prev padded", func() any {
			p := chain.payload()
			p["prev"] = p["prev"].(string) + "="
			return chain.primary.sign(t, p)
		}, 400, server.CodeInvalidEncoding},
		{"no signing keys", func() any { p := chain.payload(); p["signing_keys"] = []any{}; return chain.primary.sign(t, p) }, 400, server.CodeInvalidField},
		{"too many signing keys", func() any { return chain.primary.sign(t, chain.payload(tooMany...)) }, 400, server.CodeInvalidField},
		{"a key twice", func() any {
			d := newSigner(t, "ed25519")
			return chain.primary.sign(t, chain.payload(d, d))
		}, 400, server.CodeInvalidField},
		{"label too long", func() any {
			p := chain.payload()
			p["signing_keys"].([]any)[0].(map[string]any)["label"] = strings.Repeat("x", server.MaxKeyLabel+1)
			return chain.primary.sign(t, p)
		}, 400, server.CodeInvalidField},
		{"label with a control character", func() any {
			p := chain.payload()
			p["signing_keys"].([]any)[0].(map[string]any)["label"] = "phone\x1b[2J"
			return chain.primary.sign(t, p)
		}, 400, server.CodeInvalidField},
		{"empty label", func() any {
			p := chain.payload()
			p["signing_keys"].([]any)[0].(map[string]any)["label"] = ""
			return chain.primary.sign(t, p)
		}, 400, server.CodeInvalidField},
		{"unknown key alg", func() any {
			p := chain.payload()
			p["signing_keys"].([]any)[0].(map[string]any)["alg"] = "rsa"
			return chain.primary.sign(t, p)
		}, 400, server.CodeUnknownAlg},
		{"short enc_key", func() any { p := chain.payload(); p["enc_key"] = "AAAA"; return chain.primary.sign(t, p) }, 400, server.CodeInvalidField},
		{"wrong type", func() any { p := chain.payload(); p["type"] = server.TypeRegister; return chain.primary.sign(t, p) }, 400, server.CodeWrongType},
		{"unknown member", func() any { p := chain.payload(); p["server"] = "chat.test"; return chain.primary.sign(t, p) }, 400, server.CodeUnknownField},
		{"stale ts", func() any {
			p := chain.payload()
			p["ts"] = time.Now().Add(-time.Hour).Unix()
			return chain.primary.sign(t, p)
		}, 400, server.CodeStaleTimestamp},
		{"malformed primary_id", func() any { p := chain.payload(); p["primary_id"] = "ABC"; return chain.primary.sign(t, p) }, 400, server.CodeInvalidField},
		{"not JSON", func() any { return []byte(`{"payload":`) }, 400, server.CodeInvalidJSON},
		{"payload not an object", func() any { return json.RawMessage(`{"payload":[1],"signature":{}}`) }, 400, server.CodeInvalidField},
		{"oversize body", func() any {
			p := chain.payload()
			p["signing_keys"].([]any)[0].(map[string]any)["label"] = strings.Repeat("x", server.MaxKeyDocument)
			return chain.primary.sign(t, p)
		}, 413, server.CodeBodyTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r response
			if raw, ok := tt.doc().([]byte); ok {
				r = do(t, http.MethodPost, sig.URL+"/v1/keys", raw, nil)
			} else {
				r = postJSON(t, sig.URL+"/v1/keys", tt.doc())
			}
			if r.status != tt.status || r.code != tt.code {
				t.Errorf("got %d %s (%s), want %d %s", r.status, r.code, r.body, tt.status, tt.code)
			}
		})
	}
	// None of it changed the chain.
	latest, err := client.New(sig.URL, nil).LatestKeys(context.Background(), chain.primaryID())
	if err != nil || latest.Version != 2 || !bytes.Equal(latest.Hash, chain.hashes[1]) {
		t.Errorf("after the refusals the latest is %+v, %v; want version 2 unchanged", latest, err)
	}
}

func TestSigServerAnswersARepostOfAStoredDocumentAgain(t *testing.T) {
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	chain := newKeyChain(t, "ed25519")
	chain.mustPublish(t, sig.URL)
	chain.mustPublish(t, sig.URL)
	for i, doc := range chain.docs {
		r := postJSON(t, sig.URL+"/v1/keys", doc)
		var receipt struct {
			Version uint64
			Hash    string
		}
		json.Unmarshal(r.body, &receipt)
		if r.status != http.StatusOK || r.header.Get("Idempotent-Replayed") != "true" ||
			receipt.Version != uint64(i+1) || receipt.Hash != signing.EncodeB64(chain.hashes[i]) {
			t.Errorf("repost of version %d: %d %s %+v", i+1, r.status, r.header.Get("Idempotent-Replayed"), receipt)
		}
	}
}

func TestSigServerConcurrentNextVersionsGiveExactlyOne201(t *testing.T) {
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	chain := newKeyChain(t, "ed25519")
	chain.mustPublish(t, sig.URL)
	const n = 8
	docs := make([]signing.Signed, n)
	for i := range docs {
		docs[i] = chain.primary.sign(t, chain.payload(newSigner(t, "ed25519")))
	}
	statuses := make([]response, n)
	var wg sync.WaitGroup
	for i := range docs {
		wg.Go(func() { statuses[i] = postJSON(t, sig.URL+"/v1/keys", docs[i]) })
	}
	wg.Wait()
	created := 0
	for _, r := range statuses {
		switch {
		case r.status == http.StatusCreated:
			created++
		case r.status != http.StatusConflict || r.code != server.CodeVersionTaken:
			t.Errorf("a losing publish got %d %s, want 409 %s", r.status, r.code, server.CodeVersionTaken)
		}
	}
	if created != 1 {
		t.Errorf("%d publishes of version 2 were created, want exactly 1", created)
	}
}

func TestSigServerReadRefusals(t *testing.T) {
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	chain := newKeyChain(t, "ed25519")
	chain.mustPublish(t, sig.URL)
	unknown := strings.Repeat("ab", 20)
	tests := []struct {
		name, method, path string
		status             int
		code               string
	}{
		{"unknown identity", "GET", "/v1/keys/" + unknown, 404, server.CodeUnknownIdentity},
		{"malformed primary_id", "GET", "/v1/keys/..%2f..", 404, server.CodeUnknownIdentity},
		{"upper-case primary_id", "GET", "/v1/keys/" + strings.ToUpper(chain.primaryID()), 404, server.CodeUnknownIdentity},
		{"log of an unknown identity", "GET", "/v1/keys/" + unknown + "/log", 404, server.CodeUnknownIdentity},
		{"log from a signed number", "GET", "/v1/keys/" + chain.primaryID() + "/log?from=-1", 400, server.CodeInvalidField},
		{"log from a huge number", "GET", "/v1/keys/" + chain.primaryID() + "/log?from=99999999999999999999", 400, server.CodeInvalidField},
		{"log limit with a leading zero", "GET", "/v1/keys/" + chain.primaryID() + "/log?limit=01", 400, server.CodeInvalidField},
		{"DELETE a document", "DELETE", "/v1/keys/" + chain.primaryID(), 405, server.CodeMethodNotAllowed},
		{"GET the publish route", "GET", "/v1/keys", 405, server.CodeMethodNotAllowed},
		{"a chat route", "GET", "/v1/u/alice", 404, server.CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, tt.method, sig.URL+tt.path, nil, nil)
			if r.status != tt.status || r.code != tt.code {
				t.Errorf("%s %s = %d %s, want %d %s", tt.method, tt.path, r.status, r.code, tt.status, tt.code)
			}
		})
	}
	// Past the end of a known chain is an empty page, not an error.
	r := do(t, "GET", sig.URL+"/v1/keys/"+chain.primaryID()+"/log?from=7", nil, nil)
	if r.status != http.StatusOK || !bytes.Contains(r.body, []byte(`"documents":[]`)) {
		t.Errorf("log past the end = %d %s, want 200 with no documents", r.status, r.body)
	}
}

func TestSigServerHealthAndReadiness(t *testing.T) {
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	for _, path := range []string{"/v1/healthz", "/v1/readyz"} {
		if r := do(t, "GET", sig.URL+path, nil, nil); r.status != http.StatusOK {
			t.Errorf("GET %s = %d %s", path, r.status, r.body)
		}
	}
	sig.Store.Close()
	if r := do(t, "GET", sig.URL+"/v1/readyz", nil, nil); r.status != http.StatusServiceUnavailable || r.code != server.CodeUnavailable {
		t.Errorf("readyz with the database closed = %d %s, want 503 unavailable", r.status, r.code)
	}
}
