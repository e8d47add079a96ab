package client

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"kez.lat/chat/server/signing"
)

func ptr[T any](v T) *T { return &v }

// b64of is n bytes of base64url.
func b64of(n int, fill byte) string { return signing.EncodeB64(bytes.Repeat([]byte{fill}, n)) }

func validAttachment() Attachment {
	return Attachment{Blob: b64of(32, 1), Key: b64of(32, 2), SHA256: b64of(32, 3), Size: 10, Type: "image/png", Name: "a.png",
		Width: 4, Height: 3, Thumb: &Thumb{Blob: b64of(32, 4), Key: b64of(32, 5), SHA256: b64of(32, 6), Size: 5, Width: 4, Height: 3}}
}

func TestPlaintextRoundTripsEveryMember(t *testing.T) {
	state := validGroup()
	in := Plaintext{V: 1, From: "alice", To: "bob", TS: 1764000000, Body: "<hi> & bye", Kind: KindGroup, MID: "m1",
		Group: &GroupRef{ID: state.ID}, Peer: "carol", Reply: &Reply{From: "bob", MID: "m0", Body: "earlier"},
		Attachments: []Attachment{validAttachment()}, Target: &Target{From: "bob", MID: "m0"}, Emoji: ptr(""),
		Receipt: ReceiptRead, MIDs: []string{"m0"}, State: state}
	raw, err := marshalPlaintext(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := parsePlaintext(raw)
	if err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	if out.State.Hash() != in.State.Hash() {
		t.Errorf("state hash %s, want %s", out.State.Hash(), in.State.Hash())
	}
	out.State, in.State = nil, nil
	if !reflect.DeepEqual(out, in) {
		t.Errorf("got %+v\nwant %+v", out, in)
	}
	if !bytes.Contains(raw, []byte(`"emoji":""`)) {
		t.Errorf("an empty emoji (a reaction taken back) was not written: %s", raw)
	}
	// A text message from an older writer: only the first five members.
	old, err := parsePlaintext([]byte(`{"v":1,"from":"a","to":"b","ts":1,"body":"x"}`))
	if err != nil || old.KindOrText() != KindText || old.Emoji != nil || old.Conversation("b") != "a" {
		t.Errorf("older plaintext: %+v %v", old, err)
	}
}

func TestPlaintextRefusesWhatTheProtocolDoesNot(t *testing.T) {
	many := func(n int, v string) []string { return strings.Split(strings.Repeat(v+",", n-1)+v, ",") }
	for _, c := range []struct {
		name   string
		change func(p *Plaintext)
	}{
		{"65-character mid", func(p *Plaintext) { p.MID = strings.Repeat("m", 65) }},
		{"mid with a slash", func(p *Plaintext) { p.MID = "a/b" }},
		{"group id of 15 bytes", func(p *Plaintext) { p.Group = &GroupRef{ID: b64of(15, 0)} }},
		{"peer not a handle", func(p *Plaintext) { p.Peer = "Bob" }},
		{"reply excerpt of 201 characters", func(p *Plaintext) { p.Reply = &Reply{From: "bob", MID: "m", Body: strings.Repeat("é", 201)} }},
		{"reply without mid", func(p *Plaintext) { p.Reply = &Reply{From: "bob"} }},
		{"17 attachments", func(p *Plaintext) {
			for range 17 {
				p.Attachments = append(p.Attachments, validAttachment())
			}
		}},
		{"attachment blob id of 31 bytes", func(p *Plaintext) { a := validAttachment(); a.Blob = b64of(31, 1); p.Attachments = []Attachment{a} }},
		{"attachment key of 16 bytes", func(p *Plaintext) { a := validAttachment(); a.Key = b64of(16, 1); p.Attachments = []Attachment{a} }},
		{"attachment with a padded digest", func(p *Plaintext) { a := validAttachment(); a.SHA256 += "="; p.Attachments = []Attachment{a} }},
		{"attachment of negative size", func(p *Plaintext) { a := validAttachment(); a.Size = -1; p.Attachments = []Attachment{a} }},
		{"thumb without key", func(p *Plaintext) { a := validAttachment(); a.Thumb.Key = ""; p.Attachments = []Attachment{a} }},
		{"33-byte emoji", func(p *Plaintext) {
			p.Kind, p.Target, p.Emoji = KindReaction, &Target{From: "bob", MID: "m"}, ptr(strings.Repeat("😀", 8)+"x")
		}},
		{"reaction without emoji", func(p *Plaintext) { p.Kind, p.Target = KindReaction, &Target{From: "bob", MID: "m"} }},
		{"reaction without target", func(p *Plaintext) { p.Kind, p.Emoji = KindReaction, ptr("👍") }},
		{"delete without target", func(p *Plaintext) { p.Kind = KindDelete }},
		{"receipt of another state", func(p *Plaintext) { p.Kind, p.Receipt, p.MIDs = KindReceipt, "seen", []string{"m"} }},
		{"receipt without mids", func(p *Plaintext) { p.Kind, p.Receipt = KindReceipt, ReceiptRead }},
		{"receipt of 257 mids", func(p *Plaintext) { p.Kind, p.Receipt, p.MIDs = KindReceipt, ReceiptRead, many(257, "m") }},
		{"group change without state", func(p *Plaintext) { p.Kind, p.Group = KindGroup, &GroupRef{ID: validGroup().ID} }},
		{"group change for another group", func(p *Plaintext) {
			p.Kind, p.Group, p.State = KindGroup, &GroupRef{ID: NewGroupID()}, validGroup()
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := Plaintext{V: 1, From: "alice", To: "bob", TS: 1}
			c.change(&p)
			raw, err := marshalPlaintext(p)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := parsePlaintext(raw); err == nil {
				t.Fatalf("parsed %s", raw)
			}
		})
	}
	for _, ok := range []Plaintext{
		{V: 1, Kind: KindReceipt, Receipt: ReceiptDelivered, MIDs: many(256, "m")},
		{V: 1, Kind: KindReaction, Target: &Target{From: "bob", MID: "m"}, Emoji: ptr(strings.Repeat("😀", 8))},
		{V: 1, Kind: "edit"}, // a later kind: shown as unknown, not refused
		{V: 1, Attachments: make([]Attachment, 16)},
	} {
		for i := range ok.Attachments {
			ok.Attachments[i] = validAttachment()
		}
		if raw, _ := marshalPlaintext(ok); ok.Check() != nil {
			t.Errorf("refused %s: %v", raw, ok.Check())
		}
	}
}

func TestPlaintextConversation(t *testing.T) {
	for _, c := range []struct {
		p    Plaintext
		want string
	}{
		{Plaintext{From: "alice", To: "bob"}, "alice"},
		{Plaintext{From: "bob", To: "bob", Peer: "alice"}, "alice"}, // bob's sync copy
		{Plaintext{From: "alice", To: "bob", Group: &GroupRef{ID: "g"}}, "group:g"},
		{Plaintext{From: "bob", To: "bob", Group: &GroupRef{ID: "g"}}, "group:g"},
	} {
		if got := c.p.Conversation("bob"); got != c.want {
			t.Errorf("%+v: %q, want %q", c.p, got, c.want)
		}
	}
	if got := ReplyExcerpt(strings.Repeat("é", 300)); got != strings.Repeat("é", 200) {
		t.Errorf("excerpt of %d bytes", len(got))
	}
}

func TestAttachmentRoundTripAndDigestFirst(t *testing.T) {
	file := bytes.Repeat([]byte("kez attachment "), 1000)
	enc, err := EncryptAttachment(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc.Blob) != len(file)+AttachmentOverhead || len(enc.Key) != 32 {
		t.Fatalf("blob of %d bytes, key of %d", len(enc.Blob), len(enc.Key))
	}
	got, err := DecryptAttachment(enc.Blob, enc.Key, enc.SHA256)
	if err != nil || !bytes.Equal(got, file) {
		t.Fatalf("decrypted %d bytes: %v", len(got), err)
	}
	again, _ := EncryptAttachment(file)
	if bytes.Equal(again.Key, enc.Key) || bytes.Equal(again.Blob[:12], enc.Blob[:12]) {
		t.Error("two encryptions share a key or nonce")
	}
	tampered := bytes.Clone(enc.Blob)
	tampered[len(tampered)-1] ^= 1
	if _, err := DecryptAttachment(tampered, enc.Key, enc.SHA256); !errors.Is(err, ErrAttachmentDigest) {
		t.Errorf("tampered blob: %v, want the digest refused", err)
	}
	// The digest of the tampered blob passes, and GCM refuses it.
	enc2, _ := EncryptAttachment([]byte("x"))
	if _, err := DecryptAttachment(tampered, enc2.Key, digestOf(tampered)); err == nil || errors.Is(err, ErrAttachmentDigest) {
		t.Errorf("tampered blob with its own digest: %v, want GCM to refuse it", err)
	}
	if _, err := DecryptAttachment(enc.Blob, enc.Key, "short"); err == nil {
		t.Error("decrypted with a malformed digest")
	}
	if _, err := DecryptAttachment(enc.Blob[:10], enc.Key, digestOf(enc.Blob[:10])); err == nil {
		t.Error("decrypted a blob shorter than nonce and tag")
	}
}

func digestOf(b []byte) string { return sha256B64(b) }
