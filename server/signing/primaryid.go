package signing

import (
	"crypto/sha256"
	"encoding/hex"
)

// primaryIDDomain separates primary-id hashes from every other SHA-256 use.
const primaryIDDomain = "kez-primary-id/v1"

// PrimaryID returns the account id for a public key: the first 40 lowercase
// hex characters (160 bits) of
//
//	SHA-256("kez-primary-id/v1" || 0x00 || alg || 0x00 || raw public key)
//
// The algorithm name is hashed in, so the same key bytes under two suites are
// two ids. PrimaryID does not validate pub; callers pass a verified key.
func PrimaryID(alg string, pub []byte) string {
	h := sha256.New()
	h.Write([]byte(primaryIDDomain))
	h.Write([]byte{0})
	h.Write([]byte(alg))
	h.Write([]byte{0})
	h.Write(pub)
	return hex.EncodeToString(h.Sum(nil)[:20])
}
