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
}

// Typing relays from's typing ciphertexts to the open streams of each
// registered recipient, on every replica, and returns how many recipients
// it relayed to (unknown ones are skipped). The caller has authenticated
// from. Nothing is stored and nothing is pushed.
func (s *Service) Typing(ctx context.Context, from string, req *TypingRequest) (int, error) {
	if n := len(req.To); n == 0 || n > MaxTypingRecipients {
		return 0, Errorf(CodeInvalidField, "to must name 1 to %d recipients, not %d", MaxTypingRecipients, n)
	}
	seen := make(map[string]struct{}, len(req.To))
	for i, r := range req.To {
		if _, dup := seen[r.To]; dup {
			return 0, Errorf(CodeInvalidField, "to[%d]: %q is named twice", i, r.To)
		}
		seen[r.To] = struct{}{}
		if r.To == "" {
			return 0, Errorf(CodeInvalidField, "to[%d].to is empty", i)
		}
		ct, err := signing.DecodeB64(r.CT)
		switch {
		case err != nil:
			return 0, Errorf(CodeInvalidEncoding, "to[%d].ct is not base64url without padding", i)
		case len(ct) == 0:
			return 0, Errorf(CodeInvalidField, "to[%d].ct is empty", i)
		case len(ct) > MaxTypingCiphertext:
			return 0, Errorf(CodeCiphertextTooLarge, "to[%d].ct is %d bytes; at most %d are allowed", i, len(ct), MaxTypingCiphertext)
		}
	}
	if ok, wait := s.TypingLimiter.Allow(from); !ok {
		return 0, &Error{Code: CodeRateLimited, Message: "too many typing indicators from " + from, RetryAfter: wait}
	}
	relayed := 0
	for _, r := range req.To {
		if _, err := s.lookup(ctx, r.To, CodeUnknownRecipient); err != nil {
			if ErrorCode(err) == CodeUnknownRecipient {
				continue // not reported: typing says nothing about who exists
			}
			return relayed, fmt.Errorf("looking up typing recipient %s: %w", r.To, err)
		}
		if err := s.broker.PublishTyping(ctx, &Typing{Recipient: r.To, From: from, CT: r.CT}); err != nil {
			// At most once by design: a lost indicator is renewed in 3 s.
			s.log.DebugContext(ctx, "publishing a typing event", "to", r.To, "err", err)
		}
		relayed++
	}
	return relayed, nil
}
