package pushtest

import (
	"bytes"
	"crypto/ecdh"
	"encoding/base64"
	"encoding/json"
	"os"
	"testing"
)

// appendixA is RFC 8291's worked example (testdata/README.md).
type appendixA struct {
	Plaintext        string `json:"plaintext"`
	ServerPublic     string `json:"application_server_public"`
	UserAgentPrivate string `json:"user_agent_private"`
	UserAgentPublic  string `json:"user_agent_public"`
	AuthSecret       string `json:"auth_secret"`
	Salt             string `json:"salt"`
	RecordSize       uint32 `json:"record_size"`
	Body             string `json:"body"`
}

func loadAppendixA(t *testing.T) (v appendixA, ua *ecdh.PrivateKey, auth, body []byte) {
	t.Helper()
	raw, err := os.ReadFile("testdata/rfc8291-appendix-a.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	ua, err = ecdh.P256().NewPrivateKey(b64(t, v.UserAgentPrivate))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ua.PublicKey().Bytes(), b64(t, v.UserAgentPublic)) {
		t.Fatal("user_agent_private does not match user_agent_public")
	}
	return v, ua, b64(t, v.AuthSecret), b64(t, v.Body)
}

func b64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("decoding %q: %v", s, err)
	}
	return b
}

func TestDecryptOpensRFC8291AppendixA(t *testing.T) {
	v, ua, auth, body := loadAppendixA(t)
	// The header carries the example's salt, rs and sender key.
	if !bytes.HasPrefix(body, b64(t, v.Salt)) || !bytes.Contains(body[:headerLen+pointLen], b64(t, v.ServerPublic)) {
		t.Fatal("the example body's header does not hold its salt and server key")
	}
	got, err := Decrypt(body, ua, auth)
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if string(got) != v.Plaintext {
		t.Fatalf("plaintext = %q, want %q", got, v.Plaintext)
	}
}

func TestDecryptRefusesWhatDoesNotOpen(t *testing.T) {
	_, ua, auth, body := loadAppendixA(t)
	other, err := ecdh.P256().GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	modified := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(body)) }
	tests := []struct {
		name string
		body []byte
		ua   *ecdh.PrivateKey
		auth []byte
	}{
		{"another subscription's key", body, other, auth},
		{"another auth secret", body, ua, bytes.Repeat([]byte{1}, 16)},
		{"an auth secret of the wrong length", body, ua, auth[:15]},
		{"a flipped ciphertext bit", modified(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ua, auth},
		{"a different salt", modified(func(b []byte) []byte { b[0] ^= 1; return b }), ua, auth},
		{"a truncated header", body[:headerLen+10], ua, auth},
		{"no ciphertext", body[:headerLen+pointLen], ua, auth},
		{"a keyid that is not a 65-byte key", modified(func(b []byte) []byte { b[saltLen+4] = 64; return b }), ua, auth},
		{"a record not below rs", modified(func(b []byte) []byte { b[saltLen+2], b[saltLen+3] = 0, 0x30; return b }), ua, auth},
		{"a record size under the minimum", modified(func(b []byte) []byte { b[saltLen+2], b[saltLen+3] = 0, 17; return b }), ua, auth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := Decrypt(tt.body, tt.ua, tt.auth); err == nil {
				t.Fatalf("Decrypt = %q, want an error", got)
			}
		})
	}
}
