package push

import (
	"strings"
	"testing"
)

func TestNormalizeSubject(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        string // a part of the error, "" for none
	}{
		{name: "a bare e-mail address becomes a mailto URL", in: "ops@chat.example", want: "mailto:ops@chat.example"},
		{name: "a mailto URL is kept", in: "mailto:ops@chat.example", want: "mailto:ops@chat.example"},
		{name: "surrounding space is trimmed", in: " mailto:ops@chat.example\n", want: "mailto:ops@chat.example"},
		{name: "an https URL is kept", in: "https://chat.example/contact", want: "https://chat.example/contact"},
		{name: "http is refused", in: "http://chat.example/contact", wantErr: "https"},
		{name: "mailto at localhost is refused", in: "mailto:x@localhost", wantErr: "localhost"},
		{name: "a bare address at localhost is refused", in: "x@LocalHost", wantErr: "localhost"},
		{name: "https at localhost is refused", in: "https://localhost/contact", wantErr: "localhost"},
		{name: "https under .localhost is refused", in: "https://chat.localhost/", wantErr: "localhost"},
		{name: "https at a loopback address is refused", in: "https://127.0.0.1/", wantErr: "localhost"},
		{name: "an empty subject is refused", in: "", wantErr: "empty"},
		{name: "garbage is refused", in: "chat.example", wantErr: "neither"},
		{name: "another scheme is refused", in: "tel:+15550100", wantErr: "neither"},
		{name: "a mailto URL without an address is refused", in: "mailto:", wantErr: "not a plain e-mail address"},
		{name: "a named address is refused", in: "Ops <ops@chat.example>", wantErr: "not a plain e-mail address"},
		{name: "an https URL without a host is refused", in: "https:///contact", wantErr: "with a host"},
		{name: "an https URL with credentials is refused", in: "https://u:p@chat.example/", wantErr: "with a host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizeSubject(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NormalizeSubject(%q) = %q, %v; want an error about %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("NormalizeSubject(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}
