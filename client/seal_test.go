package client

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"testing"
)

func newX25519(t *testing.T) *ecdh.PrivateKey {
	t.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpenRoundTrip(t *testing.T) {
	k := newX25519(t)
	for _, pt := range [][]byte{nil, []byte("hello"), bytes.Repeat([]byte{0xAB}, 64<<10-100)} {
		ct, err := Seal(k.PublicKey().Bytes(), pt)
		if err != nil {
			t.Fatal(err)
		}
		// enc (32) || ciphertext || Poly1305 tag (16)
		if len(ct) != 32+len(pt)+16 {
			t.Fatalf("ct is %d bytes for %d bytes of plaintext", len(ct), len(pt))
		}
		got, err := Open(k, ct)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("round trip changed the plaintext")
		}
	}
}

func TestSealIsRandomized(t *testing.T) {
	k := newX25519(t)
	a, _ := Seal(k.PublicKey().Bytes(), []byte("same"))
	b, _ := Seal(k.PublicKey().Bytes(), []byte("same"))
	if bytes.Equal(a, b) {
		t.Fatal("two seals of one plaintext are equal")
	}
}

func TestOpenWrongKeyFails(t *testing.T) {
	k, other := newX25519(t), newX25519(t)
	ct, err := Seal(k.PublicKey().Bytes(), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(other, ct); err == nil {
		t.Fatal("opened with the wrong key")
	}
}

func TestOpenTamperedFails(t *testing.T) {
	k := newX25519(t)
	ct, err := Seal(k.PublicKey().Bytes(), []byte("secret message"))
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 31, 32, 40, len(ct) - 1} { // enc, ciphertext, tag
		bad := bytes.Clone(ct)
		bad[i] ^= 0x01
		if _, err := Open(k, bad); err == nil {
			t.Errorf("opened with byte %d flipped", i)
		}
	}
	for _, n := range []int{0, 10, 32, 47, len(ct) - 1} {
		if _, err := Open(k, ct[:n]); err == nil {
			t.Errorf("opened a ciphertext truncated to %d bytes", n)
		}
	}
	if _, err := Open(k, append(bytes.Clone(ct), 0)); err == nil {
		t.Error("opened a ciphertext with a byte appended")
	}
}

func TestSealRefusesBadKey(t *testing.T) {
	if _, err := Seal(make([]byte, 31), []byte("x")); err == nil {
		t.Fatal("sealed to a 31-byte key")
	}
	if _, err := Open(nil, make([]byte, 64)); err == nil {
		t.Fatal("opened without a key")
	}
}

func TestPlaintextKeepsHTMLLiteral(t *testing.T) {
	b, err := marshalPlaintext(Plaintext{V: 1, From: "a", To: "b", TS: 1, Body: "<b>&</b>"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"v":1,"from":"a","to":"b","ts":1,"body":"<b>&</b>"}`; string(b) != want {
		t.Fatalf("got %s, want %s", b, want)
	}
	if _, err := parsePlaintext([]byte(`{"v":2,"from":"a","to":"b","ts":1,"body":""}`)); err == nil {
		t.Error("accepted plaintext version 2")
	}
	if _, err := parsePlaintext([]byte(`{"v":1,"body":""}}`)); err == nil {
		t.Error("accepted trailing data")
	}
	if p, err := parsePlaintext([]byte(`{"v":1,"from":"a","to":"b","ts":1,"body":"x","later":true}`)); err != nil || p.Body != "x" {
		t.Errorf("unknown member: %v %+v", err, p)
	}
}
