package signing

import (
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"math/big"
	"testing"

	"filippo.io/edwards25519"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// The server verifies Ed25519 with curve25519-voi under crypto/ed25519's
// rules. These tests hold the two to the same answer where Ed25519
// verifiers are known to differ (Chalkias, Garillot, Nikolaenko, "Taming
// the many EdDSAs", 2020): small-order and mixed-order keys and R,
// non-canonical encodings of both, and S not reduced.

// smallOrderPoints are the encodings of points of order 1, 2, 4 and 8, with
// both signs of x where x is not 0 (smallOrderPoint checks each).
var smallOrderPoints = []string{
	"0100000000000000000000000000000000000000000000000000000000000000", // identity
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 2: y = -1
	"0000000000000000000000000000000000000000000000000000000000000000", // order 4: y = 0
	"0000000000000000000000000000000000000000000000000000000000000080",
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", // order 8
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
}

// nonCanonicalPoints encode valid points in ways a canonical encoder never
// writes: y ≥ p, or x = 0 with the sign bit set.
var nonCanonicalPoints = []string{
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = 1 + p: the identity
	"0100000000000000000000000000000000000000000000000000000000000080", // the identity, "-0"
	"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", // y = p = 0, sign set
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", // y = 1 + p, sign set
}

func smallOrderPoint(t testing.TB, enc string) *edwards25519.Point {
	t.Helper()
	p, err := new(edwards25519.Point).SetBytes(mustHex(t, enc))
	if err != nil {
		t.Fatalf("small-order point %s does not decode: %v", enc, err)
	}
	if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) != 1 {
		t.Fatalf("%s is not of small order", enc)
	}
	return p
}

// ed25519Case is one (key, message, signature) triple to verify.
type ed25519Case struct {
	name          string
	pub, msg, sig []byte
}

// edwardsKey is a signing key as scalar and public point, for building
// signatures crypto/ed25519 would never make.
type edwardsKey struct {
	a *edwards25519.Scalar
	A *edwards25519.Point
}

func newEdwardsKey(t testing.TB, seed []byte) edwardsKey {
	t.Helper()
	h := sha512.Sum512(seed)
	a, err := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
	if err != nil {
		t.Fatal(err)
	}
	return edwardsKey{a: a, A: new(edwards25519.Point).ScalarBaseMult(a)}
}

