package client

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/json"
	"errors"
	"fmt"

	"kez.lat/chat/server"
)

// hpkeInfo is the HPKE info string of every message ciphertext.
const hpkeInfo = "kez-chat/v1 message"

// encSize is the size of the DHKEM(X25519) encapsulated key at the start of
// a ciphertext.
const encSize = 32

// Seal encrypts plaintext to a recipient's raw X25519 public key with HPKE
// base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305,
// info "kez-chat/v1 message", no aad. The result is enc (32 bytes) ||
// ciphertext.
func Seal(recipientEncKey, plaintext []byte) ([]byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(recipientEncKey)
	if err != nil {
		return nil, fmt.Errorf("seal: recipient key: %w", err)
	}
	pk, err := hpke.NewDHKEMPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	ct, err := hpke.Seal(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), []byte(hpkeInfo), plaintext)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return ct, nil
}

// Open decrypts what Seal produced for priv's public key.
func Open(priv *ecdh.PrivateKey, ct []byte) ([]byte, error) {
	if priv == nil || priv.Curve() != ecdh.X25519() {
		return nil, errors.New("open: need an X25519 private key")
	}
	if len(ct) < encSize {
		return nil, fmt.Errorf("open: ciphertext is %d bytes, shorter than the %d-byte encapsulated key", len(ct), encSize)
	}
	k, err := hpke.NewDHKEMPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	pt, err := hpke.Open(k, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), []byte(hpkeInfo), ct)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	return pt, nil
}

// marshalPlaintext encodes p without Go's HTML escaping, so <, > and & in a
// body stay literal as in every other client.
func marshalPlaintext(p Plaintext) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// parsePlaintext decodes and checks the version of a decrypted plaintext.
// Unknown members are ignored so later clients may add some.
func parsePlaintext(b []byte) (Plaintext, error) {
	var p Plaintext
	if err := server.DecodeOpenJSON(b, &p); err != nil {
		return Plaintext{}, fmt.Errorf("plaintext: %w", err)
	}
	if p.V != 1 {
		return Plaintext{}, fmt.Errorf("plaintext version %d is not supported", p.V)
	}
	if err := p.Check(); err != nil {
		return Plaintext{}, fmt.Errorf("plaintext: %w", err)
	}
	return p, nil
}
