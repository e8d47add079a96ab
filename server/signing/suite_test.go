package signing

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

func TestAlgorithmsListsEachSuiteSorted(t *testing.T) {
	got := Algorithms()
	if want := []string{"bip340", "ed25519"}; !slices.Equal(got, want) {
		t.Fatalf("Algorithms() = %v, want %v", got, want)
	}
	for _, alg := range got {
		s, err := Lookup(alg)
		if err != nil || s.Name() != alg {
			t.Errorf("Lookup(%q) = %v, %v", alg, s, err)
		}
	}
}

func TestUnknownAlgorithmIsRefusedEverywhere(t *testing.T) {
	for _, alg := range []string{"", "Ed25519", "ED25519", "bip-340", "rsa"} {
		if _, err := Lookup(alg); !errors.Is(err, ErrUnknownAlg) {
			t.Errorf("Lookup(%q) = %v, want ErrUnknownAlg", alg, err)
		}
		if _, err := GenerateKey(alg); !errors.Is(err, ErrUnknownAlg) {
			t.Errorf("GenerateKey(%q) = %v, want ErrUnknownAlg", alg, err)
		}
		if _, err := NewSigner(alg, make([]byte, 32)); !errors.Is(err, ErrUnknownAlg) {
			t.Errorf("NewSigner(%q) = %v, want ErrUnknownAlg", alg, err)
		}
		if err := Verify(alg, make([]byte, 32), nil, make([]byte, 64)); !errors.Is(err, ErrUnknownAlg) {
			t.Errorf("Verify(%q) = %v, want ErrUnknownAlg", alg, err)
		}
	}
}

func TestVerifyRejectsWrongSizesWithoutPanicking(t *testing.T) {
	tests := []struct {
		name     string
		pub, sig []byte
		want     error
	}{
		{"nil key", nil, make([]byte, 64), ErrBadKey},
		{"31-byte key", make([]byte, 31), make([]byte, 64), ErrBadKey},
		{"33-byte key", make([]byte, 33), make([]byte, 64), ErrBadKey},
		{"nil signature", make([]byte, 32), nil, ErrBadSignature},
		{"63-byte signature", make([]byte, 32), make([]byte, 63), ErrBadSignature},
		{"65-byte signature", make([]byte, 32), make([]byte, 65), ErrBadSignature},
	}
	for _, alg := range Algorithms() {
		suite, _ := Lookup(alg)
		for _, tt := range tests {
			t.Run(alg+"/"+tt.name, func(t *testing.T) {
				if err := Verify(alg, tt.pub, []byte("m"), tt.sig); !errors.Is(err, tt.want) {
					t.Errorf("Verify = %v, want %v", err, tt.want)
				}
				if err := suite.Verify(tt.pub, []byte("m"), tt.sig); !errors.Is(err, tt.want) {
					t.Errorf("Suite.Verify = %v, want %v", err, tt.want)
				}
			})
		}
	}
}

func TestGeneratedKeysSignVerifyAndReload(t *testing.T) {
	for _, alg := range Algorithms() {
		t.Run(alg, func(t *testing.T) {
			s, err := GenerateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			if s.Alg() != alg || len(s.PublicKey()) != 32 || len(s.PrivateKey()) != 32 {
				t.Fatalf("Alg %q, key sizes %d/%d", s.Alg(), len(s.PublicKey()), len(s.PrivateKey()))
			}
			msg := []byte("hello")
			sig, err := s.Sign(msg)
			if err != nil || len(sig) != 64 {
				t.Fatalf("Sign = %x, %v", sig, err)
			}
			if err := Verify(alg, s.PublicKey(), msg, sig); err != nil {
				t.Errorf("Verify = %v", err)
			}
			if err := Verify(alg, s.PublicKey(), []byte("hellO"), sig); !errors.Is(err, ErrBadSignature) {
				t.Errorf("Verify(other message) = %v, want ErrBadSignature", err)
			}
			reloaded, err := NewSigner(alg, s.PrivateKey())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(reloaded.PublicKey(), s.PublicKey()) {
				t.Error("reloaded signer has a different public key")
			}
		})
	}
}

func TestSignerKeyAccessorsReturnCopies(t *testing.T) {
	for _, alg := range Algorithms() {
		s := fixedSigner(t, alg)
		pub, priv := s.PublicKey(), s.PrivateKey()
		s.PublicKey()[0] ^= 0xff
		s.PrivateKey()[0] ^= 0xff
		if !bytes.Equal(s.PublicKey(), pub) || !bytes.Equal(s.PrivateKey(), priv) {
			t.Errorf("%s: mutating a returned key changed the signer", alg)
		}
	}
}

func TestNewSignerRejectsWrongPrivateKeySize(t *testing.T) {
	for _, alg := range Algorithms() {
		for _, n := range []int{0, 31, 33, 64} {
			if _, err := NewSigner(alg, bytes.Repeat([]byte{1}, n)); err == nil {
				t.Errorf("NewSigner(%s, %d bytes) succeeded", alg, n)
			}
		}
	}
}
