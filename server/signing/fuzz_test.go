package signing

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"
)

func FuzzCanonicalize(f *testing.F) {
	inputs, _ := filepath.Glob(filepath.Join("testdata", "jcs", "input", "*.json"))
	for _, in := range inputs {
		b, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"a":1,"a":2}`, `"\ud800"`, `"\ud83d\ude00"`, `[1e400]`, `{} x`, "\"\xff\"",
		`[-0,1e21,5e-324,1.7976931348623157e308]`, `{"\u0061":1,"b":[{},[]]}`, `"\u001f<>&"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Canonicalize(in)
		want, refErr := referenceCanonicalize(in)
		if (err == nil) != (refErr == nil) || !bytes.Equal(out, want) {
			t.Fatalf("Canonicalize(%q) = %q, %v; the previous implementation gave %q, %v", in, out, err, want, refErr)
		}
		if err != nil {
			return
		}
		if !json.Valid(out) || !utf8.Valid(out) {
			t.Fatalf("Canonicalize(%q) = %q: not valid JSON", in, out)
		}
		again, err := Canonicalize(out)
		if err != nil {
			t.Fatalf("Canonicalize(%q) = %q, which does not canonicalize: %v", in, out, err)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %q -> %q -> %q", in, out, again)
		}
	})
}

func FuzzParseAuth(f *testing.F) {
	sig := EncodeB64(bytes.Repeat([]byte{0xab}, 64))
	for _, s := range []string{
		"1700000000:" + sig, "0:" + sig, "9223372036854775807:" + sig, "", ":", "+5:" + sig,
		"05:" + sig, "-1:" + sig, "5:" + sig + "=", "5:" + sig[:85] + "B",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		ts, sig, err := ParseAuth(v)
		if err != nil {
			return
		}
		if got := FormatAuth(ts, sig); got != v {
			t.Fatalf("FormatAuth(ParseAuth(%q)) = %q", v, got)
		}
	})
}

func FuzzSignedVerify(f *testing.F) {
	for _, alg := range Algorithms() {
		doc, err := Sign(fixedSigner(f, alg), samplePayload)
		if err != nil {
			f.Fatal(err)
		}
		wire, err := json.Marshal(doc)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire)
	}
	for _, s := range []string{
		`{}`, `{"payload":null}`, `{"payload":[],"signature":{}}`,
		`{"payload":{"a":1},"signature":{"alg":"ed25519","key":"","sig":""}}`,
		`{"payload":{"a":1},"signature":{"alg":"bip340","key":"AAAA","sig":"AAAA"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var doc Signed
		if json.Unmarshal(data, &doc) != nil {
			return
		}
		canonical, pub, err := doc.Verify()
		if err != nil {
			return
		}
		if len(pub) != keySize {
			t.Fatalf("verified with a %d-byte key", len(pub))
		}
		if again, err := Canonicalize(canonical); err != nil || !bytes.Equal(again, canonical) {
			t.Fatalf("verified payload %q is not canonical", canonical)
		}
	})
}
