package client

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"kez.lat/chat/server/signing"
)

// Plaintext kinds (docs/protocol.md, "Conversations (clients)").
const (
	KindText     = "text"
	KindReceipt  = "receipt"
	KindReaction = "reaction"
	KindDelete   = "delete"
	KindGroup    = "group"
)

// Receipt states.
const (
	ReceiptDelivered = "delivered"
	ReceiptRead      = "read"
)

// Plaintext limits (docs/protocol.md, "Conversations (clients)").
const (
	MaxAttachments  = 16
	MaxReceiptMIDs  = 256
	MaxEmojiBytes   = 32
	MaxReplyExcerpt = 200 // characters
	maxSafeSize     = 1<<53 - 1
)

// Plaintext is the decrypted content of a message (docs/protocol.md,
// "Message encryption" and "Conversations (clients)"). Members it does not
// know are ignored when read; Body is always written, empty when there is
// no text, so older readers accept every message.
type Plaintext struct {
	V    int    `json:"v"`
	From string `json:"from"`
	To   string `json:"to"`
	TS   int64  `json:"ts"`
	Body string `json:"body"`

	// Kind is one of the Kind constants; empty is text.
	Kind string `json:"kind,omitempty"`
	// MID is the message's id in its conversation, the same for every
	// recipient; empty: the envelope's id.
	MID string `json:"mid,omitempty"`
	// Group names the group the message is in; nil: the conversation of
	// the two handles.
	Group *GroupRef `json:"group,omitempty"`
	// Peer is, in a sync copy of a two-person conversation, the other
	// person.
	Peer        string       `json:"peer,omitempty"`
	Reply       *Reply       `json:"reply,omitempty"`
	Attachments []Attachment `json:"attachments,omitempty"`
	// Target is the message a reaction or a deletion is about.
	Target *Target `json:"target,omitempty"`
	// Emoji is a reaction's emoji; "" takes the reaction back.
	Emoji *string `json:"emoji,omitempty"`
	// Receipt is ReceiptDelivered or ReceiptRead, for MIDs.
	Receipt string   `json:"receipt,omitempty"`
	MIDs    []string `json:"mids,omitempty"`
	// State is a group control message's new group state.
	State *GroupState `json:"state,omitempty"`
}

// GroupRef names a group.
type GroupRef struct {
	ID string `json:"id"`
}

// Reply quotes a message.
type Reply struct {
	From string `json:"from"`
	MID  string `json:"mid"`
	// Body is the first 200 characters of the quoted text, for a recipient
	// that does not have it.
	Body string `json:"body"`
}

// Target is the message a reaction or deletion refers to.
type Target struct {
	From string `json:"from"`
	MID  string `json:"mid"`
}

// Attachment is an encrypted file a message refers to (docs/protocol.md,
// "Attachments"): the blob's id, the key that decrypts it, its SHA-256, and
// the file's size, type and name.
type Attachment struct {
	Blob   string `json:"blob"`
	Key    string `json:"key"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Type   string `json:"type"`
	Name   string `json:"name"`
	Width  int    `json:"width,omitempty"`
	Height int    `json:"height,omitempty"`
	Thumb  *Thumb `json:"thumb,omitempty"`
}

// Thumb is an image attachment's encrypted thumbnail.
type Thumb struct {
	Blob   string `json:"blob"`
	Key    string `json:"key"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
}

// KindOrText is the message's kind, KindText when absent.
func (p *Plaintext) KindOrText() string {
	if p.Kind == "" {
		return KindText
	}
	return p.Kind
}

// Check reports whether the members this client knows hold what the
// protocol allows: ids, handles, sizes and counts, and what each known kind
// needs. A kind it does not know passes (a later client's), with its
// members checked all the same.
func (p *Plaintext) Check() error {
	if p.MID != "" && !ValidMessageID(p.MID) {
		return fmt.Errorf("mid %.70q is not a message id", p.MID)
	}
	if p.Group != nil && !ValidGroupID(p.Group.ID) {
		return fmt.Errorf("group id %.40q is not 16 bytes of base64url", p.Group.ID)
	}
	if p.Peer != "" && checkName(p.Peer) != nil {
		return fmt.Errorf("peer %.80q is not a handle or an address", p.Peer)
	}
	if r := p.Reply; r != nil {
		if err := checkRef("reply", r.From, r.MID); err != nil {
			return err
		}
		if utf8.RuneCountInString(r.Body) > MaxReplyExcerpt {
			return fmt.Errorf("the reply's excerpt is over %d characters", MaxReplyExcerpt)
		}
	}
	if len(p.Attachments) > MaxAttachments {
		return fmt.Errorf("%d attachments, more than %d", len(p.Attachments), MaxAttachments)
	}
	for i := range p.Attachments {
		if err := p.Attachments[i].check(); err != nil {
			return fmt.Errorf("attachment %d: %w", i+1, err)
		}
	}
	if p.Target != nil {
		if err := checkRef("target", p.Target.From, p.Target.MID); err != nil {
			return err
		}
	}
	if p.Emoji != nil && len(*p.Emoji) > MaxEmojiBytes {
		return fmt.Errorf("the emoji is over %d bytes", MaxEmojiBytes)
	}
	if p.Receipt != "" && p.Receipt != ReceiptDelivered && p.Receipt != ReceiptRead {
		return fmt.Errorf("receipt %.20q is neither delivered nor read", p.Receipt)
	}
	if p.MIDs != nil {
		if len(p.MIDs) < 1 || len(p.MIDs) > MaxReceiptMIDs {
			return fmt.Errorf("%d mids, not 1 to %d", len(p.MIDs), MaxReceiptMIDs)
		}
		for _, m := range p.MIDs {
			if !ValidMessageID(m) {
				return fmt.Errorf("mid %.70q is not a message id", m)
			}
		}
	}
	switch p.Kind {
	case KindReceipt:
		if p.Receipt == "" || len(p.MIDs) == 0 {
			return errors.New("a receipt without receipt or mids")
		}
	case KindReaction:
		if p.Target == nil || p.Emoji == nil {
			return errors.New("a reaction without target or emoji")
		}
	case KindDelete:
		if p.Target == nil {
			return errors.New("a delete without target")
		}
	case KindGroup:
		if p.State == nil || p.Group == nil || p.Group.ID != p.State.ID {
			return errors.New("a group change without state, or for another group than its state's")
		}
	}
	return nil
}

