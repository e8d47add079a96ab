package pushtest

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Sizes of the RFC 8188 aes128gcm header and of RFC 8291's keys.
const (
	saltLen    = 16
	headerLen  = saltLen + 4 + 1 // salt, rs, idlen; keyid follows
	pointLen   = 65              // uncompressed P-256 point
	authLen    = 16
	tagLen     = 16
	minRecord  = tagLen + 2 // RFC 8188: rs must allow one octet of data and the delimiter
	lastRecord = 0x02       // padding delimiter of the final record
)

// Decrypt opens an aes128gcm Web Push body (RFC 8291 over RFC 8188) as the
// browser holding ua (the subscription's private key) and auth (its 16-byte
// authentication secret) would, and returns the plaintext without padding.
//
// RFC 8291 §4 has application servers send exactly one record whose size is
// below rs, so that is all Decrypt accepts.
func Decrypt(body []byte, ua *ecdh.PrivateKey, auth []byte) ([]byte, error) {
	if len(auth) != authLen {
		return nil, fmt.Errorf("auth secret is %d bytes, want %d", len(auth), authLen)
	}
	if len(body) < headerLen {
		return nil, errors.New("body shorter than the aes128gcm header")
	}
	salt := body[:saltLen]
	rs := binary.BigEndian.Uint32(body[saltLen : saltLen+4])
	idLen := int(body[saltLen+4])
	if rs < minRecord {
		return nil, fmt.Errorf("record size %d is below the minimum %d", rs, minRecord)
	}
	if idLen != pointLen {
		return nil, fmt.Errorf("keyid is %d bytes, want the sender's %d-byte public key", idLen, pointLen)
	}
	if len(body) < headerLen+idLen {
		return nil, errors.New("body shorter than its keyid")
	}
	asPublic, err := ecdh.P256().NewPublicKey(body[headerLen : headerLen+idLen])
	if err != nil {
		return nil, fmt.Errorf("keyid is not a P-256 point: %w", err)
	}
	record := body[headerLen+idLen:]
	if len(record) < tagLen+1 || uint64(len(record)) >= uint64(rs) {
		return nil, fmt.Errorf("ciphertext of %d bytes is not a single record below rs %d", len(record), rs)
	}

	cek, nonce, err := deriveKeys(ua, asPublic, auth, salt)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, fmt.Errorf("creating AES cipher: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("creating GCM: %w", err)
	}
	// The only record is record 0, whose nonce is the base nonce itself.
	padded, err := gcm.Open(nil, nonce, record, nil)
	if err != nil {
		return nil, fmt.Errorf("opening the record: %w", err)
	}
	// RFC 8188 §2: data, then the delimiter, then any number of zeros.
	end := len(padded) - 1
	for end >= 0 && padded[end] == 0 {
		end--
	}
	if end < 0 || padded[end] != lastRecord {
		return nil, errors.New("record lacks the final-record padding delimiter")
	}
	return padded[:end], nil
}

// deriveKeys computes the content encryption key and nonce of RFC 8291 §3.3
// and §3.4, keyed by the ECDH secret, the auth secret and the salt.
func deriveKeys(ua *ecdh.PrivateKey, asPublic *ecdh.PublicKey, auth, salt []byte) (cek, nonce []byte, err error) {
	shared, err := ua.ECDH(asPublic)
	if err != nil {
		return nil, nil, fmt.Errorf("computing the ECDH secret: %w", err)
	}
	keyInfo := "WebPush: info\x00" + string(ua.PublicKey().Bytes()) + string(asPublic.Bytes())
	ikm, err := hkdf.Key(sha256.New, shared, auth, keyInfo, 32)
	if err != nil {
		return nil, nil, fmt.Errorf("deriving IKM: %w", err)
	}
	prk, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		return nil, nil, fmt.Errorf("extracting PRK: %w", err)
	}
	if cek, err = hkdf.Expand(sha256.New, prk, "Content-Encoding: aes128gcm\x00", 16); err != nil {
		return nil, nil, fmt.Errorf("deriving CEK: %w", err)
	}
	if nonce, err = hkdf.Expand(sha256.New, prk, "Content-Encoding: nonce\x00", 12); err != nil {
		return nil, nil, fmt.Errorf("deriving nonce: %w", err)
	}
	return cek, nonce, nil
}
