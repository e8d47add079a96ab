package signing

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// b64 is base64url without padding. Strict rejects non-zero trailing bits, so
// each byte string has exactly one accepted text, which keys and signatures
// compared as strings rely on.
var b64 = base64.RawURLEncoding.Strict()

// EncodeB64 encodes b as base64url without padding.
func EncodeB64(b []byte) string { return b64.EncodeToString(b) }

// DecodeB64 decodes strict base64url without padding. Padding, the standard
// alphabet's '+' and '/', whitespace and non-canonical trailing bits are
// all rejected.
func DecodeB64(s string) ([]byte, error) {
	// encoding/base64 silently skips CR and LF; refuse them ourselves.
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("decoding base64url: contains a line break")
	}
	b, err := b64.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("decoding base64url: %w", err)
	}
	return b, nil
}
