package pushtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"time"
)

// maxJWTLifetime is RFC 8292 §2's bound on a VAPID token's exp.
const maxJWTLifetime = 24 * time.Hour

// authError is a refused Authorization header and the status a push
// service answers it with: RFC 8292 §4.2 suggests 401 when authentication
// is absent and 403 when it is invalid.
type authError struct {
	status int
	msg    string
}

func (e *authError) Error() string { return e.msg }

func absent(format string, args ...any) *authError {
	return &authError{http.StatusUnauthorized, fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *authError {
	return &authError{http.StatusForbidden, fmt.Sprintf(format, args...)}
}

// vapidCheck is what a push service knows when it checks a request: the
// endpoint's origin, and what the subscription was created for.
type vapidCheck struct {
	audience string
	subject  string
	key      *ecdsa.PublicKey
	now      time.Time
}

// verify checks an RFC 8292 "vapid t=<JWT>, k=<key>" Authorization header:
// an ES256 JWT that verifies under k, whose aud is the endpoint's origin,
// whose exp is in the future and at most 24 hours away and whose sub is the
// expected subject, and k is the key the subscription was created with.
// It verifies the JWT with the standard library alone, so a flaw in the
// sender's JWT library cannot hide behind the same flaw here.
func (c vapidCheck) verify(header string) *authError {
	scheme, params, _ := strings.Cut(header, " ")
	if !strings.EqualFold(scheme, "vapid") {
		return absent("Authorization is not vapid: %q", scheme)
	}
	var token, k string
	for p := range strings.SplitSeq(params, ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(p), "=")
		switch name {
		case "t":
			token = value
		case "k":
			k = value
		}
	}
	if token == "" || k == "" {
		return absent("vapid authorization lacks t or k")
	}
	rawKey, err := base64.RawURLEncoding.DecodeString(k)
	if err != nil {
		return invalid("k is not base64url without padding: %v", err)
	}
	key, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), rawKey)
	if err != nil {
		return invalid("k is not an uncompressed P-256 point: %v", err)
	}
	claims, err := verifyES256(token, key)
	if err != nil {
		return invalid("JWT: %v", err)
	}
	if !key.Equal(c.key) {
		return invalid("k is not the key the subscription was created with")
	}
	switch {
	case claims.Aud != c.audience:
		return invalid("aud %q is not the endpoint's origin %q", claims.Aud, c.audience)
	case claims.Exp <= c.now.Unix():
		return invalid("exp %d is not in the future", claims.Exp)
	case claims.Exp > c.now.Add(maxJWTLifetime).Unix():
		return invalid("exp %d is more than 24 hours away", claims.Exp)
	case claims.Sub != c.subject:
		return invalid("sub %q is not %q", claims.Sub, c.subject)
	}
	return nil
}

type jwtClaims struct {
	Aud string `json:"aud"`
	Exp int64  `json:"exp"`
	Sub string `json:"sub"`
}

// verifyES256 checks a compact JWS signed with ES256 (RFC 7518 §3.4: the
// signature is r || s, 32 bytes each) and decodes its claims.
func verifyES256(token string, key *ecdsa.PublicKey) (*jwtClaims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%d parts, want 3", len(parts))
	}
	var header struct {
		Alg string `json:"alg"`
	}
	if err := decodeSegment(parts[0], &header); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	if header.Alg != "ES256" {
		return nil, fmt.Errorf("alg %q, want ES256", header.Alg)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, errors.New("signature is not 64 bytes of base64url")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(key, digest[:], r, s) {
		return nil, errors.New("signature does not verify under k")
	}
	var claims jwtClaims
	if err := decodeSegment(parts[1], &claims); err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	return &claims, nil
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return fmt.Errorf("not base64url without padding: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return nil
}
