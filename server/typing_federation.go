package server

import (
	"context"
	"fmt"

	"kez.lat/chat/server/signing"
)

// Typing indicators across servers (docs/protocol.md, "Typing across
// servers"): signed kez.chat.typing/v1 documents, forwarded at once by the
// sender's server and verified by the recipients', never stored.

// remoteTyping is one document of a typing request, checked, on its way
// to its server.
type remoteTyping struct {
	domain string
	doc    []byte // {"payload": <canonical>, "signature": {...}}
}

// checkRemoteTyping checks the form of the documents a typing request of
// from carries for other servers: one per server this one federates with,
// from from's address, fresh, with recipients as a local request's.
func (s *Service) checkRemoteTyping(from string, docs []signing.Signed) ([]remoteTyping, error) {
	if len(docs) == 0 {
		return nil, nil
	}
	if s.Fed == nil {
		return nil, Errorf(CodeFederationDisabled, "this server does not relay typing indicators to other servers")
	}
	if len(docs) > MaxRemoteTyping {
		return nil, Errorf(CodeInvalidField, "remote holds at most %d documents, not %d", MaxRemoteTyping, len(docs))
	}
	out := make([]remoteTyping, 0, len(docs))
	servers := make(map[string]bool, len(docs))
	for i, doc := range docs {
		p, msg, _, err := s.typingDocument(doc)
		if err != nil {
			return nil, AtIndex(err, i)
		}
		if p.Server == s.cfg.Domain {
			return nil, AtIndex(Errorf(CodeInvalidField, "remote[%d].server must be another server's domain", i), i)
		}
		if err := s.checkDestination(p.Server); err != nil {
			return nil, AtIndex(err, i)
		}
		switch {
		case servers[p.Server]:
			return nil, AtIndex(Errorf(CodeInvalidField, "remote[%d]: a second document for %s", i, p.Server), i)
		case p.From != from+"@"+s.cfg.Domain:
			return nil, AtIndex(Errorf(CodeInvalidField, "remote[%d].from must be %s@%s", i, from, s.cfg.Domain), i)
		case !s.fresh(p.TS):
			return nil, AtIndex(Errorf(CodeStaleTimestamp, "remote[%d].ts %d is more than %v from the server's clock", i, p.TS, ClockSkew), i)
		}
		servers[p.Server] = true
		out = append(out, remoteTyping{domain: p.Server, doc: msg})
	}
	return out, nil
}

// typingDocument checks a kez.chat.typing/v1 document's form (not its
// signature) and returns its payload, the document as it is forwarded,
// and what verifying it takes.
func (s *Service) typingDocument(doc signing.Signed) (*TypingPayload, []byte, inboundDoc, error) {
	buf := make([]byte, 0, len(envelopePrefix)+len(doc.Payload)+signatureSize(doc.Signature))
	buf, canonical, pub, sig, err := appendWellFormed(append(buf, envelopePrefix...), doc)
	if err != nil {
		return nil, nil, inboundDoc{}, err
	}
	var p TypingPayload
	if err := DecodeJSON(canonical, &p); err != nil {
		return nil, nil, inboundDoc{}, err
	}
	if p.Type != TypeTyping {
		return nil, nil, inboundDoc{}, Errorf(CodeWrongType, "payload type must be %q, got %q", TypeTyping, p.Type)
	}
	if n := len(p.To); n == 0 || n > MaxTypingRecipients {
		return nil, nil, inboundDoc{}, Errorf(CodeInvalidField, "to must name 1 to %d recipients, not %d", MaxTypingRecipients, n)
	}
	if err := checkTypingRecipients("to", p.To); err != nil {
		return nil, nil, inboundDoc{}, err
	}
	msg, err := appendEnvelopeSignature(buf, doc.Signature)
	if err != nil {
		return nil, nil, inboundDoc{}, fmt.Errorf("encoding a typing document: %w", err)
	}
	return &p, msg, inboundDoc{canonical: canonical, pub: pub, sig: sig, alg: doc.Signature.Alg}, nil
}

// ReceiveTyping relays a typing document another server forwards to the
// open streams of its recipients here who take messages from its sender
// (POST /v1/federation/typing), once its signature verifies against the
// keys the sender's domain publishes. It returns how many recipients it
// relayed to.
func (s *Service) ReceiveTyping(ctx context.Context, doc signing.Signed) (int, error) {
	f := s.Fed
	if f == nil {
		return 0, Errorf(CodeFederationDisabled, "this server does not federate")
	}
	p, _, d, err := s.typingDocument(doc)
	if err != nil {
		return 0, err
	}
	if p.Server != s.cfg.Domain {
		return 0, Errorf(CodeWrongServer, "payload is for server %q; this is %q", p.Server, s.cfg.Domain)
	}
	if !s.fresh(p.TS) {
		return 0, Errorf(CodeStaleTimestamp, "ts %d is more than %v from the server's clock", p.TS, ClockSkew)
	}
	from, err := ParseAddress(p.From, f.Loopback)
	if err != nil || from.Domain == s.cfg.Domain {
		return 0, Errorf(CodeInvalidField, "from must be an address on another server")
	}
	if err := s.admitDomain(from.Domain); err != nil {
		return 0, err
	}
	if err := s.verifyInbound(ctx, from, []inboundDoc{d}); err != nil {
		return 0, err
	}
	sender := from.String()
	if ok, wait := s.TypingLimiter.Allow(sender); !ok {
		return 0, &Error{Code: CodeRateLimited, Message: "too many typing indicators from " + sender, RetryAfter: wait}
	}
	relayed := 0
	for _, r := range p.To {
		ok, err := s.publishTyping(ctx, r.To, sender, r.CT, &from)
		if err != nil {
			return relayed, err
		}
		if ok {
			relayed++
		}
	}
	return relayed, nil
}
