package server

import (
	"context"
	"fmt"

	"kez.lat/chat/server/signing"
)

// Typing bounds (docs/protocol.md, "POST /v1/typing/{handle}").
const (
	// MaxTypingRecipients is how many recipients one typing request names.
	MaxTypingRecipients = 256
	// MaxTypingCiphertext is the most bytes one recipient's ct decodes to.
	MaxTypingCiphertext = 512
	// TypingBuffer is how many typing events may wait for one stream;
	// past it new ones are dropped for that stream (never queued, and
	// the stream stays open): a typing event is stale in seconds anyway.
	TypingBuffer = 8
)

// Typing is one typing event on its way to Recipient's streams. It is
// relayed, never stored.
type Typing struct {
	Recipient string
	From      string
	// CT is the base64url ciphertext exactly as the sender sent it.
	CT string
}

// TypingRecipient is one member of a typing request's "to".
type TypingRecipient struct {
	To string `json:"to"`
	CT string `json:"ct"`
}

// TypingRequest is the body of POST /v1/typing/{handle}.
type TypingRequest struct {
	To []TypingRecipient `json:"to"`
	// Remote are signed kez.chat.typing/v1 documents for people on other
	// servers, one per server.
	Remote []signing.Signed `json:"remote,omitempty"`
}

// MaxRemoteTyping bounds the documents for other servers one typing
// request carries.
const MaxRemoteTyping = 16

// TypingPayload is a kez.chat.typing/v1 document's payload.
type TypingPayload struct {
	Type   string            `json:"type"`
	Server string            `json:"server"`
	From   string            `json:"from"`
	TS     int64             `json:"ts"`
	To     []TypingRecipient `json:"to"`
}

// Typing relays from's typing ciphertexts to the open streams of each
// registered recipient, on every replica, and returns how many recipients
// it relayed to (unknown ones are skipped). The caller has authenticated
// from. Nothing is stored and nothing is pushed.
func (s *Service) Typing(ctx context.Context, from string, req *TypingRequest) (relayed, forwarded int, err error) {
	if n := len(req.To); (n == 0 && len(req.Remote) == 0) || n > MaxTypingRecipients {
		return 0, 0, Errorf(CodeInvalidField, "to must name 1 to %d recipients, not %d", MaxTypingRecipients, n)
	}
	if err := checkTypingRecipients("to", req.To); err != nil {
		return 0, 0, err
	}
	remote, err := s.checkRemoteTyping(from, req.Remote)
	if err != nil {
		return 0, 0, err
	}
	if ok, wait := s.TypingLimiter.Allow(from); !ok {
		return 0, 0, &Error{Code: CodeRateLimited, Message: "too many typing indicators from " + from, RetryAfter: wait}
	}
	for _, r := range remote {
		if s.Fed.ForwardTyping != nil && s.Fed.ForwardTyping(r.domain, r.doc) {
			forwarded++
		}
	}
	for _, r := range req.To {
		ok, err := s.publishTyping(ctx, r.To, from, r.CT, nil)
		if err != nil {
			return relayed, forwarded, err
		}
		if ok {
			relayed++
		}
	}
	return relayed, forwarded, nil
}

// publishTyping relays one typing ciphertext to handle's streams, unless
// handle is unknown (not reported: typing says nothing about who exists)
// or, for a sender elsewhere, does not take messages from it (remote).
func (s *Service) publishTyping(ctx context.Context, handle, from, ct string, remote *Address) (bool, error) {
	if _, err := s.lookup(ctx, handle, CodeUnknownRecipient); err != nil {
		if ErrorCode(err) == CodeUnknownRecipient {
			return false, nil
		}
		return false, fmt.Errorf("looking up typing recipient %s: %w", handle, err)
	}
	if remote != nil {
		if err := s.admits(ctx, handle, *remote); err != nil {
			if _, refused := err.(*Error); refused {
				return false, nil
			}
			return false, err
		}
	}
	if err := s.broker.PublishTyping(ctx, &Typing{Recipient: handle, From: from, CT: ct}); err != nil {
		// At most once by design: a lost indicator is renewed in 3 s.
		s.log.DebugContext(ctx, "publishing a typing event", "to", handle, "err", err)
	}
	return true, nil
}

// checkTypingRecipients checks a typing request's or document's
// recipients: distinct, named, each ct at most MaxTypingCiphertext.
func checkTypingRecipients(field string, to []TypingRecipient) error {
	seen := make(map[string]struct{}, len(to))
	for i, r := range to {
		if _, dup := seen[r.To]; dup {
			return Errorf(CodeInvalidField, "%s[%d]: %q is named twice", field, i, r.To)
		}
		seen[r.To] = struct{}{}
		if r.To == "" {
			return Errorf(CodeInvalidField, "%s[%d].to is empty", field, i)
		}
		ct, err := signing.DecodeB64(r.CT)
		switch {
		case err != nil:
			return Errorf(CodeInvalidEncoding, "%s[%d].ct is not base64url without padding", field, i)
		case len(ct) == 0:
			return Errorf(CodeInvalidField, "%s[%d].ct is empty", field, i)
		case len(ct) > MaxTypingCiphertext:
			return Errorf(CodeCiphertextTooLarge, "%s[%d].ct is %d bytes; at most %d are allowed", field, i, len(ct), MaxTypingCiphertext)
		}
	}
	return nil
}
