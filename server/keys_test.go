package server_test

import (
	"encoding/hex"
	"encoding/json"
	"testing"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// The worked example of docs/protocol.md, "Key documents": version 1 of
// the RFC 8032 TEST 1 key's identity. Ed25519 is deterministic, so the
// signature is fixed too.
const (
	vectorCanonical = `{"enc_key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8","prev":"","primary_id":"afa6f980e4ffe724e2b182845ba49ef1ca7abc42","signing_keys":[{"alg":"ed25519","key":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","label":"primary"}],"ts":1764000000,"type":"kez.sig.keys/v1","version":1}`
	vectorSig       = "6uk8lewwwVODnj-wuz8XKtlC9X8yQfOzF3Jicv_b8lhmSmQtln1nB33Sizyk5tzW_CCDfOevgSxojkD8Iw2RCg"
	vectorHash      = "FimngYxTm-jVcdPnpY3MrE81TOZoUwiayEUwYUlLV8k"
)

func TestKeyDocumentMatchesTheProtocolsWorkedExample(t *testing.T) {
	seed, _ := hex.DecodeString("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
	s, err := signing.NewSigner("ed25519", seed)
	if err != nil {
		t.Fatal(err)
	}
	enc := make([]byte, 32)
	for i := range enc {
		enc[i] = byte(i)
	}
	doc, err := signing.Sign(s, server.KeyPayload{
		Type: server.TypeKeys, PrimaryID: signing.PrimaryID("ed25519", s.PublicKey()), Version: 1,
		SigningKeys: []server.SigningKeyJSON{{Alg: "ed25519", Key: signing.EncodeB64(s.PublicKey()), Label: "primary"}},
		EncKey:      signing.EncodeB64(enc), TS: 1764000000,
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(doc.Payload) != vectorCanonical || doc.Signature.Sig != vectorSig {
		t.Fatalf("signed bytes %s, sig %s; want the protocol's example", doc.Payload, doc.Signature.Sig)
	}
	d, err := server.ParseKeyDocument(doc)
	if err != nil {
		t.Fatal(err)
	}
	if got := signing.EncodeB64(d.Hash); got != vectorHash {
		t.Errorf("hash = %s, want %s", got, vectorHash)
	}
	if err := d.Follows(nil); err != nil {
		t.Errorf("version 1 does not start a chain: %v", err)
	}
}

func TestFollowsRefusesEveryBrokenLink(t *testing.T) {
	s, _ := signing.GenerateKey("ed25519")
	other, _ := signing.GenerateKey("ed25519")
	mk := func(signer signing.Signer, version uint64, prev []byte) *server.KeyDocument {
		t.Helper()
		p := server.KeyPayload{
			Type: server.TypeKeys, PrimaryID: signing.PrimaryID(signer.Alg(), signer.PublicKey()), Version: version,
			SigningKeys: []server.SigningKeyJSON{{Alg: signer.Alg(), Key: signing.EncodeB64(signer.PublicKey()), Label: "k"}},
			EncKey:      signing.EncodeB64(make([]byte, 32)), TS: 1,
		}
		if prev != nil {
			p.Prev = signing.EncodeB64(prev)
		}
		doc, err := signing.Sign(signer, p)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(doc)
		d, err := server.ParseKeyDocumentJSON(raw)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	v1 := mk(s, 1, nil)
	v2 := mk(s, 2, v1.Hash)
	tests := []struct {
		name       string
		next, prev *server.KeyDocument
		code       string // "" means it follows
	}{
		{"version 1 starts a chain", v1, nil, ""},
		{"version 2 follows version 1", v2, v1, ""},
		{"version 2 cannot start a chain", v2, nil, server.CodeVersionGap},
		{"a skipped version", mk(s, 3, v1.Hash), v1, server.CodeVersionGap},
		{"the same version again", v1, v1, server.CodeVersionGap},
		{"a prev that is not the previous hash", mk(s, 2, v2.Hash), v1, server.CodeWrongPrev},
		{"another identity's document", mk(other, 2, v1.Hash), v1, server.CodeInvalidField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.next.Follows(tt.prev)
			if got := server.ErrorCode(err); (tt.code == "" && err != nil) || (tt.code != "" && got != tt.code) {
				t.Errorf("Follows = %v, want code %q", err, tt.code)
			}
		})
	}
}
