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
	// Documents for this server are stored as envelopes; those for others
	// (a group with members elsewhere) are queued; each list keeps the
	// documents' indexes, for refusals and receipts.
	var envs []*Envelope
	var outbound []*OutboundDoc
	var envAt, outAt []int
	ids := make(map[string]bool, len(docs))
	recipients := make(map[string]bool, len(docs))
	size := 0
	for i, doc := range docs {
		e, out, err := s.checkBatchDocument(ctx, sender, doc, &deviceKeys, &resolved)
		to, id := "", ""
		switch {
		case err != nil:
		case e != nil:
			to, id = e.Recipient, e.ID
		default:
			to, id = out.Recipient+"@"+out.Domain, out.ID
		}
		if err == nil && recipients[to] {
			err = Errorf(CodeInvalidField, "a second document to %q: each recipient takes one", to)
		}
		if err == nil && ids[id] {
			err = Errorf(CodeInvalidField, "a second document with id %q", id)
		}
		if err != nil {
			return BatchResult{}, AtIndex(err, i)
		}
		recipients[to], ids[id] = true, true
		if e != nil {
			envs, envAt = append(envs, e), append(envAt, i)
			size += len(e.Message)
		} else {
			outbound, outAt = append(outbound, out), append(outAt, i)
			size += len(out.Message)
		}
	}
	if ok, wait := s.SendLimiter.Allow(sender.Handle); !ok {
		return BatchResult{}, &Error{Code: CodeRateLimited, Message: "too many messages from " + sender.Handle, RetryAfter: wait}
	}
	for j, e := range envs {
		if _, err := s.lookup(ctx, e.Recipient, CodeUnknownRecipient); err != nil {
			return BatchResult{}, AtIndex(err, envAt[j])
		}
	}
	// Spent before the append, as for a single send; what was not stored
	// is given back.
	if ok, wait := s.SenderQuota.AllowN(sender.Handle, float64(size)); !ok {
		return BatchResult{}, &Error{Code: CodeSenderQuota, RetryAfter: wait,
			Message: fmt.Sprintf("%s has stored its day's quota of message bytes; wait %s", sender.Handle, wait.Round(time.Second))}
	}
	res := BatchResult{Receipts: make([]Receipt, len(docs))}
	var dups []bool
	if len(envs) > 0 {
		var err error
		dups, err = s.store.AppendMessages(ctx, envs, InboxLimits{MaxPending: s.cfg.MaxPending, MaxPendingBytes: s.cfg.MaxPendingBytes})
		if err != nil {
			s.SenderQuota.Refund(sender.Handle, float64(size))
			return BatchResult{}, fmt.Errorf("storing a group send of %d messages from %s: %w", len(envs), sender.Handle, reindex(err, envAt))
		}
	}
	for j, e := range envs {
		res.Receipts[envAt[j]] = Receipt{To: e.Recipient, Seq: e.Seq, ID: e.ID}
		if !dups[j] {
			res.Stored++
			res.StoredBytes += len(e.Message)
		}
	}
	if len(outbound) > 0 {
		// The documents here are stored: a refusal now is answered, and a
		// retry of the whole request finds them stored (their receipts
		// replayed) and queues the rest.
		queued, err := s.queue(ctx, outbound)
		if err != nil {
			s.SenderQuota.Refund(sender.Handle, float64(size-res.StoredBytes))
			s.publishStored(ctx, envs, dups)
			return BatchResult{}, reindex(err, outAt)
		}
		for j, out := range outbound {
			res.Receipts[outAt[j]] = Receipt{To: out.Recipient + "@" + out.Domain, ID: out.ID, State: OutboxQueued}
			if !queued[j] {
				res.Stored++
				res.StoredBytes += len(out.Message)
			}
		}
	}
	s.SenderQuota.Refund(sender.Handle, float64(size-res.StoredBytes))
	s.publishStored(ctx, envs, dups)
	return res, nil
}

// publishStored relays and pushes the envelopes of envs stored now (not
// dups), and counts them.
func (s *Service) publishStored(ctx context.Context, envs []*Envelope, dups []bool) {
	for i, e := range envs {
		if dups[i] {
			continue
		}
		s.messagesStored.Add(1)
		// Durable: a failed publish only delays it to the next poll.
		if err := s.broker.Publish(ctx, e); err != nil {
			s.log.WarnContext(ctx, "publishing envelope", "to", e.Recipient, "seq", e.Seq, "err", err)
		}
		s.notifyOffline(e)
	}
}

// checkBatchDocument checks one document of a group send as Send checks a
// message, except that its signature is checked to be well formed and made
// by a key authorized for sender, not verified. deviceKeys is sender's key
// document, resolved at most once per request (resolved). A document for
// this server is returned as an envelope, one for another as an outbox
// entry.
func (s *Service) checkBatchDocument(ctx context.Context, sender *User, doc signing.Signed, deviceKeys **KeyDocument, resolved *bool) (*Envelope, *OutboundDoc, error) {
	buf := make([]byte, 0, len(envelopePrefix)+len(doc.Payload)+signatureSize(doc.Signature))
	buf, canonical, pub, sig, err := appendWellFormed(append(buf, envelopePrefix...), doc)
	if err != nil {
		return nil, nil, err
	}
	if len(sig) != signatureBytes {
		return nil, nil, Errorf(CodeInvalidField, "signature.sig must be %d bytes, got %d", signatureBytes, len(sig))
	}
	var p MessagePayload
	remote, err := s.checkMessagePayload(canonical, &p, true)
	if err != nil {
		return nil, nil, err
	}
	from := p.From
	if remote {
		if from, err = s.localSender(p.From); err != nil {
			return nil, nil, err
		}
	} else if err := checkHandleSyntax(p.To); err != nil {
		return nil, nil, Errorf(CodeUnknownRecipient, "no user %q", p.To)
	}
	if from != sender.Handle {
		return nil, nil, Errorf(CodeInvalidField, "from is %q; a group send of %s carries only its messages", p.From, sender.Handle)
	}
	if !keyAuthorized(sender, doc.Signature.Alg, pub) && !(*deviceKeys).Authorizes(doc.Signature.Alg, pub) {
		// Resolved (and refreshed on a miss) once per batch.
		if *resolved {
			return nil, nil, Errorf(CodeKeyNotAuthorized, "the signing key is not authorized for %q", p.From)
		}
		var ok bool
		*deviceKeys, ok, err = s.deviceKeysHolding(ctx, sender, func(d *KeyDocument) bool { return d.Authorizes(doc.Signature.Alg, pub) })
		if err != nil {
			return nil, nil, err
		}
		*resolved = true
		if !ok {
			return nil, nil, Errorf(CodeKeyNotAuthorized, "the signing key is not authorized for %q", p.From)
		}
	}
	msg, err := appendEnvelopeSignature(buf, doc.Signature)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding envelope: %w", err)
	}
	if remote {
		return nil, outboundDoc(from, &p, msg), nil
	}
	return &Envelope{Recipient: p.To, Sender: p.From, ID: p.ID, Message: msg, Blobs: p.Blobs, AcceptedAt: time.Now()}, nil, nil
}

// signatureBytes is the size of a signature of every suite (ed25519,
// bip340).
const signatureBytes = 64