// challenge is k = SHA-512(R || A || M) mod L.
func challenge(t testing.TB, R, A, msg []byte) *edwards25519.Scalar {
	t.Helper()
	h := sha512.New()
	h.Write(R)
	h.Write(A)
	h.Write(msg)
	k, err := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// signWith signs msg as a holder of scalar a would for the key encoded as
// pubEnc, with nonce point R = [r]B + extra: S = r + k·a.
func signWith(t testing.TB, a *edwards25519.Scalar, pubEnc, msg []byte, r *edwards25519.Scalar, extra *edwards25519.Point) []byte {
	t.Helper()
	R := new(edwards25519.Point).ScalarBaseMult(r)
	if extra != nil {
		R.Add(R, extra)
	}
	Renc := R.Bytes()
	k := challenge(t, Renc, pubEnc, msg)
	S := edwards25519.NewScalar().MultiplyAdd(k, a, r)
	return append(Renc, S.Bytes()...)
}

// unreducedS returns sig with S replaced by S + L, the same scalar mod L.
func unreducedS(sig []byte) []byte {
	l, _ := new(big.Int).SetString("7237005577332262213973186563042994240857116359379907606001950938285454250989", 10)
	le := func(b []byte) []byte { // little-endian <-> big-endian
		out := make([]byte, len(b))
		for i := range b {
			out[len(b)-1-i] = b[i]
		}
		return out
	}
	s := new(big.Int).SetBytes(le(sig[32:]))
	s.Add(s, l)
	buf := make([]byte, 32)
	s.FillBytes(buf)
	return append(append([]byte(nil), sig[:32]...), le(buf)...)
}

func ed25519EdgeCases(t testing.TB) []ed25519Case {
	t.Helper()
	seed := mustHex(t, ed25519TestSeed)
	key := newEdwardsKey(t, seed)
	pub := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
	msg := []byte(`{"type":"message","server":"chat.example"}`)
	valid := ed25519.Sign(ed25519.NewKeyFromSeed(seed), msg)
	var cases []ed25519Case
	add := func(name string, pub, msg, sig []byte) {
		cases = append(cases, ed25519Case{name, pub, msg, sig})
	}
	add("valid", pub, msg, valid)
	add("S+L", pub, msg, unreducedS(valid))
	r, err := edwards25519.NewScalar().SetCanonicalBytes(mustHex(t, "0300000000000000000000000000000000000000000000000000000000000000"))
	if err != nil {
		t.Fatal(err)
	}
	for i, enc := range smallOrderPoints {
		T := smallOrderPoint(t, enc)
		// R with a small-order component: the cofactored equation holds,
		// the cofactorless one (the standard library's) does not.
		add(fmt.Sprintf("mixed-order R %d", i), pub, msg, signWith(t, key.a, pub, msg, r, T))
		// A key with a small-order component, signed by the holder of its
		// prime-order part.
		mixedA := new(edwards25519.Point).Add(key.A, T).Bytes()
		for j := range 4 {
			m := append([]byte(fmt.Sprintf("%d:", j)), msg...)
			add(fmt.Sprintf("mixed-order A %d/%d", i, j), mixedA, m, signWith(t, key.a, mixedA, m, r, nil))
		}
		// A small-order key: S = 0 and each small-order R, one of which may
		// satisfy R = -[k]A.
		for j, renc := range smallOrderPoints {
			add(fmt.Sprintf("small-order A %d, R %d, S 0", i, j), mustHex(t, enc), msg, append(mustHex(t, renc), make([]byte, 32)...))
		}
		// A valid signature with S + L under a small-order R.
		add(fmt.Sprintf("mixed-order R %d, S+L", i), pub, msg, unreducedS(signWith(t, key.a, pub, msg, r, T)))
	}
	for i, enc := range nonCanonicalPoints {
		identity := mustHex(t, smallOrderPoints[0])
		zeroS := make([]byte, 32)
		// The identity as A with R the identity and S = 0 verifies under
		// the cofactorless equation: only the encodings decide.
		add(fmt.Sprintf("non-canonical A %d", i), mustHex(t, enc), msg, append(identity, zeroS...))
		add(fmt.Sprintf("non-canonical R %d", i), identity, msg, append(mustHex(t, enc), zeroS...))
		add(fmt.Sprintf("non-canonical A and R %d", i), mustHex(t, enc), msg, append(mustHex(t, enc), zeroS...))
	}
	add("A not on the curve", mustHex(t, "0200000000000000000000000000000000000000000000000000000000000000"), msg, valid)
	add("all ones", bytesOf(0xff, 32), msg, bytesOf(0xff, 64))
	return cases
}

func bytesOf(b byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

func TestEd25519VerifyMatchesStdlib(t *testing.T) {
	accepted := 0
	for _, c := range ed25519EdgeCases(t) {
		want := ed25519.Verify(c.pub, c.msg, c.sig)
		for _, cached := range []bool{false, true} {
			got := verifyEd25519With(c, cached)
			if got != want {
				t.Errorf("%s (key cached: %v): Verify accepts = %v, crypto/ed25519 accepts = %v (pub %s sig %s)",
					c.name, cached, got, want, hex.EncodeToString(c.pub), hex.EncodeToString(c.sig))
			}
		}
		if want {
			accepted++
		}
	}
	// The cases are not all refusals: some of the odd ones are accepted by
	// the standard library, and must be here too.
	if accepted < 2 {
		t.Errorf("crypto/ed25519 accepted %d edge cases; the set should exercise acceptance too", accepted)
	}
}

// verifyEd25519With verifies c with the key's expansion cached or not
// (where the key is a point at all).
func verifyEd25519With(c ed25519Case, cached bool) bool {
	expandedKeys.clear()
	if cached {
		if k, err := voi.NewExpandedPublicKey(voi.PublicKey(c.pub)); err == nil {
			expandedKeys.add(c.pub, k)
		}
	}
	return Verify(algEd25519, c.pub, c.msg, c.sig) == nil
}

func TestExpandedKeyCacheStaysWithinItsBound(t *testing.T) {
	expandedKeys.clear()
	msg := []byte("m")
	for range expandedKeys.max + 50 {
		s, err := GenerateKey(algEd25519)
		if err != nil {
			t.Fatal(err)
		}
		sig, _ := s.Sign(msg)
		if err := Verify(algEd25519, s.PublicKey(), msg, sig); err != nil {
			t.Fatal(err)
		}
	}
	if n := expandedKeys.len(); n != expandedKeys.max {
		t.Fatalf("the cache holds %d keys, want its bound %d", n, expandedKeys.max)
	}
	if bytes := expandedKeys.max * expandedKeyBytes; bytes > expandedKeyCacheBytes {
		t.Fatalf("%d keys of %d bytes exceed the %d-byte budget", expandedKeys.max, expandedKeyBytes, expandedKeyCacheBytes)
	}
}

// Only a key that verified is kept: a stranger's failed attempts do not
// take room.
func TestExpandedKeyCacheKeepsOnlyKeysThatVerified(t *testing.T) {
	expandedKeys.clear()
	s := fixedSigner(t, algEd25519)
	sig, _ := s.Sign([]byte("m"))
	if Verify(algEd25519, s.PublicKey(), []byte("other"), sig) == nil {
		t.Fatal("a signature over other bytes verified")
	}
	if n := expandedKeys.len(); n != 0 {
		t.Fatalf("a failed verification left %d keys in the cache", n)
	}
	if err := Verify(algEd25519, s.PublicKey(), []byte("m"), sig); err != nil {
		t.Fatal(err)
	}
	if n := expandedKeys.len(); n != 1 {
		t.Fatalf("%d keys cached after a verification, want 1", n)
	}
	// Cached, the key still refuses what it did not sign.
	if Verify(algEd25519, s.PublicKey(), []byte("other"), sig) == nil {
		t.Fatal("a signature over other bytes verified under the cached key")
	}
}

// The acceptance rules that matter most, stated outright.
func TestEd25519VerifyRefusesUnreducedSAndMixedOrderR(t *testing.T) {
	cases := ed25519EdgeCases(t)
	byName := map[string]ed25519Case{}
	for _, c := range cases {
		byName[c.name] = c
	}
	if c := byName["valid"]; Verify(algEd25519, c.pub, c.msg, c.sig) != nil {
		t.Fatal("the valid signature was refused")
	}
	for _, name := range []string{"S+L", "mixed-order R 4", "mixed-order R 6", "mixed-order R 1"} {
		c := byName[name]
		if Verify(algEd25519, c.pub, c.msg, c.sig) == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzEd25519VerifyMatchesStdlib(f *testing.F) {
	for _, c := range ed25519EdgeCases(f) {
		f.Add(c.pub, c.msg, c.sig)
	}
	f.Fuzz(func(t *testing.T, pub, msg, sig []byte) {
		if len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
			return
		}
		want := ed25519.Verify(pub, msg, sig)
		if got := Verify(algEd25519, pub, msg, sig) == nil; got != want {
			t.Fatalf("Verify accepts = %v, crypto/ed25519 accepts = %v (pub %x msg %x sig %x)", got, want, pub, msg, sig)
		}
	})
}

// len and clear are for tests: the server never empties the cache.
func (c *expandedKeyCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.keys)
}

func (c *expandedKeyCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.keys)
}
