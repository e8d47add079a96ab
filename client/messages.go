package client

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// MessagePayload is the signed payload of a message.
type MessagePayload = server.MessagePayload

// ErrInvalidMessage is wrapped by every reason Decrypt refuses a message:
// a signature that does not verify, a key that is not the sender's, a
// payload or plaintext that does not match.
var ErrInvalidMessage = errors.New("invalid message")

// NewMessageID returns a random message id: 16 bytes, base64url.
func NewMessageID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return signing.EncodeB64(b[:])
}

// NewMessage encrypts body to the recipient and signs the message document
// as id, timestamped now. id must be registered (id.Handle set). msgID must
// be unique per sender; see NewMessageID.
func NewMessage(id *Identity, to *User, msgID, body string) (signing.Signed, error) {
	return NewMessageAt(id, to, msgID, body, time.Now())
}

// NewMessageAt is NewMessage with the timestamp given.
func NewMessageAt(id *Identity, to *User, msgID, body string, ts time.Time) (signing.Signed, error) {
	return NewMessageDoc(id, to, msgID, Plaintext{Body: body}, nil, ts)
}

// NewMessageDoc encrypts pt to the recipient and signs the message
// document as id, with envelope id msgID, timestamped ts, naming blobs.
// pt's v, from, to and ts are set here.
func NewMessageDoc(id *Identity, to *User, msgID string, pt Plaintext, blobs []string, ts time.Time) (signing.Signed, error) {
	if id.Handle == "" {
		return signing.Signed{}, errors.New("message: the identity has no handle; register it first")
	}
	// To a person on another server, the sender is named by its address:
	// the document is for the recipient's server, relayed by the
	// sender's (docs/protocol.md, "Sending: relayed by the sender's
	// server").
	from := id.Handle
	if id.Server != "" && to.Server != id.Server {
		from = id.Handle + "@" + id.Server
	}
	pt.V, pt.From, pt.To, pt.TS = 1, from, to.Handle, ts.Unix()
	raw, err := marshalPlaintext(pt)
	if err != nil {
		return signing.Signed{}, fmt.Errorf("message: %w", err)
	}
	ct, err := Seal(to.EncKey, raw)
	if err != nil {
		return signing.Signed{}, fmt.Errorf("message to %s: %w", to.Handle, err)
	}
	if len(ct) > server.MaxCiphertext {
		return signing.Signed{}, fmt.Errorf("message to %s: the ciphertext is %d bytes, over %d", to.Handle, len(ct), server.MaxCiphertext)
	}
	doc, err := signing.Sign(id.Signer, MessagePayload{
		Type:   server.TypeMessage,
		Server: to.Server,
		From:   from,
		To:     to.Handle,
		ID:     msgID,
		TS:     ts.Unix(),
		CT:     signing.EncodeB64(ct),
		Blobs:  blobs,
	})
	if err != nil {
		return signing.Signed{}, fmt.Errorf("message: %w", err)
	}
	return doc, nil
}

// Send encrypts body to the handle to, signs it as id and posts it with a
// fresh random message id. The recipient's record is looked up once and
// cached.
func (c *Client) Send(ctx context.Context, id *Identity, to, body string) (Receipt, error) {
	if err := c.checkIdentity(ctx, id); err != nil {
		return Receipt{}, err
	}
	u, err := c.user(ctx, to)
	if err != nil {
		return Receipt{}, err
	}
	doc, err := NewMessageAt(id, u, NewMessageID(), body, c.now())
	if err != nil {
		return Receipt{}, err
	}
	r, _, err := c.Post(ctx, doc)
	return r, err
}

// Post posts a signed message document as is. replayed reports that the
// server had already accepted this (from, id) with this document and
// answered the original receipt (Idempotent-Replayed): posting the same
// document again is always safe.
func (c *Client) Post(ctx context.Context, doc signing.Signed) (r Receipt, replayed bool, err error) {
	body, err := marshalDoc(doc)
	if err != nil {
		return Receipt{}, false, err
	}
	resp, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/messages", body: body, limit: maxSmallBody}, &r)
	if err != nil {
		return Receipt{}, false, err
	}
	return r, resp.Header.Get("Idempotent-Replayed") == "true", nil
}

// Payload decodes the envelope's message payload without verifying its
// signature: only to learn who claims to have sent it (From), so the
// sender's record can be looked up for Decrypt.
func (e Envelope) Payload() (MessagePayload, error) {
	var p MessagePayload
	if err := server.DecodeJSON(e.Message.Payload, &p); err != nil {
		return MessagePayload{}, fmt.Errorf("%w: payload: %w", ErrInvalidMessage, err)
	}
	return p, nil
}

