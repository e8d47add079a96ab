package signing

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

// Canonicalize returns the RFC 8785 (JCS) canonical form of jsonText.
//
// A signature covers the canonical bytes, so any input that JSON parsers could
// read in more than one way is refused rather than normalized: duplicate
// member names (at any depth), invalid UTF-8, lone surrogate escapes and
// trailing data after the value. Everything else that encoding/json's
// json.Valid refuses is refused too (nesting deeper than 10000 included), as
// are numbers beyond the range of a double.
func Canonicalize(jsonText []byte) ([]byte, error) {
	return AppendCanonical(make([]byte, 0, len(jsonText)), jsonText)
}

// AppendCanonical appends the canonical form of jsonText to dst, as
// Canonicalize does, and returns the extended buffer; on error it returns
// dst unchanged.
//
// It parses jsonText once into a flat tree (kept in pooled buffers, so a
// call allocates next to nothing beyond the output) and writes every output
// byte once. canonical_ref_test.go keeps the implementation it replaced,
// encoding/json's checks and a token walk followed by jcs.Transform, and
// the tests and FuzzCanonicalize hold this one to it byte for byte.
func AppendCanonical(dst, jsonText []byte) ([]byte, error) {
	if !utf8.Valid(jsonText) {
		return dst, errors.New("canonicalizing JSON: invalid UTF-8")
	}
	p := parsers.Get().(*parser)
	defer p.release()
	p.src = jsonText
	root, err := p.value(0)
	if err == nil {
		p.skipSpace()
		if p.i < len(p.src) {
			err = p.errorf("data after the JSON value")
		}
	}
	if err != nil {
		return dst, fmt.Errorf("canonicalizing JSON: %w", err)
	}
	return p.emit(dst, root), nil
}

// maxDepth is encoding/json's nesting limit, which the previous
// implementation enforced through json.Valid.
const maxDepth = 10000

type nodeKind uint8

const (
	nodeLiteral nodeKind = iota // true, false, null: copied
	nodeNumber                  // canonical as written, or text in nums
	nodeString                  // the span is the text between the quotes
	nodeArray                   // elements are kids[lo:hi]
	nodeObject                  // members are kids[lo:hi], sorted
)

// node is one parsed value. start and end delimit its text in src.
type node struct {
	kind       nodeKind
	escaped    bool // a string holding at least one backslash escape
	start, end int
	// lo and hi index kids for an array or object; for a number whose
	// canonical text differs from its input, lo indexes nums.
	lo, hi int
}

// kid is an element of an array or a member of an object.
type kid struct {
	node int
	// name is src[nameLo:nameHi], or names[nameLo:nameHi] when nameEscaped:
	// the member name with its escapes decoded.
	nameEscaped    bool
	nameLo, nameHi int
}

type parser struct {
	src   []byte
	i     int
	nodes []node
	kids  []kid
	stack []kid    // the children of the containers being parsed
	names []byte   // decoded member names that held escapes
	nums  []string // canonical text of numbers not already canonical
}

var parsers = sync.Pool{New: func() any { return new(parser) }}

// release returns p to the pool unless a large document grew its buffers.
func (p *parser) release() {
	if cap(p.nodes) > 4096 || cap(p.kids) > 4096 || cap(p.stack) > 4096 || cap(p.names) > 64<<10 || cap(p.nums) > 1024 {
		return
	}
	clear(p.nums)
	*p = parser{nodes: p.nodes[:0], kids: p.kids[:0], stack: p.stack[:0], names: p.names[:0], nums: p.nums[:0]}
	parsers.Put(p)
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("at byte %d: "+format, append([]any{p.i}, args...)...)
}

