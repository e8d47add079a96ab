package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"

	"kez.lat/chat/server/signing"
)

// DecodeJSON decodes exactly one JSON value from data into v, refusing
// unknown fields, member names that match a field only ignoring case,
// members given twice, and trailing data, and turns every failure into an
// *Error with a code that says what was wrong. Every reader of the
// document, in Go or JavaScript, then sees the same values.
func DecodeJSON(data []byte, v any) error { return decodeJSON(data, v, refuseUnknown) }

// DecodeOpenJSON is DecodeJSON for documents later versions may add
// members to: unknown members pass, but not one that is a field's name in
// another case.
func DecodeOpenJSON(data []byte, v any) error { return decodeJSON(data, v, ignoreUnknown) }

func decodeJSON(data []byte, v any, unknown unknownMembers) error {
	if json.Valid(data) {
		if err := checkMembers(data, reflect.TypeOf(v), unknown); err != nil {
			var e *Error
			if errors.As(err, &e) {
				return e
			}
			return Errorf(CodeInvalidJSON, "malformed JSON: %v", err)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if unknown == refuseUnknown {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errorf(CodeInvalidJSON, "unexpected data after the JSON value")
	}
	return nil
}

func jsonError(err error) *Error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return Errorf(CodeInvalidJSON, "malformed JSON: %v", err)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "the document"
		}
		return Errorf(CodeInvalidField, "%s must be %s, not %s", field, goTypeName(typ.Type.Kind().String()), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return Errorf(CodeUnknownField, "%s", strings.TrimPrefix(err.Error(), "json: "))
	default:
		return Errorf(CodeInvalidJSON, "malformed JSON: %v", err)
	}
}

// goTypeName turns Go kinds into JSON's words for error messages.
func goTypeName(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "float32", "float64":
		return "a number"
	case "struct", "map":
		return "an object"
	case "slice", "array":
		return "an array"
	case "bool":
		return "a boolean"
	default:
		return kind
	}
}

// DecodeSigned decodes a signed document as DecodeJSON(data, doc) does,
// with the same result and the same error for every input. The common
// shape (a valid document whose member names are exactly "payload" and
// "signature", each at most once, and whose signature holds only plain
// ASCII strings named exactly "alg", "key" and "sig") is read by hand;
// anything else goes to DecodeJSON. FuzzDecodeSigned holds the two to the
// same answers.
func DecodeSigned(data []byte, doc *signing.Signed) error {
	if fast, ok := decodeSignedFast(data); ok {
		*doc = fast
		return nil
	}
	return DecodeJSON(data, doc)
}

func decodeSignedFast(data []byte) (doc signing.Signed, ok bool) {
	s, ok := openPlainObject(data)
	if !ok {
		return doc, false
	}
	var seenPayload, seenSignature bool
	for s.member() {
		name, ok := s.name()
		if !ok {
			return doc, false
		}
		switch string(name) {
		case "payload":
			if seenPayload {
				return doc, false
			}
			seenPayload = true
			doc.Payload = bytes.Clone(s.value())
			if !flatDistinct(doc.Payload) {
				return doc, false // DecodeJSON checks it member by member
			}
		case "signature":
			if seenSignature || s.b[s.i] != '{' {
				return doc, false
			}
			seenSignature = true
			if doc.Signature, ok = s.signature(); !ok {
				return doc, false
			}
		default:
			return doc, false
		}
	}
	return doc, true
}

// flatDistinct reports whether payload, valid JSON, is an object of at
// most 16 members with plain, distinct names and no object or array
// values: the shape of every usual payload, which needs no deeper check
// for members given twice.
func flatDistinct(payload []byte) bool {
	s := plainScanner{b: payload}
	s.space()
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return false
	}
	s.i++
	var names [16][]byte
	n := 0
	for s.member() {
		name, ok := s.name()
		if !ok || n == len(names) {
			return false
		}
		for _, seen := range names[:n] {
			if bytes.Equal(seen, name) {
				return false
			}
		}
		names[n] = name
		n++
		switch s.b[s.i] {
		case '{':
			return false
		case '[':
			// An array of plain strings (a message's blobs) has no
			// members to repeat.
			if _, ok := s.plainStrings(); !ok {
				return false
			}
			continue
		}
		s.value()
	}
	return true
}

// signature reads the object at s.i into a Signature when it has the plain
// shape.
func (s *plainScanner) signature() (sig signing.Signature, ok bool) {
	s.i++ // {
	var seen [3]bool
	for s.member() {
		name, ok := s.name()
		if !ok {
			return sig, false
		}
		v, ok := s.plainString()
		if !ok {
			return sig, false
		}
		var field *string
		var i int
		switch string(name) {
		case "alg":
			field, i = &sig.Alg, 0
		case "key":
			field, i = &sig.Key, 1
		case "sig":
			field, i = &sig.Sig, 2
		default:
			return sig, false
		}
		if seen[i] {
			return sig, false
		}
		seen[i] = true
		*field = string(v)
	}
	return sig, true
}

