package server

import (
	"context"
	"fmt"
	"slices"
	"time"

	"kez.lat/chat/server/signing"
)

// The receiving half of federation: documents another server relays for
// its people (POST /v1/federation/messages). Nothing the relaying server
// says is taken on trust: every document is verified against the keys the
// sender's own domain publishes, as this server learnt them
// (RemoteResolver).

// inboundDoc is one relayed document, well formed but not yet verified.
type inboundDoc struct {
	p                   MessagePayload
	canonical, pub, sig []byte
	alg                 string
	msg                 []byte
}

// ReceiveFederated stores the documents of one relayed request, from one
// sender on another server to people here, atomically (docs/protocol.md,
// POST /v1/federation/messages). A refusal about one document carries its
// index.
func (s *Service) ReceiveFederated(ctx context.Context, docs []signing.Signed) (BatchResult, error) {
	f := s.Fed
	if f == nil {
		return BatchResult{}, Errorf(CodeFederationDisabled, "this server does not federate")
	}
	if len(docs) == 0 || len(docs) > MaxBatchDocuments {
		return BatchResult{}, Errorf(CodeInvalidField, "messages must hold 1 to %d documents, got %d", MaxBatchDocuments, len(docs))
	}
	in := make([]inboundDoc, len(docs))
	var from Address
	ids := make(map[string]bool, len(docs))
	size := 0
	for i, doc := range docs {
		d := &in[i]
		if err := s.checkInbound(doc, d); err != nil {
			return BatchResult{}, AtIndex(err, i)
		}
		a, err := ParseAddress(d.p.From, f.Loopback)
		switch {
		case err != nil || a.Domain == s.cfg.Domain:
			return BatchResult{}, AtIndex(Errorf(CodeInvalidField, "from must be an address on another server"), i)
		case i > 0 && a != from:
			return BatchResult{}, AtIndex(Errorf(CodeInvalidField, "every document of a request is from %s", from), i)
		case ids[d.p.ID]:
			return BatchResult{}, AtIndex(Errorf(CodeInvalidField, "a second document with id %q", d.p.ID), i)
		}
		from, ids[d.p.ID] = a, true
		size += len(d.msg)
	}
	if err := s.admitDomain(from.Domain); err != nil {
		return BatchResult{}, err
	}
	if err := s.verifyInbound(ctx, from, in); err != nil {
		return BatchResult{}, err
	}
	sender := from.String()
	if ok, wait := f.SenderLimiter.Allow(sender); !ok {
		return BatchResult{}, &Error{Code: CodeRateLimited, Message: "too many messages from " + sender, RetryAfter: wait}
	}
	envs := make([]*Envelope, len(in))
	// A delivery may carry many documents to one person (a sender's
	// backlog): each recipient is looked up and its setting read once.
	admitted := make(map[string]bool, len(in))
	for i := range in {
		d := &in[i]
		if !admitted[d.p.To] {
			if _, err := s.lookup(ctx, d.p.To, CodeUnknownRecipient); err != nil {
				return BatchResult{}, AtIndex(err, i)
			}
			if err := s.admits(ctx, d.p.To, from); err != nil {
				return BatchResult{}, AtIndex(err, i)
			}
			admitted[d.p.To] = true
		}
		// Blobs named are on the sender's server: this one keeps nothing
		// for them.
		envs[i] = &Envelope{Recipient: d.p.To, Sender: sender, ID: d.p.ID, Message: d.msg, AcceptedAt: time.Now()}
	}
	// Spent before the append; what was not stored is given back.
	if ok, wait := f.SenderQuota.AllowN(sender, float64(size)); !ok {
		return BatchResult{}, &Error{Code: CodeSenderQuota, RetryAfter: wait,
			Message: fmt.Sprintf("%s has stored its day's quota of message bytes here; wait %s", sender, wait.Round(time.Second))}
	}
	if ok, wait := f.DomainQuota.AllowN(from.Domain, float64(size)); !ok {
		f.SenderQuota.Refund(sender, float64(size))
		return BatchResult{}, &Error{Code: CodeDomainQuota, RetryAfter: wait,
			Message: fmt.Sprintf("%s has stored its day's quota of message bytes here; wait %s", from.Domain, wait.Round(time.Second))}
	}
	dups, err := s.store.AppendMessages(ctx, envs, InboxLimits{MaxPending: s.cfg.MaxPending, MaxPendingBytes: s.cfg.MaxPendingBytes})
	if err != nil {
		f.SenderQuota.Refund(sender, float64(size))
		f.DomainQuota.Refund(from.Domain, float64(size))
		return BatchResult{}, fmt.Errorf("storing %d messages from %s: %w", len(envs), sender, err)
	}
	res := BatchResult{Receipts: make([]Receipt, len(envs))}
	for i, e := range envs {
		res.Receipts[i] = Receipt{To: e.Recipient, Seq: e.Seq, ID: e.ID}
		if !dups[i] {
			res.Stored++
			res.StoredBytes += len(e.Message)
		}
	}
	f.SenderQuota.Refund(sender, float64(size-res.StoredBytes))
	f.DomainQuota.Refund(from.Domain, float64(size-res.StoredBytes))
	s.publishStored(ctx, envs, dups)
	return res, nil
}

