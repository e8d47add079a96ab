package server

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"kez.lat/chat/server/signing"
)

// User is a registered handle: the public record anyone may look up.
type User struct {
	Handle    string
	Server    string
	PrimaryID string
	Alg       string
	Key       []byte // raw signing public key, the registered (primary) key
	EncKey    []byte // raw X25519 public key: the latest key document's, else the registered one
	CreatedAt time.Time
	// SigningKeys are the keys of the identity's latest key document, and
	// KeysVersion its version; empty and 0 when it has published none.
	SigningKeys []SigningKey
	KeysVersion uint64
}

// reservedHandles are names a person could use to impersonate the operator
// of a server or that mail and web conventions already claim.
var reservedHandles = map[string]bool{
	"admin": true, "administrator": true, "root": true, "support": true,
	"system": true, "kez": true, "www": true, "api": true, "abuse": true,
	"postmaster": true, "hostmaster": true, "webmaster": true, "security": true,
	"noreply": true, "no-reply": true, "help": true, "info": true,
}

// reservedSkeletons are the reserved handles' skeletons.
var reservedSkeletons = func() map[string]string {
	m := make(map[string]string, len(reservedHandles))
	for h := range reservedHandles {
		m[HandleSkeleton(h)] = h
	}
	return m
}()

// HandleSkeleton is what a handle looks like to a hurried reader: without
// its separators (_ - .), with the digits and letter pairs that pass for
// letters taken as those letters (0 o, 1 l i, 3 e, 4 a, 5 s, 7 t, rn m,
// vv w). Two handles with one skeleton are look-alikes. The web app
// computes the same (web/src/lib/keys.ts).
func HandleSkeleton(h string) string {
	var b strings.Builder
	for i := 0; i < len(h); i++ {
		switch c := h[i]; c {
		case '_', '-', '.':
		case '0':
			b.WriteByte('o')
		case '1', 'i':
			b.WriteByte('l')
		case '3':
			b.WriteByte('e')
		case '4':
			b.WriteByte('a')
		case '5':
			b.WriteByte('s')
		case '7':
			b.WriteByte('t')
		default:
			b.WriteByte(c)
		}
	}
	return strings.NewReplacer("rn", "m", "vv", "w").Replace(b.String())
}

// ValidateHandle reports whether h is an acceptable handle: 3 to 32
// characters of a-z 0-9 _ - ., starting with a letter or digit, and
// neither reserved nor a look-alike of a reserved name (admin., adm1n).
func ValidateHandle(h string) error {
	if err := checkHandleSyntax(h); err != nil {
		return err
	}
	if r, ok := reservedSkeletons[HandleSkeleton(h)]; ok {
		if r == h {
			return Errorf(CodeReservedHandle, "handle %q is reserved", h)
		}
		return Errorf(CodeReservedHandle, "handle %q looks like the reserved %q", h, r)
	}
	return nil
}

// checkHandleSyntax checks the shape of a handle only; a reserved name is
// still a well-formed reference to a (never registered) user.
func checkHandleSyntax(h string) error {
	if len(h) < 3 || len(h) > 32 {
		return Errorf(CodeInvalidHandle, "handle must be 3 to 32 characters, got %d", len(h))
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '-' || c == '.') && i > 0:
		default:
			return Errorf(CodeInvalidHandle, "handle %q: only a-z, 0-9, _, - and . are allowed, starting with a letter or digit", h)
		}
	}
	return nil
}

// Address is the handle's full address, handle@server.
func (u *User) Address() string { return fmt.Sprintf("%s@%s", u.Handle, u.Server) }

// PublicUser is the public record on the wire (GET /v1/u/{handle}).
type PublicUser struct {
	Handle    string `json:"handle"`
	Server    string `json:"server"`
	PrimaryID string `json:"primary_id"`
	Alg       string `json:"alg"`
	Key       string `json:"key"`
	EncKey    string `json:"enc_key"`
	CreatedAt int64  `json:"created_at"`
	// SigningKeys and KeysVersion come from the identity's latest key
	// document on the sig-server, when it has one.
	SigningKeys []SigningKeyJSON `json:"signing_keys,omitempty"`
	KeysVersion uint64           `json:"keys_version,omitempty"`
}

// Public returns u's wire record.
func (u *User) Public() PublicUser {
	return PublicUser{
		Handle:      u.Handle,
		Server:      u.Server,
		PrimaryID:   u.PrimaryID,
		Alg:         u.Alg,
		Key:         signing.EncodeB64(u.Key),
		EncKey:      signing.EncodeB64(u.EncKey),
		CreatedAt:   u.CreatedAt.Unix(),
		SigningKeys: signingKeysJSON(u.SigningKeys),
		KeysVersion: u.KeysVersion,
	}
}

func signingKeysJSON(keys []SigningKey) []SigningKeyJSON {
	if len(keys) == 0 {
		return nil
	}
	out := make([]SigningKeyJSON, len(keys))
	for i, k := range keys {
		out[i] = SigningKeyJSON{Alg: k.Alg, Key: signing.EncodeB64(k.Key), Label: k.Label}
	}
	return out
}

// Authorizes reports whether (alg, key) speaks for u: its registered key or
// one of the signing keys its record lists.
func (u *User) Authorizes(alg string, key []byte) bool {
	return keyAuthorized(u, alg, key) || (&KeyDocument{SigningKeys: u.SigningKeys}).Authorizes(alg, key)
}

// User decodes a wire record, checking that it is consistent: 32-byte keys
// and a primary_id that derives from the signing key, so a client never
// trusts a record the server could not have accepted.
func (p PublicUser) User() (*User, error) {
	key, err := signing.DecodeB64(p.Key)
	if err != nil || len(key) != 32 {
		return nil, errors.New("malformed signing key")
	}
	enc, err := signing.DecodeB64(p.EncKey)
	if err != nil || len(enc) != 32 {
		return nil, errors.New("malformed enc_key")
	}
	if p.Handle == "" || p.Server == "" {
		return nil, errors.New("record without handle or server")
	}
	if want := signing.PrimaryID(p.Alg, key); p.PrimaryID != want {
		return nil, fmt.Errorf("primary_id %q does not derive from the signing key", p.PrimaryID)
	}
	var devices []SigningKey
	if len(p.SigningKeys) > 0 {
		if devices, err = parseSigningKeys(p.SigningKeys); err != nil {
			return nil, fmt.Errorf("signing_keys: %w", err)
		}
	}
	return &User{
		Handle:      p.Handle,
		Server:      p.Server,
		PrimaryID:   p.PrimaryID,
		Alg:         p.Alg,
		Key:         key,
		EncKey:      enc,
		CreatedAt:   time.Unix(p.CreatedAt, 0),
		SigningKeys: devices,
		KeysVersion: p.KeysVersion,
	}, nil
}
