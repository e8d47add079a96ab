package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
)

const algEd25519 = "ed25519"

// ed25519Suite is RFC 8032 Ed25519 over the message itself.
type ed25519Suite struct{}

func (ed25519Suite) Name() string { return algEd25519 }

// Verify cannot tell a 32-byte string that is not a curve point from a wrong
// signature (crypto/ed25519 reports neither separately), so both give
// ErrBadSignature.
func (ed25519Suite) Verify(pub, msg, sig []byte) error {
	if err := checkSizes(pub, sig); err != nil {
		return err
	}
	if !ed25519.Verify(pub, msg, sig) {
		return ErrBadSignature
	}
	return nil
}

func (ed25519Suite) Generate() (Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating ed25519 key: %w", err)
	}
	return ed25519Signer{priv: priv}, nil
}

func (ed25519Suite) NewSigner(seed []byte) (Signer, error) {
	if err := checkPrivateSize(algEd25519, seed); err != nil {
		return nil, err
	}
	return ed25519Signer{priv: ed25519.NewKeyFromSeed(seed)}, nil
}

type ed25519Signer struct {
	priv ed25519.PrivateKey
}

func (ed25519Signer) Alg() string { return algEd25519 }

func (s ed25519Signer) PublicKey() []byte {
	return bytes.Clone(s.priv.Public().(ed25519.PublicKey))
}

func (s ed25519Signer) PrivateKey() []byte { return bytes.Clone(s.priv.Seed()) }

func (s ed25519Signer) Sign(msg []byte) ([]byte, error) {
	return ed25519.Sign(s.priv, msg), nil
}