// decodeMessagePayload decodes a message payload as DecodeJSON(data, p)
// does, with the same result and error for every input. Canonical
// payloads of the usual shape (exact member names, each once, plain ASCII
// strings, an integer ts of at most 18 digits, blobs an array of at most
// 16 plain strings) are read by hand; anything
// else goes to DecodeJSON. FuzzDecodeMessagePayload holds the two to the
// same answers.
func decodeMessagePayload(data []byte, p *MessagePayload) error {
	if fast, ok := decodeMessagePayloadFast(data); ok {
		*p = fast
		return nil
	}
	return DecodeJSON(data, p)
}

func decodeMessagePayloadFast(data []byte) (p MessagePayload, ok bool) {
	s, ok := openPlainObject(data)
	if !ok {
		return p, false
	}
	var seen [8]bool
	for s.member() {
		name, ok := s.name()
		if !ok {
			return p, false
		}
		var field *string
		var i int
		switch string(name) {
		case "type":
			field, i = &p.Type, 0
		case "server":
			field, i = &p.Server, 1
		case "from":
			field, i = &p.From, 2
		case "to":
			field, i = &p.To, 3
		case "id":
			field, i = &p.ID, 4
		case "ct":
			field, i = &p.CT, 5
		case "ts":
			i = 6
		case "blobs":
			i = 7
		default:
			return p, false
		}
		if seen[i] {
			return p, false
		}
		seen[i] = true
		if i == 7 {
			if p.Blobs, ok = s.plainStrings(); !ok {
				return p, false
			}
			continue
		}
		if field == nil {
			if p.TS, ok = s.smallInt(); !ok {
				return p, false
			}
			continue
		}
		v, ok := s.plainString()
		if !ok {
			return p, false
		}
		*field = string(v)
	}
	return p, true
}

// plainScanner reads a JSON text that json.Valid accepted, so it checks
// only what decides whether its caller's plain shape holds.
type plainScanner struct {
	b []byte
	i int
}

// openPlainObject starts reading data when it is one valid JSON object.
func openPlainObject(data []byte) (plainScanner, bool) {
	s := plainScanner{b: data}
	if !json.Valid(data) {
		return s, false
	}
	s.space()
	if s.b[s.i] != '{' {
		return s, false
	}
	s.i++
	return s, true
}

func (s *plainScanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// member moves to the next member name of the object being read,
// reporting false at its end (after the closing brace).
func (s *plainScanner) member() bool {
	s.space()
	switch s.b[s.i] {
	case ',':
		s.i++
		s.space()
		return true
	case '}':
		s.i++
		return false
	}
	return true // the first member
}

// name reads a member name and its colon; ok is false when the name is not
// plain.
func (s *plainScanner) name() ([]byte, bool) {
	n, ok := s.plainString()
	if !ok {
		return nil, false
	}
	s.space()
	s.i++ // :
	s.space()
	return n, true
}

// plainString reads a string of printable ASCII without escapes, whose
// text encoding/json returns unchanged; ok is false for any other value.
func (s *plainScanner) plainString() ([]byte, bool) {
	if s.b[s.i] != '"' {
		return nil, false
	}
	start := s.i + 1
	for i := start; i < len(s.b); i++ {
		switch c := s.b[i]; {
		case c == '"':
			s.i = i + 1
			return s.b[start:i], true
		case c == '\\' || c < 0x20 || c > 0x7e:
			return nil, false
		}
	}
	return nil, false
}

// plainStrings reads an array of plain strings (see plainString); ok is
// false for any other value. An empty array gives an empty, non-nil slice,
// as encoding/json does.
func (s *plainScanner) plainStrings() ([]string, bool) {
	if s.b[s.i] != '[' {
		return nil, false
	}
	s.i++
	out := []string{}
	s.space()
	if s.b[s.i] == ']' {
		s.i++
		return out, true
	}
	for {
		v, ok := s.plainString()
		if !ok || len(out) == MaxMessageBlobs {
			return nil, false // longer arrays are refused by the full decoder's caller anyway
		}
		out = append(out, string(v))
		s.space()
		switch s.b[s.i] {
		case ',':
			s.i++
			s.space()
		case ']':
			s.i++
			return out, true
		default:
			return nil, false
		}
	}
}

// smallInt reads an integer of at most 18 digits, which fits an int64.
func (s *plainScanner) smallInt() (int64, bool) {
	i := s.i
	neg := i < len(s.b) && s.b[i] == '-'
	if neg {
		i++
	}
	start := i
	var n int64
	for i < len(s.b) && '0' <= s.b[i] && s.b[i] <= '9' {
		n = n*10 + int64(s.b[i]-'0')
		i++
	}
	if i == start || i-start > 18 {
		return 0, false
	}
	if i < len(s.b) {
		switch s.b[i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	s.i = i
	if neg {
		n = -n
	}
	return n, true
}

// value skips the value at s.i and returns its text.
func (s *plainScanner) value() []byte {
	start := s.i
	switch s.b[s.i] {
	case '"':
		s.skipString()
	case '{', '[':
		depth := 0
		for {
			switch s.b[s.i] {
			case '"':
				s.skipString()
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			s.i++
			if depth == 0 {
				break
			}
		}
	default: // a number or literal
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return s.b[start:s.i]
			}
			s.i++
		}
	}
	return s.b[start:s.i]
}

// skipString moves past the string at s.i.
func (s *plainScanner) skipString() {
	for s.i++; s.b[s.i] != '"'; s.i++ {
		if s.b[s.i] == '\\' {
			s.i++
		}
	}
	s.i++
}
