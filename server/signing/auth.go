package signing

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// maxAuthLen bounds an X-KEZ-Auth value before any parsing. A valid value is
// at most 19 digits, a colon and 86 base64url characters.
const maxAuthLen = 200

// RequestString returns the bytes signed for request auth: server, method,
// path, the bindings, and ts in decimal, joined by "\n" with no trailing
// newline. For example
//
//	chat.example\nGET\n/v1/inbox/alice\nsince=0\n1700000000
//
// Fields are not escaped, so callers must pass values without newlines (for
// the path, the escaped form of the URL path).
func RequestString(server, method, path string, ts int64, bindings ...string) []byte {
	lines := make([]string, 0, len(bindings)+4)
	lines = append(lines, server, method, path)
	lines = append(lines, bindings...)
	lines = append(lines, strconv.FormatInt(ts, 10))
	return []byte(strings.Join(lines, "\n"))
}

// FormatAuth returns the X-KEZ-Auth header value "<ts>:<b64url sig>".
func FormatAuth(ts int64, sig []byte) string {
	return strconv.FormatInt(ts, 10) + ":" + EncodeB64(sig)
}

// ParseAuth parses an X-KEZ-Auth value. It accepts only what FormatAuth
// writes for a non-negative ts and a 64-byte signature, so every accepted
// value has one spelling. Errors wrap ErrMalformed.
func ParseAuth(v string) (ts int64, sig []byte, err error) {
	if len(v) > maxAuthLen {
		return 0, nil, fmt.Errorf("%w: auth value is %d bytes, limit %d", ErrMalformed, len(v), maxAuthLen)
	}
	tsText, sigText, ok := strings.Cut(v, ":")
	if !ok {
		return 0, nil, fmt.Errorf("%w: auth value has no ':'", ErrMalformed)
	}
	ts, err = parseTimestamp(tsText)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: auth timestamp: %w", ErrMalformed, err)
	}
	sig, err = DecodeB64(sigText)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: auth signature: %w", ErrMalformed, err)
	}
	if len(sig) != sigSize {
		return 0, nil, fmt.Errorf("%w: auth signature is %d bytes, want %d", ErrMalformed, len(sig), sigSize)
	}
	return ts, sig, nil
}

// parseTimestamp accepts canonical decimal only: digits, no sign, no leading
// zero. strconv.ParseInt alone would take "+5" and "007".
func parseTimestamp(s string) (int64, error) {
	if s == "" {
		return 0, errors.New("empty")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("not a decimal integer")
		}
	}
	if s[0] == '0' && len(s) > 1 {
		return 0, errors.New("leading zero")
	}
	ts, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errors.New("out of range")
	}
	return ts, nil
}

// SignRequest returns the X-KEZ-Auth value for a request, signed by s.
func SignRequest(s Signer, server, method, path string, ts int64, bindings ...string) (string, error) {
	sig, err := s.Sign(RequestString(server, method, path, ts, bindings...))
	if err != nil {
		return "", fmt.Errorf("signing request: %w", err)
	}
	return FormatAuth(ts, sig), nil
}
