package signing

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCanonicalizeMatchesRFC8785ReferenceOutputs(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "jcs", "input", "*.json"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no JCS vectors found (err %v)", err)
	}
	for _, in := range inputs {
		name := filepath.Base(in)
		t.Run(name, func(t *testing.T) {
			input, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join("testdata", "jcs", "output", name))
			if err != nil {
				t.Fatal(err)
			}
			got, err := Canonicalize(input)
			if err != nil {
				t.Fatalf("Canonicalize: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got  %q\nwant %q", got, want)
			}
		})
	}
}

func TestCanonicalizeProducesExactRFC8785Bytes(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"whitespace removed", " { \"a\" : [ 1 , 2 ] } \n", `{"a":[1,2]}`},
		{"HTML characters stay literal", `{"s":"<>&\u003c"}`, `{"s":"<>&<"}`},
		{"non-ASCII stays UTF-8", `{"s":"\u00e9€\ud83d\ude00"}`, "{\"s\":\"é€\U0001F600\"}"},
		{"short escapes kept", `"\b\t\n\f\r\"\\"`, `"\b\t\n\f\r\"\\"`},
		{"other controls as lower-case \\u00XX", `"\u0001\u001F\u007f"`, "\"\\u0001\\u001f\x7f\""},
		{"escaped solidus unescaped", `"\/"`, `"/"`},
		{"numbers in ES6 form", `[1.0,-0,1e21,1E-7,100,0.5e1,-1.50]`, `[1,0,1e+21,1e-7,100,5,-1.5]`},
		{"top-level scalar", ` true `, `true`},
		{
			// RFC 8785 section 3.2.3: names sort by UTF-16 code units, so the
			// emoji (D83D DE00) sorts before U+FB33, unlike code point order.
			"nested names sorted by UTF-16 code units",
			`[{"x":{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh",` +
				`"1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}}]`,
			"[{\"x\":{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\"," +
				"\"\u00f6\":\"Latin Small Letter O With Diaeresis\",\"\u20ac\":\"Euro Sign\"," +
				"\"\U0001F600\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}}]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Canonicalize([]byte(tt.in))
			if err != nil {
				t.Fatalf("Canonicalize(%q): %v", tt.in, err)
			}
			if string(got) != tt.want {
				t.Errorf("Canonicalize(%q)\n got  %q\n want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestCanonicalizeRejectsAmbiguousOrInvalidInput(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"whitespace only", " \n"},
		{"duplicate name", `{"a":1,"a":2}`},
		{"duplicate name nested in array", `{"x":[{"b":1},{"a":1,"a":1}]}`},
		{"duplicate name via escape", `{"a":1,"\u0061":2}`},
		{"duplicate name in deep object", `{"a":{"b":{"c":{"d":1,"d":1}}}}`},
		{"invalid UTF-8 in string", "{\"a\":\"\xff\"}"},
		{"invalid UTF-8 in name", "{\"\xc3\x28\":1}"},
		{"UTF-8 encoded surrogate", "\"\xed\xa0\x80\""},
		{"lone high surrogate", `"\ud800"`},
		{"high surrogate then ASCII escape", `"\ud800\u0041"`},
		{"high surrogate then text", `"\ud800x"`},
		{"two high surrogates", `"\ud800\ud800"`},
		{"lone low surrogate", `"\udc00"`},
		{"reversed pair", `"\udc00\ud800"`},
		{"lone surrogate in name", `{"\udfff":1}`},
		{"trailing garbage", `{"a":1} x`},
		{"second value", `{}{}`},
		{"byte order mark", "\xef\xbb\xbf{}"},
		{"truncated", `{"a":`},
		{"number out of double range", `[1e400]`},
		{"leading plus", `[+1]`},
		{"single quotes", `{'a':1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := Canonicalize([]byte(tt.in)); err == nil {
				t.Errorf("Canonicalize(%q) = %q, want error", tt.in, got)
			}
		})
	}
}

// TestCanonicalizeMatchesReference holds the single-pass canonicalizer to
// the implementation it replaced (canonical_ref_test.go): the same inputs
// refused, the same bytes for the others.
func TestCanonicalizeMatchesReference(t *testing.T) {
	inputs := []string{
		"", " ", "{}", "[]", " [ ] ", `{"a":1}`, `{"b":1,"a":2}`, "null", "true", "false", "nul", "truex", "[true,false,null]",
		"0", "-0", "-0.0", "01", "1.", ".5", "-", "1e", "1e+", "1E5", "1e-7", "123456789012345", "1234567890123456",
		"-123456789012345", "12345678901234567890", "1e21", "1e20", "0.000001", "0.0000001", "1e400", "-1e400", "1e-400",
		"5e-324", "1.7976931348623157e308", "[1,]", "[,1]", `{"a":1,}`, `{"a" 1}`, `{"a":}`, `{1:1}`, `{"a":1 "b":2}`,
		`"\u0000\u001f\u007f\u0080"`, `"\"\\\/\b\f\n\r\t"`, `"\x"`, `"\u12"`, `"\u12g4"`, `"a` + "\t" + `b"`,
		`"\uD83D\uDE00"`, `"\uDBFF\uDFFF"`, `"\ud800\udc00x\ud800"`, `{"\u00e9":1,"e":2,"\ud83d\ude00":3,"\uffff":4}`,
		`{"\"":1,"\\":2,"\u0001":3,"\n":4}`, `{"a":{"b":[{"c":1,"C":2}]}}`, `{"":1,"\u0000":2}`, `{"":1,"":2}`,
		"\u2028\"\u2028\"", "\"\u2028\"", "{\"é\":1,\"e\\u0301\":2}", "[1 2]", "[1,\n2]\n", "[\"a\"\"b\"]",
		`{"a":1}{`, "\xef\xbb\xbf[]", "[\"\xed\xa0\x80\"]", `[-]`, `[-01]`, `[1.5e+00]`, `[0e0]`, `[-0e-0]`, `[100e-2]`,
	}
	for _, depth := range []int{maxDepth - 1, maxDepth, maxDepth + 1} {
		inputs = append(inputs, strings.Repeat("[", depth)+strings.Repeat("]", depth))
		inputs = append(inputs, strings.Repeat(`{"a":`, depth)+"1"+strings.Repeat("}", depth))
	}
	vectors, _ := filepath.Glob(filepath.Join("testdata", "jcs", "input", "*.json"))
	for _, v := range vectors {
		b, err := os.ReadFile(v)
		if err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, string(b))
	}
	for _, in := range inputs {
		got, err := Canonicalize([]byte(in))
		want, refErr := referenceCanonicalize([]byte(in))
		if (err == nil) != (refErr == nil) || !bytes.Equal(got, want) {
			t.Errorf("Canonicalize(%.60q) = %.60q, %v; the previous implementation gave %.60q, %v", in, got, err, want, refErr)
		}
	}
}

func TestAppendCanonicalAllocatesOnlyItsOutput(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	in := []byte(`{"type":"kez.chat.message/v1","server":"chat.test","from":"alice","to":"bob","id":"m-1","ts":1700000000,"ct":"AAAA\u00e9"}`)
	buf := make([]byte, 0, 256)
	if _, err := AppendCanonical(buf, in); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { AppendCanonical(buf, in) }); n != 0 {
		t.Errorf("AppendCanonical into a large enough buffer allocates %v times", n)
	}
}
