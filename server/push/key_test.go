package push

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

func TestLoadOrCreateKeyCreatesA0600FileAndReloadsTheSameKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vapid.pem")
	key, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("LoadOrCreateKey = created %v, %v; want a new key", created, err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Fatalf("key file mode = %o, want 600", mode)
	}
	written, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if block, _ := pem.Decode(written); block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("key file is not a PEM PKCS#8 key:\n%s", written)
	}

	again, created, err := LoadOrCreateKey(path)
	if err != nil || created {
		t.Fatalf("reloading = created %v, %v; want the existing key", created, err)
	}
	if !again.Equal(key) {
		t.Fatal("reloading returned another key")
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, written) {
		t.Fatal("reloading changed the key file")
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("the key's directory holds %d entries, want only the key", len(entries))
	}
}

func TestLoadOrCreateKeyCreatesOneKeyWhenProcessesRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vapid.pem")
	const n = 8
	type res struct {
		key     *ecdsa.PrivateKey
		created bool
		err     error
	}
	results := make(chan res, n)
	for range n {
		go func() {
			key, created, err := LoadOrCreateKey(path)
			results <- res{key, created, err}
		}()
	}
	var first *ecdsa.PrivateKey
	creators := 0
	for range n {
		r := <-results
		if r.err != nil {
			t.Fatalf("LoadOrCreateKey: %v", r.err)
		}
		if r.created {
			creators++
		}
		if first == nil {
			first = r.key
		} else if !r.key.Equal(first) {
			t.Fatal("racing callers got different keys")
		}
	}
	if creators != 1 {
		t.Fatalf("%d callers created the key, want 1", creators)
	}
}

func TestLoadOrCreateKeyReadsAKeyMadeByOthers(t *testing.T) {
	// What an operator makes with openssl or mounts from a Secret.
	want, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "vapid.pem")
	if err := os.WriteFile(path, pemBlock(t, "PRIVATE KEY", want), 0o644); err != nil {
		t.Fatal(err)
	}
	got, created, err := LoadOrCreateKey(path)
	if err != nil || created || !got.Equal(want) {
		t.Fatalf("LoadOrCreateKey = created %v, %v; want the operator's key", created, err)
	}
}

func TestLoadOrCreateKeyRefusesAnInvalidFileAndLeavesItAlone(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(p256)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		content []byte
	}{
		{"an empty file", nil},
		{"text that is not PEM", []byte("not a key\n")},
		{"a SEC 1 EC PRIVATE KEY block", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})},
		{"a P-384 key", pemBlock(t, "PRIVATE KEY", p384)},
		{"an Ed25519 key", pemBlock(t, "PRIVATE KEY", edKey)},
		{"a PRIVATE KEY block that is not PKCS#8", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}})},
		{"two keys", append(pemBlock(t, "PRIVATE KEY", p256), pemBlock(t, "PRIVATE KEY", p256)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vapid.pem")
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, created, err := LoadOrCreateKey(path); err == nil || created {
				t.Fatalf("LoadOrCreateKey = created %v, %v; want an error", created, err)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(after, tt.content) {
				t.Fatal("the invalid file was changed")
			}
		})
	}
	t.Run("a path that cannot be read", func(t *testing.T) {
		path := t.TempDir() // a directory
		if _, created, err := LoadOrCreateKey(path); err == nil || created {
			t.Fatalf("LoadOrCreateKey = created %v, %v; want an error", created, err)
		}
	})
	t.Run("a directory that does not exist", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "missing", "vapid.pem")
		if _, created, err := LoadOrCreateKey(path); err == nil || created {
			t.Fatalf("LoadOrCreateKey = created %v, %v; want an error", created, err)
		}
	})
}

func pemBlock(t *testing.T, typ string, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestPublicKeyIsTheUncompressedPointInBase64url(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := PublicKey(key)
	point, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		t.Fatalf("PublicKey = %q, not base64url without padding: %v", s, err)
	}
	if len(point) != 65 || point[0] != 4 {
		t.Fatalf("PublicKey decodes to %d bytes starting %#x, want a 65-byte uncompressed point", len(point), point[0])
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil || !pub.Equal(&key.PublicKey) {
		t.Fatalf("PublicKey is not key's public key (%v)", err)
	}
}
