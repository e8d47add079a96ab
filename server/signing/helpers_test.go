package signing

import (
	"encoding/hex"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// Fixed keys from the published vectors, for tests that need deterministic
// keys: RFC 8032 section 7.1 TEST 1, and BIP-340 vector 1.
const (
	ed25519TestSeed  = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
	bip340TestSecret = "B7E151628AED2A6ABF7158809CF4F3C762E7160F38B4DA56A784D9045190CFEF"
)

func fixedSigner(t testing.TB, alg string) Signer {
	t.Helper()
	priv := map[string]string{algEd25519: ed25519TestSeed, algBIP340: bip340TestSecret}[alg]
	s, err := NewSigner(alg, mustHex(t, priv))
	if err != nil {
		t.Fatalf("NewSigner(%s): %v", alg, err)
	}
	return s
}
