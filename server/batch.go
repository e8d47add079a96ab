package server

import (
	"context"
	"fmt"
	"time"

	"kez.lat/chat/server/signing"
)

// MaxBatchDocuments bounds the documents of one group send.
const MaxBatchDocuments = 256

// BatchBody is the body of POST /v1/batch/{handle}.
type BatchBody struct {
	Messages []signing.Signed `json:"messages"`
}

// BatchResult answers a group send.
type BatchResult struct {
	// Receipts are in the order of the documents.
	Receipts []Receipt
	// Stored counts the envelopes stored now, StoredBytes their messages'
	// bytes; the others were stored before (retries).
	Stored      int
	StoredBytes int
}

// SendBatch stores one signed kez.chat.message/v1 document per recipient,
// from the handle sess authenticated, atomically: all of them or none
// (docs/protocol.md, POST /v1/batch/{handle}). The request's auth
// authenticates every document: each is checked to name a key authorized
// for its sender, not verified, which would cost a verification per
// recipient and prove nothing the auth does not. A refusal about one
// document carries its index. Each envelope stored is then relayed and
// pushed as a single send's.
func (s *Service) SendBatch(ctx context.Context, sess *Session, docs []signing.Signed) (BatchResult, error) {
	if len(docs) == 0 || len(docs) > MaxBatchDocuments {
		return BatchResult{}, Errorf(CodeInvalidField, "messages must hold 1 to %d documents, got %d", MaxBatchDocuments, len(docs))
	}
	sender := sess.User
	var deviceKeys *KeyDocument
	resolved := false
	envs := make([]*Envelope, len(docs))
	ids := make(map[string]bool, len(docs))
	recipients := make(map[string]bool, len(docs))
	size := 0
	for i, doc := range docs {
		e, err := s.checkBatchDocument(ctx, sender, doc, &deviceKeys, &resolved)
		if err == nil && recipients[e.Recipient] {
			err = Errorf(CodeInvalidField, "a second document to %q: each recipient takes one", e.Recipient)
		}
		if err == nil && ids[e.ID] {
			err = Errorf(CodeInvalidField, "a second document with id %q", e.ID)
		}
		if err != nil {
			return BatchResult{}, AtIndex(err, i)
		}
		recipients[e.Recipient], ids[e.ID] = true, true
		envs[i] = e
		size += len(e.Message)
	}
	if ok, wait := s.SendLimiter.Allow(sender.Handle); !ok {
		return BatchResult{}, &Error{Code: CodeRateLimited, Message: "too many messages from " + sender.Handle, RetryAfter: wait}
	}
	for i, e := range envs {
		if _, err := s.lookup(ctx, e.Recipient, CodeUnknownRecipient); err != nil {
			return BatchResult{}, AtIndex(err, i)
		}
	}
	// Spent before the append, as for a single send; what was not stored
	// is given back.
	if ok, wait := s.SenderQuota.AllowN(sender.Handle, float64(size)); !ok {
		return BatchResult{}, &Error{Code: CodeSenderQuota, RetryAfter: wait,
			Message: fmt.Sprintf("%s has stored its day's quota of message bytes; wait %s", sender.Handle, wait.Round(time.Second))}
	}
	dups, err := s.store.AppendMessages(ctx, envs, InboxLimits{MaxPending: s.cfg.MaxPending, MaxPendingBytes: s.cfg.MaxPendingBytes})
	if err != nil {
		s.SenderQuota.Refund(sender.Handle, float64(size))
		return BatchResult{}, fmt.Errorf("storing a group send of %d messages from %s: %w", len(envs), sender.Handle, err)
	}
	res := BatchResult{Receipts: make([]Receipt, len(envs))}
	for i, e := range envs {
		res.Receipts[i] = Receipt{To: e.Recipient, Seq: e.Seq, ID: e.ID}
		if dups[i] {
			continue
		}
		res.Stored++
		res.StoredBytes += len(e.Message)
	}
	s.SenderQuota.Refund(sender.Handle, float64(size-res.StoredBytes))
	s.messagesStored.Add(uint64(res.Stored))
	for i, e := range envs {
		if dups[i] {
			continue
		}
		// Durable: a failed publish only delays it to the next poll.
		if err := s.broker.Publish(ctx, e); err != nil {
			s.log.WarnContext(ctx, "publishing envelope", "to", e.Recipient, "seq", e.Seq, "err", err)
		}
		s.notifyOffline(e)
	}
	return res, nil
}

// checkBatchDocument checks one document of a group send as Send checks a
// message, except that its signature is checked to be well formed and made
// by a key authorized for sender, not verified. deviceKeys is sender's key
// document, resolved at most once per request (resolved).
func (s *Service) checkBatchDocument(ctx context.Context, sender *User, doc signing.Signed, deviceKeys **KeyDocument, resolved *bool) (*Envelope, error) {
	buf := make([]byte, 0, len(envelopePrefix)+len(doc.Payload)+signatureSize(doc.Signature))
	buf, canonical, pub, sig, err := appendWellFormed(append(buf, envelopePrefix...), doc)
	if err != nil {
		return nil, err
	}
	if len(sig) != signatureBytes {
		return nil, Errorf(CodeInvalidField, "signature.sig must be %d bytes, got %d", signatureBytes, len(sig))
	}
	var p MessagePayload
	if err := s.checkMessagePayload(canonical, &p); err != nil {
		return nil, err
	}
	if p.From != sender.Handle {
		return nil, Errorf(CodeInvalidField, "from is %q; a group send of %s carries only its messages", p.From, sender.Handle)
	}
	if err := checkHandleSyntax(p.To); err != nil {
		return nil, Errorf(CodeUnknownRecipient, "no user %q", p.To)
	}
	if !keyAuthorized(sender, doc.Signature.Alg, pub) && !(*deviceKeys).Authorizes(doc.Signature.Alg, pub) {
		// Resolved (and refreshed on a miss) once per batch.
		if *resolved {
			return nil, Errorf(CodeKeyNotAuthorized, "the signing key is not authorized for %q", p.From)
		}
		var ok bool
		*deviceKeys, ok, err = s.deviceKeysHolding(ctx, sender, func(d *KeyDocument) bool { return d.Authorizes(doc.Signature.Alg, pub) })
		if err != nil {
			return nil, err
		}
		*resolved = true
		if !ok {
			return nil, Errorf(CodeKeyNotAuthorized, "the signing key is not authorized for %q", p.From)
		}
	}
	msg, err := appendEnvelopeSignature(buf, doc.Signature)
	if err != nil {
		return nil, fmt.Errorf("encoding envelope: %w", err)
	}
	return &Envelope{Recipient: p.To, Sender: p.From, ID: p.ID, Message: msg, Blobs: p.Blobs, AcceptedAt: time.Now()}, nil
}

// signatureBytes is the size of a signature of every suite (ed25519,
// bip340).
const signatureBytes = 64