// errKeyNotListed marks a refusal that a fresher record of the sender may
// lift: the message is signed by a key its record does not (yet) list.
var errKeyNotListed = errors.New("signing key not in the sender's record")

// Decrypt verifies and opens a message of id's inbox sent by sender: the
// signature must verify under sender's registered key or one of the device
// keys its record lists, the payload must be a message from sender (by
// handle on id's server, by address from another) to id for id's server,
// and the decrypted plaintext must name the same from and to. The names
// inside a plaintext from another server are qualified with its domain
// (Plaintext.Qualify). Every refusal wraps ErrInvalidMessage.
func (id *Identity) Decrypt(env Envelope, sender *User) (Plaintext, error) {
	bad := func(format string, args ...any) (Plaintext, error) {
		return Plaintext{}, fmt.Errorf("%w (seq %d): %s", ErrInvalidMessage, env.Seq, fmt.Sprintf(format, args...))
	}
	remote := id.Server != "" && sender.Server != id.Server
	from := sender.Handle
	if remote {
		from = sender.Address()
	}
	canonical, pub, err := env.Message.Verify()
	if err != nil {
		return bad("%v", err)
	}
	if !sender.Authorizes(env.Message.Signature.Alg, pub) {
		p, err := bad("not signed by a key of %s", from)
		return p, errors.Join(err, errKeyNotListed)
	}
	p, err := Envelope{Message: signing.Signed{Payload: canonical}}.Payload()
	if err != nil {
		return bad("%v", err)
	}
	switch {
	case p.Type != server.TypeMessage:
		return bad("payload type is %q", p.Type)
	case p.From != from:
		return bad("from %q, but the signing key is %s's", p.From, from)
	case id.Handle == "" || p.To != id.Handle:
		return bad("addressed to %q, not to %q", p.To, id.Handle)
	case (!remote && p.Server != sender.Server) || (id.Server != "" && p.Server != id.Server):
		return bad("for server %q", p.Server)
	}
	ct, err := signing.DecodeB64(p.CT)
	if err != nil {
		return bad("ct: %v", err)
	}
	raw, err := Open(id.Enc, ct)
	if err != nil {
		return bad("%v", err)
	}
	pt, err := parsePlaintext(raw)
	if err != nil {
		return bad("%v", err)
	}
	if pt.From != p.From || pt.To != p.To {
		return bad("the plaintext says from %q to %q, the envelope from %q to %q", pt.From, pt.To, p.From, p.To)
	}
	if id.Server != "" {
		// The names inside, as this client names people; a state's,
		// qualified, are checked again as Groups.Take does.
		if err := pt.Qualify(sender.Server, id.Server); err != nil {
			return bad("%v", err)
		}
		if pt.State != nil && pt.State.writer != "" {
			if err := pt.State.Check(); err != nil {
				return bad("%v", err)
			}
		}
	}
	return pt, nil
}

// Decrypt looks up the sender the envelope names (cached; one on another
// server at its own domain) and verifies and opens the message with
// id.Decrypt.
func (c *Client) Decrypt(ctx context.Context, id *Identity, env Envelope) (Plaintext, error) {
	p, err := env.Payload()
	if err != nil {
		return Plaintext{}, err
	}
	// A sender that is no one this client may reach can never be
	// verified.
	if _, err := ParseAddress(p.From, true); err != nil {
		return Plaintext{}, fmt.Errorf("%w (seq %d): from: %w", ErrInvalidMessage, env.Seq, err)
	}
	if _, err := c.Name(ctx, p.From); errors.Is(err, errLoopbackDomain) {
		return Plaintext{}, fmt.Errorf("%w (seq %d): from: %w", ErrInvalidMessage, env.Seq, err)
	}
	sender, err := c.user(ctx, p.From)
	if err != nil {
		return Plaintext{}, fmt.Errorf("sender %q of seq %d: %w", p.From, env.Seq, err)
	}
	pt, err := id.Decrypt(env, sender)
	if errors.Is(err, errKeyNotListed) {
		// The sender may have added a device since the record was cached.
		if sender, err = c.Lookup(ctx, p.From); err != nil {
			return Plaintext{}, fmt.Errorf("sender %q of seq %d: %w", p.From, env.Seq, err)
		}
		pt, err = id.Decrypt(env, sender)
	}
	return pt, err
}