func (p *parser) skipSpace() {
	for p.i < len(p.src) {
		switch p.src[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) add(n node) int {
	p.nodes = append(p.nodes, n)
	return len(p.nodes) - 1
}

// value parses the value at p.i (after optional whitespace) inside depth
// open arrays and objects and returns its node.
func (p *parser) value(depth int) (int, error) {
	p.skipSpace()
	if p.i >= len(p.src) {
		return 0, p.errorf("unexpected end of JSON input")
	}
	switch c := p.src[p.i]; {
	case c == '{' || c == '[':
		if depth+1 > maxDepth {
			return 0, p.errorf("nesting deeper than %d", maxDepth)
		}
		return p.container(depth + 1)
	case c == '"':
		start := p.i + 1
		escaped, err := p.skipString()
		if err != nil {
			return 0, err
		}
		return p.add(node{kind: nodeString, escaped: escaped, start: start, end: p.i - 1}), nil
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return p.number()
	default:
		return 0, p.errorf("invalid character %q looking for a value", c)
	}
}

func (p *parser) literal(word string) (int, error) {
	if len(p.src)-p.i < len(word) || string(p.src[p.i:p.i+len(word)]) != word {
		return 0, p.errorf("invalid literal (expected %s)", word)
	}
	p.i += len(word)
	return p.add(node{kind: nodeLiteral, start: p.i - len(word), end: p.i}), nil
}

// number parses an RFC 8259 number. An integer of at most 15 digits is
// its own canonical form (but -0 is 0): it is exact in a double, and ES6
// writes such values without exponent. Anything else goes through
// strconv.ParseFloat and jcs.NumberToJSON, as jcs.Transform does.
func (p *parser) number() (int, error) {
	start := p.i
	if p.src[p.i] == '-' {
		p.i++
	}
	digits := p.i
	switch {
	case p.i < len(p.src) && p.src[p.i] == '0':
		p.i++
	case p.i < len(p.src) && '1' <= p.src[p.i] && p.src[p.i] <= '9':
		p.skipDigits()
	default:
		return 0, p.errorf("invalid number")
	}
	integer := p.i-digits <= 15
	if p.i < len(p.src) && p.src[p.i] == '.' {
		p.i++
		if !p.skipDigits() {
			return 0, p.errorf("invalid number: no digit after the decimal point")
		}
		integer = false
	}
	if p.i < len(p.src) && (p.src[p.i] == 'e' || p.src[p.i] == 'E') {
		p.i++
		if p.i < len(p.src) && (p.src[p.i] == '+' || p.src[p.i] == '-') {
			p.i++
		}
		if !p.skipDigits() {
			return 0, p.errorf("invalid number: no digit in the exponent")
		}
		integer = false
	}
	n := node{kind: nodeNumber, start: start, end: p.i, lo: -1}
	if !integer {
		f, err := strconv.ParseFloat(string(p.src[start:p.i]), 64)
		if err != nil {
			return 0, fmt.Errorf("at byte %d: number out of the range of a double", start)
		}
		text, err := jcs.NumberToJSON(f)
		if err != nil {
			return 0, fmt.Errorf("at byte %d: %w", start, err)
		}
		p.nums = append(p.nums, text)
		n.lo = len(p.nums) - 1
	}
	return p.add(n), nil
}

// skipDigits skips a run of digits and reports whether there was one.
func (p *parser) skipDigits() bool {
	start := p.i
	for p.i < len(p.src) && '0' <= p.src[p.i] && p.src[p.i] <= '9' {
		p.i++
	}
	return p.i > start
}

// skipString checks the string starting at the quote at p.i and moves past
// its closing quote. It reports whether the string holds an escape. The
// input is valid UTF-8; escapes must be well formed and every \u escape of
// a surrogate must be half of a pair.
func (p *parser) skipString() (escaped bool, err error) {
	p.i++
	for {
		if p.i >= len(p.src) {
			return false, p.errorf("unterminated string")
		}
		c := p.src[p.i]
		switch {
		case c == '"':
			p.i++
			return escaped, nil
		case c < 0x20:
			return false, p.errorf("control character %#02x in a string", c)
		case c != '\\':
			p.i++
			continue
		}
		escaped = true
		if p.i+1 >= len(p.src) {
			return false, p.errorf("unterminated string")
		}
		switch p.src[p.i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			p.i += 2
		case 'u':
			u, ok := hexUnit(p.src[p.i+2:])
			if !ok {
				return false, p.errorf("invalid \\u escape")
			}
			switch {
			case isHighSurrogate(u):
				rest := p.src[p.i+6:]
				if len(rest) < 6 || rest[0] != '\\' || rest[1] != 'u' {
					return false, p.errorf("lone high surrogate \\u%04x", u)
				}
				if low, ok := hexUnit(rest[2:]); !ok || !isLowSurrogate(low) {
					return false, p.errorf("lone high surrogate \\u%04x", u)
				}
				p.i += 12
			case isLowSurrogate(u):
				return false, p.errorf("lone low surrogate \\u%04x", u)
			default:
				p.i += 6
			}
		default:
			return false, p.errorf("invalid escape %q", p.src[p.i:p.i+2])
		}
	}
}

// hexUnit parses the four hex digits at the start of b.
func hexUnit(b []byte) (uint16, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var u uint16
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		u = u<<4 | uint16(c)
	}
	return u, true
}

func isHighSurrogate(u uint16) bool { return 0xd800 <= u && u <= 0xdbff }
func isLowSurrogate(u uint16) bool  { return 0xdc00 <= u && u <= 0xdfff }

// container parses the array or object at p.i.
func (p *parser) container(depth int) (int, error) {
	object := p.src[p.i] == '{'
	closing := byte(']')
	if object {
		closing = '}'
	}
	p.i++
	base := len(p.stack)
	p.skipSpace()
	if p.i < len(p.src) && p.src[p.i] == closing {
		p.i++
	} else {
		for {
			var k kid
			if object {
				p.skipSpace()
				if p.i >= len(p.src) || p.src[p.i] != '"' {
					return 0, p.errorf("expected a member name")
				}
				start := p.i + 1
				escaped, err := p.skipString()
				if err != nil {
					return 0, err
				}
				k.nameLo, k.nameHi = start, p.i-1
				if escaped {
					k.nameEscaped = true
					k.nameLo = len(p.names)
					p.names = appendUnescaped(p.names, p.src[start:p.i-1])
					k.nameHi = len(p.names)
				}
				p.skipSpace()
				if p.i >= len(p.src) || p.src[p.i] != ':' {
					return 0, p.errorf("expected ':' after a member name")
				}
				p.i++
			}
			n, err := p.value(depth)
			if err != nil {
				return 0, err
			}
			k.node = n
			p.stack = append(p.stack, k)
			p.skipSpace()
			if p.i >= len(p.src) {
				return 0, p.errorf("unexpected end of JSON input")
			}
			if c := p.src[p.i]; c == ',' {
				p.i++
				continue
			} else if c == closing {
				p.i++
				break
			} else {
				return 0, p.errorf("invalid character %q after a value in an array or object", c)
			}
		}
	}
	lo := len(p.kids)
	p.kids = append(p.kids, p.stack[base:]...)
	p.stack = p.stack[:base]
	n := node{kind: nodeArray, lo: lo, hi: len(p.kids)}
	if object {
		n.kind = nodeObject
		members := p.kids[lo:]
		slices.SortFunc(members, func(a, b kid) int { return compareUTF16(p.name(a), p.name(b)) })
		for i := 1; i < len(members); i++ {
			if compareUTF16(p.name(members[i-1]), p.name(members[i])) == 0 {
				return 0, p.errorf("duplicate object member name %.40q", p.name(members[i]))
			}
		}
	}
	return p.add(n), nil
}

// name is k's member name, escapes decoded.
func (p *parser) name(k kid) []byte {
	if k.nameEscaped {
		return p.names[k.nameLo:k.nameHi]
	}
	return p.src[k.nameLo:k.nameHi]
}

// compareUTF16 orders two UTF-8 strings by their UTF-16 code units, as
// RFC 8785 sorts member names.
func compareUTF16(a, b []byte) int {
	for len(a) > 0 && len(b) > 0 {
		if a[0] < utf8.RuneSelf && b[0] < utf8.RuneSelf {
			if a[0] != b[0] {
				return int(a[0]) - int(b[0])
			}
			a, b = a[1:], b[1:]
			continue
		}
		ra, na := utf8.DecodeRune(a)
		rb, nb := utf8.DecodeRune(b)
		if ra != rb {
			if ua, ub := firstUnit(ra), firstUnit(rb); ua != ub {
				return ua - ub
			}
			return int(ra - rb) // the same high surrogate: the low ones decide
		}
		a, b = a[na:], b[nb:]
	}
	return len(a) - len(b)
}

// firstUnit is the first UTF-16 code unit of r.
func firstUnit(r rune) int {
	if r < 0x10000 {
		return int(r)
	}
	hi, _ := utf16.EncodeRune(r)
	return int(hi)
}

// appendUnescaped appends the text of a checked JSON string body with its
// escapes decoded.
func appendUnescaped(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		switch s[i+1] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, n := escapedRune(s[i:])
			dst = utf8.AppendRune(dst, r)
			i += n
			continue
		default: // " \ /
			dst = append(dst, s[i+1])
		}
		i += 2
	}
	return dst
}