// Qualify makes the names inside p, which a client of the server writer
// wrote, this client's, of the server own (see QualifyName): the peer, the
// reply's and the target's from, and a group state's members, admins and
// author. From and To are the payload's, and stay as they are. From a
// writer of this server, only an address at it changes (to the bare
// handle).
func (p *Plaintext) Qualify(writer, own string) error {
	q := func(what string, name *string) error {
		n, err := QualifyName(*name, writer, own)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		*name = n
		return nil
	}
	if p.Peer != "" {
		if err := q("peer", &p.Peer); err != nil {
			return err
		}
	}
	if p.Reply != nil {
		r := *p.Reply
		if err := q("reply", &r.From); err != nil {
			return err
		}
		p.Reply = &r
	}
	if p.Target != nil {
		t := *p.Target
		if err := q("target", &t.From); err != nil {
			return err
		}
		p.Target = &t
	}
	if p.State != nil {
		s := *p.State
		if err := s.qualify(writer, own); err != nil {
			return err
		}
		p.State = &s
	}
	return nil
}

// checkRef checks a reference to a message: its sender and mid.
func checkRef(what, from, mid string) error {
	if checkName(from) != nil {
		return fmt.Errorf("%s from %.80q is not a handle or an address", what, from)
	}
	if !ValidMessageID(mid) {
		return fmt.Errorf("%s mid %.70q is not a message id", what, mid)
	}
	return nil
}

func (a *Attachment) check() error {
	if err := checkBlobRef(a.Blob, a.Key, a.SHA256, a.Size); err != nil {
		return err
	}
	if !utf8.ValidString(a.Name) || !utf8.ValidString(a.Type) {
		return errors.New("name or type is not valid UTF-8")
	}
	if a.Width < 0 || a.Height < 0 {
		return errors.New("a negative width or height")
	}
	if t := a.Thumb; t != nil {
		if err := checkBlobRef(t.Blob, t.Key, t.SHA256, t.Size); err != nil {
			return fmt.Errorf("thumb: %w", err)
		}
		if t.Width < 0 || t.Height < 0 {
			return errors.New("thumb: a negative width or height")
		}
	}
	return nil
}

// checkBlobRef checks a blob id (32 bytes), its key (32 bytes), its SHA-256
// and the size of what it holds.
func checkBlobRef(blob, key, sum string, size int64) error {
	if !ValidBlobID(blob) {
		return fmt.Errorf("blob id %.50q is not 32 bytes of base64url", blob)
	}
	if k, err := signing.DecodeB64(key); err != nil || len(k) != attachmentKeySize {
		return errors.New("the key is not 32 bytes of base64url")
	}
	if s, err := signing.DecodeB64(sum); err != nil || len(s) != 32 {
		return errors.New("sha256 is not 32 bytes of base64url")
	}
	if size < 0 || size > maxSafeSize {
		return fmt.Errorf("size %d is out of range", size)
	}
	return nil
}

// ValidBlobID reports whether id is a blob id: 43 base64url characters of
// 32 bytes.
func ValidBlobID(id string) bool {
	if len(id) != 43 {
		return false
	}
	b, err := signing.DecodeB64(id)
	return err == nil && len(b) == 32
}

// ValidMessageID reports whether id is 1 to 64 characters of A-Z a-z 0-9 _
// - . : (a message id, and a mid).
func ValidMessageID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// Conversation is the conversation a message of self's inbox belongs to:
// "group:<id>" for a group's, else the other person's handle (the sender,
// or a sync copy's peer).
func (p *Plaintext) Conversation(self string) string {
	switch {
	case p.Group != nil:
		return "group:" + p.Group.ID
	case p.From == self && p.Peer != "":
		return p.Peer
	default:
		return p.From
	}
}

// ReplyExcerpt is the first 200 characters of body, as a reply quotes it.
func ReplyExcerpt(body string) string {
	n := 0
	for i := range body {
		if n == MaxReplyExcerpt {
			return body[:i]
		}
		n++
	}
	return body
}
