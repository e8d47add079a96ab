package server

import (
	"fmt"
	"time"
)

// User is a registered handle: the public record anyone may look up.
type User struct {
	Handle    string
	Server    string
	PrimaryID string
	Alg       string
	Key       []byte // raw signing public key
	EncKey    []byte // raw X25519 public key
	CreatedAt time.Time
}

// reservedHandles are names a person could use to impersonate the operator
// of a server or that mail and web conventions already claim.
var reservedHandles = map[string]bool{
	"admin": true, "administrator": true, "root": true, "support": true,
	"system": true, "kez": true, "www": true, "api": true, "abuse": true,
	"postmaster": true, "hostmaster": true, "webmaster": true, "security": true,
	"noreply": true, "no-reply": true, "help": true, "info": true,
}

// ValidateHandle reports whether h is an acceptable handle: 3 to 32
// characters of a-z 0-9 _ - ., starting with a letter or digit, and not
// reserved.
func ValidateHandle(h string) error {
	if err := checkHandleSyntax(h); err != nil {
		return err
	}
	if reservedHandles[h] {
		return Errorf(CodeReservedHandle, "handle %q is reserved", h)
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