// escapedRune decodes the \u escape (or surrogate pair of them) at the
// start of s, which skipString has checked, and its length.
func escapedRune(s []byte) (rune, int) {
	u, _ := hexUnit(s[2:])
	if isHighSurrogate(u) {
		low, _ := hexUnit(s[8:])
		return utf16.DecodeRune(rune(u), rune(low)), 12
	}
	return rune(u), 6
}

// emit appends the canonical text of node n.
func (p *parser) emit(dst []byte, n int) []byte {
	nd := p.nodes[n]
	switch nd.kind {
	case nodeLiteral:
		return append(dst, p.src[nd.start:nd.end]...)
	case nodeNumber:
		switch text := p.src[nd.start:nd.end]; {
		case nd.lo >= 0:
			return append(dst, p.nums[nd.lo]...)
		case string(text) == "-0":
			return append(dst, '0')
		default:
			return append(dst, text...)
		}
	case nodeString:
		if !nd.escaped {
			// Nothing in it needs escaping: a quote, a backslash or a
			// control character would have been escaped in the input.
			dst = append(dst, '"')
			dst = append(dst, p.src[nd.start:nd.end]...)
			return append(dst, '"')
		}
		return appendQuoted(dst, p.src[nd.start:nd.end], true)
	}
	open, closing := byte('['), byte(']')
	if nd.kind == nodeObject {
		open, closing = '{', '}'
	}
	dst = append(dst, open)
	for i, k := range p.kids[nd.lo:nd.hi] {
		if i > 0 {
			dst = append(dst, ',')
		}
		if nd.kind == nodeObject {
			dst = appendQuoted(dst, p.name(k), false)
			dst = append(dst, ':')
		}
		dst = p.emit(dst, k.node)
	}
	return append(dst, closing)
}

// appendQuoted appends s as an RFC 8785 string: quote and backslash
// escaped, \b \f \n \r \t for those controls, \u00xx (lower-case hex) for
// the other controls, everything else as UTF-8. With escaped, s is a checked
// JSON string body whose escapes are decoded on the way; without, s is
// already decoded.
func appendQuoted(dst, s []byte, escaped bool) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if escaped && c == '\\' {
			var r rune
			switch s[i+1] {
			case 'u':
				var n int
				r, n = escapedRune(s[i:])
				i += n
				if r >= utf8.RuneSelf {
					dst = utf8.AppendRune(dst, r)
					continue
				}
				c = byte(r)
			case 'b':
				c, i = '\b', i+2
			case 'f':
				c, i = '\f', i+2
			case 'n':
				c, i = '\n', i+2
			case 'r':
				c, i = '\r', i+2
			case 't':
				c, i = '\t', i+2
			default: // " \ /
				c, i = s[i+1], i+2
			}
		} else {
			i++
		}
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c == '\b':
			dst = append(dst, '\\', 'b')
		case c == '\f':
			dst = append(dst, '\\', 'f')
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		case c < 0x20:
			const hex = "0123456789abcdef"
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}
