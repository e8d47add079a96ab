package client

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"kez.lat/chat/server/signing"
)

func TestIdentitySaveLoadRoundTrip(t *testing.T) {
	for _, alg := range signing.Algorithms() {
		t.Run(alg, func(t *testing.T) {
			id, err := NewIdentity(alg)
			if err != nil {
				t.Fatal(err)
			}
			id.Handle, id.Server = "alice", "chat.test"
			path := filepath.Join(t.TempDir(), "sub", "dir", "identity.json")
			if err := id.Save(path); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if runtime.GOOS != "windows" {
				if st.Mode().Perm() != 0o600 {
					t.Errorf("identity file mode %v, want 0600", st.Mode().Perm())
				}
				if dst, _ := os.Stat(filepath.Dir(path)); dst.Mode().Perm() != 0o700 {
					t.Errorf("created directory mode %v, want 0700", dst.Mode().Perm())
				}
			}
			got, err := LoadIdentity(path)
			if err != nil {
				t.Fatal(err)
			}
			if got.Signer.Alg() != alg || !bytes.Equal(got.Signer.PublicKey(), id.Signer.PublicKey()) ||
				!bytes.Equal(got.Signer.PrivateKey(), id.Signer.PrivateKey()) {
				t.Error("signing key changed")
			}
			if !got.Enc.Equal(id.Enc) {
				t.Error("encryption key changed")
			}
			if got.Handle != "alice" || got.Server != "chat.test" || got.PrimaryID() != id.PrimaryID() {
				t.Errorf("got %q %q %q", got.Handle, got.Server, got.PrimaryID())
			}
			// The loaded key signs for the same identity.
			sig, err := got.Signer.Sign([]byte("m"))
			if err != nil {
				t.Fatal(err)
			}
			if err := signing.Verify(alg, id.Signer.PublicKey(), []byte("m"), sig); err != nil {
				t.Error(err)
			}
			// No temporary files are left behind.
			entries, _ := os.ReadDir(filepath.Dir(path))
			if len(entries) != 1 {
				t.Errorf("directory holds %d entries", len(entries))
			}
		})
	}
}

func TestIdentityCreateRefusesOverwrite(t *testing.T) {
	a, _ := NewIdentity("ed25519")
	b, _ := NewIdentity("ed25519")
	path := filepath.Join(t.TempDir(), "identity.json")
	if err := a.Create(path); err != nil {
		t.Fatal(err)
	}
	if err := b.Create(path); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create: %v, want fs.ErrExist", err)
	}
	got, err := LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.PrimaryID() != a.PrimaryID() {
		t.Fatal("Create replaced the existing identity")
	}
	if err := b.Save(path); err != nil {
		t.Fatal(err)
	}
	if got, _ := LoadIdentity(path); got.PrimaryID() != b.PrimaryID() {
		t.Fatal("Save did not replace the identity")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries", len(entries))
	}
}

func TestLoadIdentityRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	id, _ := NewIdentity("ed25519")
	good, err := marshalIdentity(id)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"not json":       "hello",
		"unknown member": `{"v":1,"alg":"ed25519","signing_key":"` + signing.EncodeB64(make([]byte, 32)) + `","enc_key":"` + signing.EncodeB64(make([]byte, 32)) + `","extra":1}`,
		"bad version":    `{"v":2}`,
		"unknown alg":    `{"v":1,"alg":"rsa","signing_key":"` + signing.EncodeB64(make([]byte, 32)) + `","enc_key":"` + signing.EncodeB64(bytes.Repeat([]byte{1}, 32)) + `"}`,
		"short key":      `{"v":1,"alg":"ed25519","signing_key":"AAAA","enc_key":"` + signing.EncodeB64(bytes.Repeat([]byte{1}, 32)) + `"}`,
		"padded b64":     `{"v":1,"alg":"ed25519","signing_key":"` + signing.EncodeB64(make([]byte, 32)) + `=","enc_key":"` + signing.EncodeB64(bytes.Repeat([]byte{1}, 32)) + `"}`,
	}
	for name, text := range cases {
		if _, err := LoadIdentity(write("f.json", text, 0o600)); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
	if _, err := LoadIdentity(filepath.Join(dir, "missing.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if runtime.GOOS != "windows" {
		if _, err := LoadIdentity(write("open.json", string(good), 0o644)); err == nil {
			t.Error("loaded a world-readable identity")
		}
	}
	if _, err := LoadIdentity(write("ok.json", string(good), 0o600)); err != nil {
		t.Errorf("good identity: %v", err)
	}
}

func TestNewIdentityUnknownAlg(t *testing.T) {
	if _, err := NewIdentity("rsa"); err == nil {
		t.Fatal("made an rsa identity")
	}
}
