package server

import (
	"context"
	"crypto/sha256"
	"fmt"
	"time"

	"kez.lat/chat/server/signing"
)

// RequestAuth is what a request presents to prove it comes from handle: the
// X-KEZ-Auth value "<ts>:<sig>" over the request string built from Method,
// Path and Bindings (docs/protocol.md, "Request auth").
type RequestAuth struct {
	Handle   string
	Method   string
	Path     string
	Bindings []string
	Header   string
	// Once marks a state-changing request: its exact signature is accepted
	// only once within the clock-skew window.
	Once bool
}

// Authenticate verifies a request's X-KEZ-Auth against the handle's
// registered key or one of its published device keys, and returns the user.
func (s *Service) Authenticate(ctx context.Context, a RequestAuth) (*User, error) {
	if a.Header == "" {
		return nil, Errorf(CodeMissingAuth, "this request must be signed (X-KEZ-Auth)")
	}
	ts, sig, err := signing.ParseAuth(a.Header)
	if err != nil {
		return nil, Errorf(CodeBadAuth, "malformed auth: expected <ts>:<base64url signature>")
	}
	if !s.fresh(ts) {
		return nil, Errorf(CodeStaleAuth, "auth ts %d is more than %v from the server's clock", ts, ClockSkew)
	}
	u, err := s.User(ctx, a.Handle)
	if err != nil {
		return nil, err
	}
	msg := signing.RequestString(s.cfg.Domain, a.Method, a.Path, ts, a.Bindings...)
	// The header does not name its key: the registered key is tried first
	// (no sig-server involved), then each published device key.
	if err := signing.Verify(u.Alg, u.Key, msg, sig); err != nil {
		keys, err := s.deviceKeys(ctx, u)
		if err != nil {
			return nil, err
		}
		if !verifiesUnderAny(keys, msg, sig) {
			return nil, Errorf(CodeBadAuth, "auth signature does not verify for %q", a.Handle)
		}
	}
	if a.Once {
		digest := sha256.Sum256(append([]byte(a.Handle+"\x00"), sig...))
		// Past ts+skew the timestamp check refuses the header anyway.
		fresh, err := s.store.UseOnce(ctx, digest[:], time.Unix(ts, 0).Add(ClockSkew))
		if err != nil {
			return nil, fmt.Errorf("recording request signature: %w", err)
		}
		if !fresh {
			return nil, Errorf(CodeReplayedAuth, "this signed request was already used")
		}
	}
	return u, nil
}

// verifiesUnderAny reports whether sig verifies over msg under one of doc's
// signing keys. A document holds at most MaxSigningKeys keys, which bounds
// the work a bad header can cause.
func verifiesUnderAny(doc *KeyDocument, msg, sig []byte) bool {
	if doc == nil {
		return false
	}
	for _, k := range doc.SigningKeys {
		if signing.Verify(k.Alg, k.Key, msg, sig) == nil {
			return true
		}
	}
	return false
}
