package signing

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

func TestPrimaryIDMatchesPublishedVectors(t *testing.T) {
	tests := []struct {
		alg, pub, want string
	}{
		// RFC 8032 TEST 1 public key.
		{"ed25519", "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "afa6f980e4ffe724e2b182845ba49ef1ca7abc42"},
		// BIP-340 vector 0 public key.
		{"bip340", "F9308A019258C31049344F85F89D5229B531C845836F99B08601F113BCE036F9", "0783b269a8059219224d77c4cddbadb71d5b733b"},
	}
	for _, tt := range tests {
		t.Run(tt.alg, func(t *testing.T) {
			pub := mustHex(t, tt.pub)
			got := PrimaryID(tt.alg, pub)
			if got != tt.want {
				t.Errorf("PrimaryID = %s, want %s", got, tt.want)
			}
			// Recompute from the spelled-out layout, so a change to either
			// the code or the constant above is caught.
			var layout []byte
			layout = append(layout, "kez-primary-id/v1"...)
			layout = append(layout, 0x00)
			layout = append(layout, tt.alg...)
			layout = append(layout, 0x00)
			layout = append(layout, pub...)
			sum := sha256.Sum256(layout)
			if independent := hex.EncodeToString(sum[:])[:40]; got != independent {
				t.Errorf("PrimaryID = %s, independent computation = %s", got, independent)
			}
		})
	}
}

func TestPrimaryIDDiffersPerSuiteForSameKeyBytes(t *testing.T) {
	pub := make([]byte, 32)
	if PrimaryID("ed25519", pub) == PrimaryID("bip340", pub) {
		t.Error("same key bytes under two suites gave the same id")
	}
}
