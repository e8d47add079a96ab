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

// Session is what a verified request auth proves: who signed, with which
// key, and until when the proof holds.
type Session struct {
	User *User
	// Alg and Key are the key that signed: the registered key, or one of
	// the identity's published device keys (Device).
	Alg    string
	Key    []byte
	Device bool
	// Expires is when the auth leaves the clock-skew window: a server
	// accepts it no longer, and nothing opened with it outlives it.
	Expires time.Time
}

// Authenticate verifies a request's X-KEZ-Auth against the handle's
// registered key or one of its published device keys, and returns what it
// proves.
func (s *Service) Authenticate(ctx context.Context, a RequestAuth) (*Session, error) {
	if a.Header == "" {
		return nil, Errorf(CodeMissingAuth, "this request must be signed (X-KEZ-Auth)")
	}
	ts, sig, err := signing.ParseAuth(a.Header)
	if err != nil {
		return nil, Errorf(CodeBadAuth, "malformed auth: expected <ts>:<base64url signature>")
	}
	checked := s.now()
	if d := checked.Sub(time.Unix(ts, 0)); d > ClockSkew || d < -ClockSkew {
		return nil, Errorf(CodeStaleAuth, "auth ts %d is more than %v from the server's clock", ts, ClockSkew)
	}
	u, err := s.User(ctx, a.Handle)
	if err != nil {
		return nil, err
	}
	sess := &Session{User: u, Alg: u.Alg, Key: u.Key, Expires: time.Unix(ts, 0).Add(ClockSkew)}
	msg := signing.RequestString(s.cfg.Domain, a.Method, a.Path, ts, a.Bindings...)
	// The header does not name its key: the registered key is tried first
	// (no sig-server involved), then each published device key.
	if err := signing.Verify(u.Alg, u.Key, msg, sig); err != nil {
		var k SigningKey
		_, ok, err := s.deviceKeysHolding(ctx, u, func(d *KeyDocument) bool {
			var found bool
			k, found = verifyingKey(d, msg, sig)
			return found
		})
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, Errorf(CodeBadAuth, "auth signature does not verify for %q", a.Handle)
		}
		sess.Alg, sess.Key, sess.Device = k.Alg, k.Key, true
	}
	if a.Once {
		digest := sha256.Sum256(append([]byte(a.Handle+"\x00"), sig...))
		// Past ts+skew the timestamp check refuses the header anyway.
		fresh, err := s.store.UseOnce(ctx, digest[:], sess.Expires, checked)
		if err != nil {
			return nil, fmt.Errorf("recording request signature: %w", err)
		}
		if !fresh {
			return nil, Errorf(CodeReplayedAuth, "this signed request was already used")
		}
	}
	return sess, nil
}

// DeviceID names a device of an identity by the key it signs with:
// "<alg>:<base64url key>". A store keeps acknowledgement points under it.
func DeviceID(alg string, key []byte) string {
	return alg + ":" + signing.EncodeB64(key)
}

// CheckSession reports whether sess still holds: its auth has not left the
// window, and a device key is still published (a revoked one ends what it
// opened, within the key cache's TTL).
func (s *Service) CheckSession(ctx context.Context, sess *Session) error {
	if !s.now().Before(sess.Expires) {
		return Errorf(CodeStaleAuth, "the auth this was opened with has expired")
	}
	if !sess.Device {
		return nil
	}
	keys, err := s.deviceKeys(ctx, sess.User)
	if err != nil {
		return err
	}
	if !keys.Authorizes(sess.Alg, sess.Key) {
		return Errorf(CodeKeyNotAuthorized, "the key this was opened with is no longer published for %q", sess.User.Handle)
	}
	return nil
}

// verifyingKey returns the signing key of doc under which sig verifies
// over msg. A document holds at most MaxSigningKeys keys, which bounds the
// work a bad header can cause.
func verifyingKey(doc *KeyDocument, msg, sig []byte) (SigningKey, bool) {
	if doc == nil {
		return SigningKey{}, false
	}
	for _, k := range doc.SigningKeys {
		if signing.Verify(k.Alg, k.Key, msg, sig) == nil {
			return k, true
		}
	}
	return SigningKey{}, false
}
