package signing

import (
	"fmt"
	"maps"
	"slices"
)

// Both suites use 32-byte public keys and private keys and 64-byte signatures.
const (
	keySize = 32
	sigSize = 64
)

// A Suite is one signature algorithm. Verify applies the suite's rule for what
// is actually signed: ed25519 (RFC 8032) signs msg itself; bip340 (BIP-340
// Schnorr over secp256k1, 32-byte x-only keys) signs sha256(msg).
type Suite interface {
	// Name is the algorithm's wire name, "ed25519" or "bip340".
	Name() string
	// Verify reports ErrBadKey or ErrBadSignature (wrapped) when sig is not
	// a signature of msg under pub. It checks sizes, so it never panics.
	Verify(pub, msg, sig []byte) error
	// Generate makes a new key pair from crypto/rand.
	Generate() (Signer, error)
	// NewSigner loads a private key as returned by Signer.PrivateKey:
	// the 32-byte seed for ed25519, the 32-byte secret key for bip340.
	NewSigner(priv []byte) (Signer, error)
}

// A Signer holds one private key.
type Signer interface {
	Alg() string
	// PublicKey returns a copy of the raw 32-byte public key.
	PublicKey() []byte
	// PrivateKey returns a copy of the raw 32-byte seed or secret key, for the
	// owner's keystore only.
	PrivateKey() []byte
	// Sign returns the 64-byte signature, applying the suite's rule for what
	// is signed (bip340 signs sha256(msg)).
	Sign(msg []byte) ([]byte, error)
}

// suites is the only place algorithms are dispatched, so adding a suite is
// adding an entry here.
var suites = map[string]Suite{
	algEd25519: ed25519Suite{},
	algBIP340:  bip340Suite{},
}

// Lookup returns the suite named alg, or an error wrapping ErrUnknownAlg.
func Lookup(alg string) (Suite, error) {
	s, ok := suites[alg]
	if !ok {
		return nil, fmt.Errorf("%w: %.32q", ErrUnknownAlg, alg)
	}
	return s, nil
}

// Algorithms returns the supported algorithm names, sorted.
func Algorithms() []string {
	return slices.Sorted(maps.Keys(suites))
}

// Verify checks sig over msg under pub with the suite named alg. Key and
// signature sizes are checked (32 and 64 bytes) before any curve arithmetic.
// Errors wrap ErrUnknownAlg, ErrBadKey or ErrBadSignature.
func Verify(alg string, pub, msg, sig []byte) error {
	s, err := Lookup(alg)
	if err != nil {
		return err
	}
	return s.Verify(pub, msg, sig)
}

// GenerateKey makes a new key pair for alg.
func GenerateKey(alg string) (Signer, error) {
	s, err := Lookup(alg)
	if err != nil {
		return nil, err
	}
	return s.Generate()
}

// NewSigner loads a private key for alg (see Suite.NewSigner).
func NewSigner(alg string, priv []byte) (Signer, error) {
	s, err := Lookup(alg)
	if err != nil {
		return nil, err
	}
	return s.NewSigner(priv)
}

// checkSizes is shared by the suites; it runs first in every Suite.Verify.
func checkSizes(pub, sig []byte) error {
	if len(pub) != keySize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrBadKey, len(pub), keySize)
	}
	if len(sig) != sigSize {
		return fmt.Errorf("%w: signature is %d bytes, want %d", ErrBadSignature, len(sig), sigSize)
	}
	return nil
}

// checkPrivateSize guards Suite.NewSigner. ErrBadKey names public keys, so
// private key errors are plain.
func checkPrivateSize(alg string, priv []byte) error {
	if len(priv) != keySize {
		return fmt.Errorf("loading %s private key: %d bytes, want %d", alg, len(priv), keySize)
	}
	return nil
}
