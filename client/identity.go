package client

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// Identity is one person's keys: the signing key that speaks for the handle
// and the X25519 key messages to it are encrypted to. Handle and Server are
// set once the identity is registered (Client.Register sets them).
type Identity struct {
	Signer signing.Signer
	Enc    *ecdh.PrivateKey // X25519
	Handle string
	Server string
	// Primary is the primary_id of the identity this key speaks for when it
	// is a device key (see NewDevice); empty for the primary key itself.
	Primary string
}

// NewIdentity makes a new identity with a fresh signing key of alg
// ("ed25519" or "bip340", see signing.Algorithms) and a fresh X25519 key.
func NewIdentity(alg string) (*Identity, error) {
	s, err := signing.GenerateKey(alg)
	if err != nil {
		return nil, fmt.Errorf("new identity: %w (supported: %v)", err, signing.Algorithms())
	}
	enc, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new identity: generating X25519 key: %w", err)
	}
	return &Identity{Signer: s, Enc: enc}, nil
}

// PrimaryID is the identity's account id, derived from its primary key.
func (id *Identity) PrimaryID() string {
	if id.Primary != "" {
		return id.Primary
	}
	return signing.PrimaryID(id.Signer.Alg(), id.Signer.PublicKey())
}

// IsDevice reports whether the signing key is a device key rather than the
// identity's primary key.
func (id *Identity) IsDevice() bool { return id.Primary != "" }

// NewDevice makes a device identity of id: a fresh signing key of alg that
// speaks for id once a key document lists it, with id's handle, server and
// encryption key (every device must open the messages sent to the
// identity).
func (id *Identity) NewDevice(alg string) (*Identity, error) {
	s, err := signing.GenerateKey(alg)
	if err != nil {
		return nil, fmt.Errorf("new device: %w (supported: %v)", err, signing.Algorithms())
	}
	return &Identity{Signer: s, Enc: id.Enc, Handle: id.Handle, Server: id.Server, Primary: id.PrimaryID()}, nil
}

// EncPublicKey is the raw 32-byte X25519 public key others encrypt to.
func (id *Identity) EncPublicKey() []byte { return id.Enc.PublicKey().Bytes() }

// identityFile is the on-disk form of an Identity. Keys are base64url
// without padding.
type identityFile struct {
	Version    int    `json:"v"`
	Alg        string `json:"alg"`
	SigningKey string `json:"signing_key"` // ed25519 seed or bip340 secret key
	EncKey     string `json:"enc_key"`     // X25519 private key
	Handle     string `json:"handle,omitempty"`
	Server     string `json:"server,omitempty"`
	// PrimaryID is set in a device identity: the identity it speaks for.
	PrimaryID string `json:"primary_id,omitempty"`
}

// maxIdentityFile bounds what LoadIdentity reads.
const maxIdentityFile = 64 << 10

// marshalIdentity encodes id with its private keys. It is deliberately not a
// MarshalJSON method, so an Identity never ends up in a log by accident.
func marshalIdentity(id *Identity) ([]byte, error) {
	if id.Signer == nil || id.Enc == nil {
		return nil, errors.New("identity has no keys")
	}
	return json.MarshalIndent(identityFile{
		Version:    1,
		Alg:        id.Signer.Alg(),
		SigningKey: signing.EncodeB64(id.Signer.PrivateKey()),
		EncKey:     signing.EncodeB64(id.Enc.Bytes()),
		Handle:     id.Handle,
		Server:     id.Server,
		PrimaryID:  id.Primary,
	}, "", "  ")
}

// unmarshalIdentity decodes what marshalIdentity writes.
func unmarshalIdentity(data []byte) (*Identity, error) {
	var f identityFile
	if err := server.DecodeJSON(data, &f); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("identity: unsupported version %d", f.Version)
	}
	priv, err := signing.DecodeB64(f.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("identity: signing_key: %w", err)
	}
	s, err := signing.NewSigner(f.Alg, priv)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	encRaw, err := signing.DecodeB64(f.EncKey)
	if err != nil {
		return nil, fmt.Errorf("identity: enc_key: %w", err)
	}
	enc, err := ecdh.X25519().NewPrivateKey(encRaw)
	if err != nil {
		return nil, fmt.Errorf("identity: enc_key: %w", err)
	}
	if f.PrimaryID != "" && !server.ValidPrimaryID(f.PrimaryID) {
		return nil, fmt.Errorf("identity: primary_id %q is not 40 lowercase hex characters", f.PrimaryID)
	}
	return &Identity{Signer: s, Enc: enc, Handle: f.Handle, Server: f.Server, Primary: f.PrimaryID}, nil
}

// Save writes the identity to path with mode 0600, replacing any file there
// atomically. Missing parent directories are created with mode 0700.
func (id *Identity) Save(path string) error { return id.write(path, true) }

// Create writes the identity to path like Save but fails, with an error
// wrapping fs.ErrExist, when path already exists.
func (id *Identity) Create(path string) error { return id.write(path, false) }

func (id *Identity) write(path string, replace bool) error {
	data, err := marshalIdentity(id)
	if err != nil {
		return fmt.Errorf("saving identity: %w", err)
	}
	if err := writePrivateFile(path, append(data, '\n'), replace); err != nil {
		return fmt.Errorf("saving identity: %w", err)
	}
	return nil
}

// writePrivateFile writes data to path with mode 0600 through a temporary
// file, so a reader never sees half of it: replacing what is there, or,
// unless replace, failing with an error wrapping fs.ErrExist when path
// exists. Missing parent directories are created with mode 0700.
func writePrivateFile(path string, data []byte, replace bool) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".kezchat-*.tmp") // mode 0600
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if replace {
		return os.Rename(tmp.Name(), path)
	}
	// A hard link never replaces an existing file, so creation is atomic.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", path, fs.ErrExist)
		}
		return err
	}
	os.Remove(tmp.Name())
	return nil
}

// LoadIdentity reads an identity written by Save. It refuses a file that
// other users may read or write (on systems with Unix permissions), like ssh
// does for private keys.
func LoadIdentity(path string) (*Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("loading identity: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("loading identity: %w", err)
	}
	if runtime.GOOS != "windows" && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("loading identity: %s has mode %v; private keys must not be accessible to others (chmod 600 %s)", path, st.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxIdentityFile+1))
	if err != nil {
		return nil, fmt.Errorf("loading identity: %w", err)
	}
	if len(data) > maxIdentityFile {
		return nil, fmt.Errorf("loading identity: %s is over %d bytes", path, maxIdentityFile)
	}
	id, err := unmarshalIdentity(data)
	if err != nil {
		return nil, fmt.Errorf("loading identity from %s: %w", path, err)
	}
	return id, nil
}
