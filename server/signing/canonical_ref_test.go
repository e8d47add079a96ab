package signing

// The canonicalizer as it was before the single-pass one in canonical.go:
// the checks of encoding/json and a token walk, then jcs.Transform. Tests
// and FuzzCanonicalize hold the new one to it, byte for byte and error for
// error.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

// referenceCanonicalize returns the RFC 8785 (JCS) canonical form of jsonText.
//
// A signature covers the canonical bytes, so any input that JSON parsers could
// read in more than one way is refused rather than normalized: duplicate
// member names (at any depth), invalid UTF-8, lone surrogate escapes and
// trailing data after the value. These checks run before jcs.Transform so the
// guarantee does not depend on which of them a given jcs version enforces.
func referenceCanonicalize(jsonText []byte) ([]byte, error) {
	if err := refValidateJSON(jsonText); err != nil {
		return nil, fmt.Errorf("canonicalizing JSON: %w", err)
	}
	out, err := jcs.Transform(jsonText)
	if err != nil {
		return nil, fmt.Errorf("canonicalizing JSON: %w", err)
	}
	return out, nil
}

// validateJSON applies the checks in order of cost; the later ones assume the
// earlier ones passed.
func refValidateJSON(text []byte) error {
	if !utf8.Valid(text) {
		return errors.New("invalid UTF-8")
	}
	// json.Valid also rejects trailing data and nesting deeper than 10000,
	// which bounds the recursion in checkDuplicateNames.
	if !json.Valid(text) {
		return errors.New("not a single well-formed JSON value")
	}
	if err := refCheckSurrogates(text); err != nil {
		return err
	}
	return refCheckDuplicateNames(text)
}

// checkSurrogates rejects \u escapes that do not form a UTF-16 surrogate pair.
// encoding/json would decode them to U+FFFD, letting different texts share one
// canonical form. text must already be valid JSON, so every backslash starts
// a well-formed escape inside a string.
func refCheckSurrogates(text []byte) error {
	for i := 0; i < len(text); i++ {
		if text[i] != '\\' {
			continue
		}
		i++ // the escaped character
		if text[i] != 'u' {
			continue
		}
		u := refEscapedUnit(text[i+1:])
		i += 4
		switch {
		case refIsHighSurrogate(u):
			// A high surrogate must be followed directly by an escaped low one.
			rest := text[i+1:]
			if len(rest) < 6 || rest[0] != '\\' || rest[1] != 'u' || !refIsLowSurrogate(refEscapedUnit(rest[2:])) {
				return fmt.Errorf("lone high surrogate \\u%04x at byte %d", u, i-5)
			}
			i += 6
		case refIsLowSurrogate(u):
			return fmt.Errorf("lone low surrogate \\u%04x at byte %d", u, i-5)
		}
	}
	return nil
}

// escapedUnit parses the four hex digits after "\u" (validated by json.Valid).
func refEscapedUnit(hex []byte) uint16 {
	u, _ := strconv.ParseUint(string(hex[:4]), 16, 16)
	return uint16(u)
}

func refIsHighSurrogate(u uint16) bool { return 0xd800 <= u && u <= 0xdbff }
func refIsLowSurrogate(u uint16) bool  { return 0xdc00 <= u && u <= 0xdfff }

// checkDuplicateNames walks the token stream and rejects an object that names
// a member twice. Names are compared after unescaping, so "a" and "\u0061"
// collide, as they do for every parser that reads the document.
func refCheckDuplicateNames(text []byte) error {
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber() // numbers are only skipped; don't pay for float parsing
	return refWalkValue(dec)
}

func refWalkValue(dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := make(map[string]struct{})
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			name, ok := tok.(string)
			if !ok {
				return fmt.Errorf("object member name is %T, not a string", tok)
			}
			if _, dup := seen[name]; dup {
				return fmt.Errorf("duplicate object member name %.40q", name)
			}
			seen[name] = struct{}{}
			if err := refWalkValue(dec); err != nil {
				return err
			}
		}
	case json.Delim('['):
		for dec.More() {
			if err := refWalkValue(dec); err != nil {
				return err
			}
		}
	default:
		return nil // a scalar
	}
	_, err = dec.Token() // the closing delimiter
	return err
}
