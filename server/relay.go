package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The sending half of federation: documents a local person signed for a
// person on another server, checked as local messages are and queued for
// the courier (server/federation), which delivers them.

// checkRelayHeader checks the header of a document for another server:
// this server relays (federation on), to a well-formed domain it
// federates with.
func (s *Service) checkRelayHeader(p *MessagePayload) error {
	if p.Type != TypeMessage {
		return Errorf(CodeWrongType, "payload type must be %q, got %q", TypeMessage, p.Type)
	}
	if s.Fed == nil {
		if strings.Contains(p.From, "@") {
			return Errorf(CodeFederationDisabled, "this server does not relay messages to other servers")
		}
		return Errorf(CodeWrongServer, "payload is for server %q; this is %q", p.Server, s.cfg.Domain)
	}
	if err := s.checkDestination(p.Server); err != nil {
		return err
	}
	if !s.fresh(p.TS) {
		return Errorf(CodeStaleTimestamp, "ts %d is more than %v from the server's clock", p.TS, ClockSkew)
	}
	if err := checkHandleSyntax(p.To); err != nil {
		return Errorf(CodeInvalidField, "to must be a handle on %s", p.Server)
	}
	return nil
}

// checkDestination refuses a document for server unless server is a
// domain this server federates with: the check of every document it would
// send elsewhere (messages, typing).
func (s *Service) checkDestination(server string) error {
	if err := CheckDomain(server, s.Fed.Loopback); err != nil {
		return Errorf(CodeInvalidField, "server %q is not a domain", server)
	}
	return s.Fed.Domains.Check(server)
}

// localSender returns the handle of from, the address a document for
// another server names its sender by, which must be on this server.
func (s *Service) localSender(from string) (string, error) {
	a, err := ParseAddress(from, s.Fed.Loopback)
	if err != nil || a.Domain != s.cfg.Domain {
		return "", Errorf(CodeInvalidField, "from must be the sender's address, <handle>@%s, in a document for another server", s.cfg.Domain)
	}
	return a.Handle, nil
}

// outboundDoc is the outbox entry of p, stored as msg.
func outboundDoc(sender string, p *MessagePayload, msg []byte) *OutboundDoc {
	return &OutboundDoc{Sender: sender, ID: p.ID, Domain: p.Server, Recipient: p.To, Message: msg, Blobs: p.Blobs, TS: time.Unix(p.TS, 0)}
}

// queuedReceipt answers a document queued for another server.
func queuedReceipt(p *MessagePayload) Receipt {
	return Receipt{To: p.To + "@" + p.Server, ID: p.ID, State: OutboxQueued}
}

// queue stores docs in the outbox and wakes the courier.
func (s *Service) queue(ctx context.Context, docs []*OutboundDoc) ([]bool, error) {
	dups, err := s.Fed.Store.Enqueue(ctx, docs, s.Fed.Outbox)
	if err != nil {
		return nil, fmt.Errorf("queueing %d documents for other servers: %w", len(docs), err)
	}
	for _, d := range dups {
		if !d && s.Fed.Queued != nil {
			s.Fed.Queued()
			break
		}
	}
	return dups, nil
}

// Outbox returns the entries of the handle sess authenticated, newest
// first (GET /v1/outbox/{handle}).
func (s *Service) Outbox(ctx context.Context, sess *Session) ([]*OutboxEntry, error) {
	if s.Fed == nil {
		return nil, Errorf(CodeFederationDisabled, "this server does not federate")
	}
	entries, err := s.Fed.Store.OutboxEntries(ctx, sess.User.Handle, 1000)
	if err != nil {
		return nil, fmt.Errorf("reading the outbox of %s: %w", sess.User.Handle, err)
	}
	return entries, nil
}

// reindex returns err as a refusal about the document at index of[i],
// where i is the index err carries.
func reindex(err error, of []int) error {
	var e *Error
	if !errors.As(err, &e) || e.Index == nil || *e.Index >= len(of) {
		return err
	}
	return AtIndex(e, of[*e.Index])
}
