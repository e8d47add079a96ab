package signing

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestRequestStringJoinsLinesWithoutTrailingNewline(t *testing.T) {
	tests := []struct {
		name                 string
		server, method, path string
		ts                   int64
		bindings             []string
		want                 string
	}{
		{"one binding", "chat.example", "GET", "/v1/inbox/alice", 1700000000, []string{"since=0"},
			"chat.example\nGET\n/v1/inbox/alice\nsince=0\n1700000000"},
		{"no bindings", "chat.example", "POST", "/v1/send", 1700000000, nil,
			"chat.example\nPOST\n/v1/send\n1700000000"},
		{"two bindings in order", "chat.example", "PUT", "/v1/keys", 0, []string{"b", "a"},
			"chat.example\nPUT\n/v1/keys\nb\na\n0"},
		{"empty binding kept as a line", "s", "GET", "/", 1, []string{""},
			"s\nGET\n/\n\n1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RequestString(tt.server, tt.method, tt.path, tt.ts, tt.bindings...)
			if string(got) != tt.want {
				t.Errorf("RequestString = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseAuthAcceptsWhatFormatAuthWrites(t *testing.T) {
	sig := bytes.Repeat([]byte{0xfb}, 64)
	for _, ts := range []int64{0, 1, 1700000000, math.MaxInt64} {
		v := FormatAuth(ts, sig)
		gotTS, gotSig, err := ParseAuth(v)
		if err != nil || gotTS != ts || !bytes.Equal(gotSig, sig) {
			t.Errorf("ParseAuth(%q) = %d, %x, %v", v, gotTS, gotSig, err)
		}
	}
}

func TestParseAuthRejectsMalformedValues(t *testing.T) {
	sig := EncodeB64(make([]byte, 64))
	tests := []struct{ name, v string }{
		{"empty", ""},
		{"no colon", "1700000000" + sig},
		{"empty timestamp", ":" + sig},
		{"empty signature", "1700000000:"},
		{"negative", "-5:" + sig},
		{"leading plus", "+5:" + sig},
		{"leading zero", "05:" + sig},
		{"non-digit", "17e8:" + sig},
		{"space before timestamp", " 5:" + sig},
		{"beyond int64", "9223372036854775808:" + sig},
		{"huge number", strings.Repeat("9", 40) + ":" + sig},
		{"padded signature", "5:" + sig + "=="},
		{"standard alphabet", "5:+" + sig[1:]},
		{"63-byte signature", "5:" + EncodeB64(make([]byte, 63))},
		{"65-byte signature", "5:" + EncodeB64(make([]byte, 65))},
		{"second colon", "5:" + sig + ":x"},
		{"newline in signature", "5:" + sig[:40] + "\n" + sig[40:]},
		{"over-long", "5:" + sig + strings.Repeat("A", 200)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts, got, err := ParseAuth(tt.v)
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("ParseAuth(%q) = %d, %x, %v; want ErrMalformed", tt.v, ts, got, err)
			}
		})
	}
}

func TestSignRequestVerifiesAgainstRequestString(t *testing.T) {
	for _, alg := range Algorithms() {
		t.Run(alg, func(t *testing.T) {
			s := fixedSigner(t, alg)
			header, err := SignRequest(s, "chat.example", "GET", "/v1/inbox/alice", 1700000000, "since=0")
			if err != nil {
				t.Fatal(err)
			}
			ts, sig, err := ParseAuth(header)
			if err != nil || ts != 1700000000 {
				t.Fatalf("ParseAuth(%q) = %d, %v", header, ts, err)
			}
			msg := RequestString("chat.example", "GET", "/v1/inbox/alice", ts, "since=0")
			if err := Verify(alg, s.PublicKey(), msg, sig); err != nil {
				t.Errorf("Verify = %v", err)
			}
			other := RequestString("chat.example", "GET", "/v1/inbox/bob", ts, "since=0")
			if err := Verify(alg, s.PublicKey(), other, sig); !errors.Is(err, ErrBadSignature) {
				t.Errorf("Verify(other path) = %v, want ErrBadSignature", err)
			}
		})
	}
}