// checkInbound checks one relayed document's form: well formed, a message
// for this server within the federation window.
func (s *Service) checkInbound(doc signing.Signed, d *inboundDoc) error {
	buf := make([]byte, 0, len(envelopePrefix)+len(doc.Payload)+signatureSize(doc.Signature))
	buf, canonical, pub, sig, err := appendWellFormed(append(buf, envelopePrefix...), doc)
	if err != nil {
		return err
	}
	if err := decodeMessagePayload(canonical, &d.p); err != nil {
		return err
	}
	switch {
	case d.p.Type != TypeMessage:
		return Errorf(CodeWrongType, "payload type must be %q, got %q", TypeMessage, d.p.Type)
	case d.p.Server != s.cfg.Domain:
		return Errorf(CodeWrongServer, "payload is for server %q; this is %q", d.p.Server, s.cfg.Domain)
	}
	age := s.now().Sub(time.Unix(d.p.TS, 0))
	if age < -ClockSkew || age > FederationWindow+ClockSkew {
		return Errorf(CodeStaleTimestamp, "ts %d is outside the federation window (%v back, %v ahead)", d.p.TS, FederationWindow+ClockSkew, ClockSkew)
	}
	if err := checkMessageBody(&d.p); err != nil {
		return err
	}
	if err := checkHandleSyntax(d.p.To); err != nil {
		return Errorf(CodeUnknownRecipient, "no user %q", d.p.To)
	}
	if d.msg, err = appendEnvelopeSignature(buf, doc.Signature); err != nil {
		return fmt.Errorf("encoding envelope: %w", err)
	}
	d.canonical, d.pub, d.sig, d.alg = canonical, pub, sig, doc.Signature.Alg
	return nil
}

// admitDomain refuses a request relayed from domain when this server
// does not federate with it or it sent too many: the checks every
// server-to-server route makes before it asks the domain for keys.
func (s *Service) admitDomain(domain string) error {
	if err := s.Fed.Domains.Check(domain); err != nil {
		return err
	}
	if ok, wait := s.Fed.DomainLimiter.Allow(domain); !ok {
		return &Error{Code: CodeRateLimited, Message: "too many requests from " + domain, RetryAfter: wait}
	}
	return nil
}

// verifyInbound checks that every document is signed by a key from's
// domain publishes for it, asking the domain again once when a key is not
// among those cached.
func (s *Service) verifyInbound(ctx context.Context, from Address, in []inboundDoc) error {
	id, err := s.Fed.Resolver.ResolveRemote(ctx, from, false)
	if err != nil {
		return err
	}
	refreshed := false
	for i := range in {
		d := &in[i]
		if !id.Authorizes(d.alg, d.pub) && !refreshed {
			if id, err = s.Fed.Resolver.ResolveRemote(ctx, from, true); err != nil {
				return err
			}
			refreshed = true
		}
		if !id.Authorizes(d.alg, d.pub) {
			return AtIndex(Errorf(CodeKeyNotAuthorized, "the signing key is not one %s publishes for %s", from.Domain, from), i)
		}
		if err := signing.Verify(d.alg, d.pub, d.canonical, d.sig); err != nil {
			return AtIndex(Errorf(CodeBadSignature, "the signature does not verify over the payload"), i)
		}
	}
	return nil
}

// admits refuses from when handle blocked it or its domain, or takes no
// messages from strangers and does not know it.
func (s *Service) admits(ctx context.Context, handle string, from Address) error {
	p, err := s.Fed.Store.Privacy(ctx, handle)
	if err != nil {
		return fmt.Errorf("reading the privacy setting of %s: %w", handle, err)
	}
	if slices.Contains(p.Blocked, from.String()) || slices.Contains(p.Blocked, from.Domain) {
		return Errorf(CodeSenderBlocked, "%s does not take messages from %s", handle, from)
	}
	if p.Strangers == StrangersRefuse && !slices.Contains(p.Known, from.String()) {
		return Errorf(CodeStrangerRefused, "%s takes messages from other servers only from people it knows", handle)
	}
	return nil
}
