package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

const algEd25519 = "ed25519"

// ed25519Suite is RFC 8032 Ed25519 over the message itself.
type ed25519Suite struct{}

func (ed25519Suite) Name() string { return algEd25519 }

// stdlibRules are crypto/ed25519's acceptance rules, which verification
// keeps exactly: cofactorless, S < L required, non-canonical and small-order
// keys and R accepted as the standard library accepts them. curve25519-voi
// verifies under them in about 60% of crypto/ed25519's time (AVX2 and a
// wider precomputed table); TestEd25519VerifyMatchesStdlib holds the two to
// the same answers on the edge cases where verifiers are known to differ.
var stdlibRules = &voi.Options{Verify: voi.VerifyOptionsStdLib}

// Verify cannot tell a 32-byte string that is not a curve point from a wrong
// signature (neither library reports them separately), so both give
// ErrBadSignature.
func (ed25519Suite) Verify(pub, msg, sig []byte) error {
	if err := checkSizes(pub, sig); err != nil {
		return err
	}
	k := expandedKeys.get(pub)
	cached := k != nil
	if !cached {
		var err error
		if k, err = voi.NewExpandedPublicKey(voi.PublicKey(pub)); err != nil {
			// Not a point: refused, as the standard library refuses it.
			return ErrBadSignature
		}
	}
	if !voi.VerifyExpandedWithOptions(k, msg, sig, stdlibRules) {
		return ErrBadSignature
	}
	if !cached {
		// Kept only once a signature verified under it: a stranger's fresh
		// keys cost what they cost before, and can only push others' keys
		// out of a cache bounded in bytes.
		expandedKeys.add(pub, k)
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
