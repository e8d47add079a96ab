// Package push sends Web Push notifications (RFC 8030) for the chat
// server: it keeps the VAPID key (RFC 8292), decides which push endpoints
// the server may contact, and fans each stored message out to its
// recipient's subscriptions off the request path. Every push carries only
// a server.PushNotice, encrypted to the browser (RFC 8291).
package push

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// pemType is the PEM block of a PKCS#8 private key, what
// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes.
const pemType = "PRIVATE KEY"

// LoadOrCreateKey reads the VAPID key, an ECDSA P-256 key in a PEM PKCS#8
// file, or generates one there (mode 0600) when the file does not exist.
// A file that exists is never replaced, even when it cannot be read or
// parsed: a new key silently breaks every subscription made with the old
// one, so that is an error for the operator to resolve.
func LoadOrCreateKey(path string) (key *ecdsa.PrivateKey, created bool, err error) {
	data, err := os.ReadFile(path)
	if err == nil {
		key, err := parseKey(data)
		if err != nil {
			return nil, false, fmt.Errorf("reading VAPID key %s: %w", path, err)
		}
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("reading VAPID key: %w", err)
	}
	data, err = NewKeyPEM()
	if err != nil {
		return nil, false, err
	}
	if key, err = parseKey(data); err != nil {
		return nil, false, err
	}
	switch err := createFile(path, data); {
	case errors.Is(err, fs.ErrExist):
		// Another process (a second replica on a shared volume) won the
		// race: its key is the one to use.
		key, _, err := LoadOrCreateKey(path)
		return key, false, err
	case err != nil:
		return nil, false, fmt.Errorf("writing VAPID key: %w", err)
	}
	return key, true, nil
}

// NewKeyPEM generates a VAPID key in the file format LoadOrCreateKey
// reads: an ECDSA P-256 key as PEM PKCS#8. The operator puts it in a
// Kubernetes Secret that the server then reads as its key file.
func NewKeyPEM() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating VAPID key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding VAPID key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), nil
}

// ParseKeyPEM reads a VAPID key in the file format LoadOrCreateKey reads.
func ParseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) { return parseKey(data) }

// parseKey decodes exactly one PEM PKCS#8 block holding a P-256 ECDSA key.
func parseKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block; want a PKCS#8 P-256 key (BEGIN PRIVATE KEY)")
	}
	if block.Type != pemType {
		return nil, fmt.Errorf("PEM block is %q, want %q (PKCS#8)", block.Type, pemType)
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, errors.New("data after the PEM block")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing PKCS#8: %w", err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key is a %T, want an ECDSA P-256 key", parsed)
	}
	return key, nil
}

// createFile writes data to a new file at path with mode 0600, atomically
// and without replacing an existing file: the data goes to a temporary file
// in the same directory, which is then hard-linked into place (link fails
// with fs.ErrExist rather than overwrite). A crash never leaves a partial
// key file behind.
func createFile(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".vapid-*.tmp") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return err
	}
	// Make the new name durable too; best effort, as not every file
	// system syncs directories.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// PublicKey is key's public half as the uncompressed P-256 point (65
// bytes), base64url without padding: the applicationServerKey that
// pushManager.subscribe takes. It panics on a key that is not a valid
// P-256 key, which LoadOrCreateKey never returns.
func PublicKey(key *ecdsa.PrivateKey) string {
	point, err := key.PublicKey.Bytes()
	if err != nil {
		panic(fmt.Sprintf("push: VAPID key: %v", err))
	}
	return base64.RawURLEncoding.EncodeToString(point)
}
