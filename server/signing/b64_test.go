package signing

import (
	"bytes"
	"testing"
)

func TestDecodeB64AcceptsCanonicalUnpaddedBase64URL(t *testing.T) {
	tests := []struct {
		in   string
		want []byte
	}{
		{"", []byte{}},
		{"AQ", []byte{1}},
		{"AQI", []byte{1, 2}},
		{"AQID", []byte{1, 2, 3}},
		{"-_8", []byte{0xfb, 0xff}},
	}
	for _, tt := range tests {
		got, err := DecodeB64(tt.in)
		if err != nil || !bytes.Equal(got, tt.want) {
			t.Errorf("DecodeB64(%q) = %x, %v; want %x", tt.in, got, err, tt.want)
		}
		if enc := EncodeB64(tt.want); enc != tt.in {
			t.Errorf("EncodeB64(%x) = %q, want %q", tt.want, enc, tt.in)
		}
	}
}

func TestDecodeB64RejectsNonCanonicalText(t *testing.T) {
	tests := []struct{ name, in string }{
		{"padding", "AQ=="},
		{"single padding", "AQI="},
		{"standard alphabet plus", "+_8"},
		{"standard alphabet slash", "-/8"},
		{"newline", "AQ\nID"},
		{"carriage return", "AQID\r"},
		{"space", "AQ ID"},
		{"tab", "\tAQID"},
		{"non-zero trailing bits", "AR"},
		{"impossible length", "AQIDB"},
		{"non-ASCII", "AQ\u00e9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := DecodeB64(tt.in); err == nil {
				t.Errorf("DecodeB64(%q) = %x, want error", tt.in, got)
			}
		})
	}
}
