package client

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"

	"kez.lat/chat/server/signing"
)

// Attachment encryption (docs/protocol.md, "Attachments"):
//
//	blob   = nonce (12 random bytes) || AES-256-GCM(key, nonce, file, aad = "kez-chat/v1 attachment")
//	sha256 = base64url SHA-256(blob)
const (
	attachmentAAD     = "kez-chat/v1 attachment"
	attachmentKeySize = 32
	attachmentNonce   = 12
	// AttachmentOverhead is what encryption adds to a file: the nonce and
	// the GCM tag.
	AttachmentOverhead = attachmentNonce + 16
)

// ErrAttachmentDigest is returned when a blob's SHA-256 is not the one its
// message names: it was not decrypted.
var ErrAttachmentDigest = errors.New("the blob's SHA-256 is not the one the message names")

// EncryptedFile is a file encrypted for upload: the blob and what a message
// needs to name it (its key and digest).
type EncryptedFile struct {
	Blob   []byte
	Key    []byte
	SHA256 string
}

// EncryptAttachment encrypts file with a fresh random key.
func EncryptAttachment(file []byte) (EncryptedFile, error) {
	key := make([]byte, attachmentKeySize)
	_, _ = rand.Read(key) // crypto/rand.Read never fails
	gcm, err := attachmentAEAD(key)
	if err != nil {
		return EncryptedFile{}, err
	}
	blob := make([]byte, attachmentNonce, AttachmentOverhead+len(file))
	_, _ = rand.Read(blob)
	blob = gcm.Seal(blob, blob[:attachmentNonce], file, []byte(attachmentAAD))
	return EncryptedFile{Blob: blob, Key: key, SHA256: sha256B64(blob)}, nil
}

// sha256B64 is the base64url SHA-256 of b: a blob's digest, and the
// digest request auth binds a body with.
func sha256B64(b []byte) string {
	sum := sha256.Sum256(b)
	return signing.EncodeB64(sum[:])
}

// DecryptAttachment checks blob's SHA-256 against the base64url digest sum
// before anything else, then decrypts it with key.
func DecryptAttachment(blob []byte, key []byte, sum string) ([]byte, error) {
	want, err := signing.DecodeB64(sum)
	if err != nil || len(want) != sha256.Size {
		return nil, errors.New("attachment: sha256 is not 32 bytes of base64url")
	}
	got := sha256.Sum256(blob)
	if subtle.ConstantTimeCompare(got[:], want) != 1 {
		return nil, ErrAttachmentDigest
	}
	if len(blob) < AttachmentOverhead {
		return nil, fmt.Errorf("attachment: the blob is %d bytes, shorter than nonce and tag", len(blob))
	}
	gcm, err := attachmentAEAD(key)
	if err != nil {
		return nil, err
	}
	file, err := gcm.Open(nil, blob[:attachmentNonce], blob[attachmentNonce:], []byte(attachmentAAD))
	if err != nil {
		return nil, fmt.Errorf("attachment: %w", err)
	}
	return file, nil
}

func attachmentAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != attachmentKeySize {
		return nil, fmt.Errorf("attachment: the key is %d bytes, not %d", len(key), attachmentKeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("attachment: %w", err)
	}
	return cipher.NewGCM(block)
}
