package signing

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

type testPayload struct {
	Type string `json:"type"`
	Text string `json:"text"`
	N    int    `json:"n"`
}

var samplePayload = testPayload{Type: "msg", Text: "a<b & c>d, é€", N: 7}

// sampleCanonical is samplePayload in RFC 8785 form: sorted names, literal
// "<", ">", "&" and UTF-8.
const sampleCanonical = `{"n":7,"text":"a<b & c>d, é€","type":"msg"}`

func TestSignStoresCanonicalPayloadAndVerifies(t *testing.T) {
	for _, alg := range Algorithms() {
		t.Run(alg, func(t *testing.T) {
			s := fixedSigner(t, alg)
			doc, err := Sign(s, samplePayload)
			if err != nil {
				t.Fatal(err)
			}
			if string(doc.Payload) != sampleCanonical {
				t.Errorf("Payload = %s, want %s", doc.Payload, sampleCanonical)
			}
			if doc.Signature.Alg != alg || doc.Signature.Key != EncodeB64(s.PublicKey()) {
				t.Errorf("Signature = %+v", doc.Signature)
			}
			canonical, pub, err := doc.Verify()
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if string(canonical) != sampleCanonical || !bytes.Equal(pub, s.PublicKey()) {
				t.Errorf("Verify = %s, %x", canonical, pub)
			}
		})
	}
}

func TestSignedVerifySurvivesJSONRoundTrip(t *testing.T) {
	for _, alg := range Algorithms() {
		t.Run(alg, func(t *testing.T) {
			doc, err := Sign(fixedSigner(t, alg), samplePayload)
			if err != nil {
				t.Fatal(err)
			}
			// encoding/json re-escapes "<" etc. inside the RawMessage.
			wire, err := json.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			var got Signed
			if err := json.Unmarshal(wire, &got); err != nil {
				t.Fatal(err)
			}
			canonical, _, err := got.Verify()
			if err != nil || string(canonical) != sampleCanonical {
				t.Errorf("Verify after round trip = %s, %v", canonical, err)
			}
		})
	}
}

func TestSignedVerifyRefusesAlteredDocuments(t *testing.T) {
	ed, err := Sign(fixedSigner(t, algEd25519), samplePayload)
	if err != nil {
		t.Fatal(err)
	}
	bip, err := Sign(fixedSigner(t, algBIP340), samplePayload)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		doc    Signed
		mutate func(*Signed)
		want   error // nil: must still verify
	}{
		{"reformatted payload still verifies", ed, func(d *Signed) {
			d.Payload = json.RawMessage(`{ "type":"msg", "text":"a\u003cb & c>d, \u00e9€", "n":7.0 }`)
		}, nil},
		{"tampered payload", ed, func(d *Signed) { d.Payload = json.RawMessage(`{"n":8,"text":"a<b & c>d, é€","type":"msg"}`) }, ErrBadSignature},
		{"tampered bip340 payload", bip, func(d *Signed) { d.Payload = json.RawMessage(`{"n":8}`) }, ErrBadSignature},
		{"wrong key", ed, func(d *Signed) { d.Signature.Key = EncodeB64(mustHex(t, rfc8032Vectors[1].pub)) }, ErrBadSignature},
		{"bip340 document labelled ed25519", bip, func(d *Signed) { d.Signature.Alg = "ed25519" }, ErrBadSignature},
		// The RFC 8032 TEST 1 key is not a secp256k1 x coordinate.
		{"ed25519 document labelled bip340", ed, func(d *Signed) { d.Signature.Alg = "bip340" }, ErrBadKey},
		{"unknown alg", ed, func(d *Signed) { d.Signature.Alg = "rsa" }, ErrUnknownAlg},
		{"padded base64 key", ed, func(d *Signed) { d.Signature.Key += "=" }, ErrMalformed},
		{"standard base64 sig", ed, func(d *Signed) { d.Signature.Sig = "+" + d.Signature.Sig[1:] }, ErrMalformed},
		{"short key", ed, func(d *Signed) { d.Signature.Key = EncodeB64(make([]byte, 31)) }, ErrBadKey},
		{"short sig", ed, func(d *Signed) { d.Signature.Sig = EncodeB64(make([]byte, 63)) }, ErrBadSignature},
		{"array payload", ed, func(d *Signed) { d.Payload = json.RawMessage(`[1]`) }, ErrMalformed},
		{"string payload", ed, func(d *Signed) { d.Payload = json.RawMessage(`"x"`) }, ErrMalformed},
		{"null payload", ed, func(d *Signed) { d.Payload = json.RawMessage(`null`) }, ErrMalformed},
		{"missing payload", ed, func(d *Signed) { d.Payload = nil }, ErrMalformed},
		{"duplicate member in payload", ed, func(d *Signed) { d.Payload = json.RawMessage(`{"n":7,"n":7}`) }, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := tt.doc
			tt.mutate(&doc)
			_, _, err := doc.Verify()
			if tt.want == nil && err != nil {
				t.Errorf("Verify = %v, want success", err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSignRefusesNonObjectOrAmbiguousPayload(t *testing.T) {
	s := fixedSigner(t, algEd25519)
	for _, payload := range []any{[]int{1}, "x", nil, 3, json.RawMessage(`{"a":1,"a":2}`)} {
		if _, err := Sign(s, payload); !errors.Is(err, ErrMalformed) {
			t.Errorf("Sign(%#v) = %v, want ErrMalformed", payload, err)
		}
	}
	if _, err := Sign(s, map[string]any{"c": make(chan int)}); err == nil {
		t.Error("Sign(unmarshallable) succeeded")
	}
}
