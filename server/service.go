package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"kez.lat/chat/server/signing"
)

// Config holds the policy a Service enforces.
type Config struct {
	// Domain is this server's name; every signed payload and request
	// string must name it.
	Domain string
	// Retention is how long an unacknowledged envelope is kept.
	Retention time.Duration
	// MaxPending is how many unacknowledged envelopes one inbox may hold,
	// MaxPendingBytes how many bytes of messages.
	MaxPending      int
	MaxPendingBytes int64
	// MaxStreamsPerHandle caps the streams open at once for one handle.
	MaxStreamsPerHandle int
	// StreamBuffer is how many live envelopes may wait for one stream
	// before it is dropped as too slow.
	StreamBuffer int
	// MaxPushSubscriptions is how many push subscriptions one handle may
	// have; past it the oldest is evicted.
	MaxPushSubscriptions int
	// MaxPageBytes bounds the messages one inbox page holds, and one
	// stream catch-up read when below the stream's own 256 KiB (the last
	// one may cross it): what a reader costs the server in memory is
	// bytes, not a count of envelopes.
	MaxPageBytes int
	// MaxBlobBytes is the largest attachment blob (--max-blob-bytes).
	MaxBlobBytes int64
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// DefaultConfig returns the defaults documented in `kezchat server --help`.
func DefaultConfig() Config {
	return Config{
		Domain:               "localhost",
		Retention:            30 * 24 * time.Hour,
		MaxPending:           10000,
		MaxPendingBytes:      64 << 20,
		MaxStreamsPerHandle:  8,
		StreamBuffer:         256,
		MaxPushSubscriptions: 10,
		MaxPageBytes:         DefaultPageBytes,
		MaxBlobBytes:         DefaultMaxBlobBytes,
	}
}

// Service enforces the protocol: it verifies every signed document and
// request, and moves envelopes between the Store and the Broker.
type Service struct {
	cfg    Config
	store  Store
	broker Broker
	log    *slog.Logger

	// SendLimiter limits messages per sending handle (nil: no limit). It is
	// consulted only after the signature verified, so nobody can spend
	// another person's budget.
	SendLimiter *RateLimiter
	// SenderQuota limits the bytes of messages each sending handle stores
	// (nil: none), a token a byte: a daily quota is a bucket of that many
	// bytes refilled over a day.
	SenderQuota *RateLimiter
	// TypingLimiter limits typing requests per sending handle (nil: no
	// limit), after their auth verified.
	TypingLimiter *RateLimiter
	// Pusher, when set, notifies recipients with no open stream; Endpoints
	// then decides which push endpoints may be subscribed.
	Pusher    Pusher
	Endpoints EndpointPolicy
	// Keys, when set, authorizes the device keys each identity publishes on
	// its sig-server besides its registered key.
	Keys KeyResolver
	// Fed, when set, federates: documents for other servers are queued
	// for them, and other servers' documents accepted (docs/protocol.md,
	// "Federation").
	Fed *Federation

	mu      sync.Mutex
	streams map[string]int // open streams per handle

	links linkWaiters

	openStreams    atomic.Int64
	messagesStored atomic.Uint64
}

// NewService returns a Service over store and broker.
func NewService(cfg Config, store Store, broker Broker, log *slog.Logger) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg, store: store, broker: broker, log: log, streams: make(map[string]int)}
}

// Domain is the server name this Service answers for.
func (s *Service) Domain() string { return s.cfg.Domain }

// OpenStreams is the number of streams open now.
func (s *Service) OpenStreams() int64 { return s.openStreams.Load() }

// MessagesStored counts envelopes stored since start (retries not counted).
func (s *Service) MessagesStored() uint64 { return s.messagesStored.Load() }

// Ready fails while the store cannot serve.
func (s *Service) Ready(ctx context.Context) error { return s.store.Ping(ctx) }

// Register verifies a signed kez.chat.register/v1 document and creates the
// user it describes.
func (s *Service) Register(ctx context.Context, doc signing.Signed) (*User, error) {
	canonical, pub, err := s.verifySigned(doc)
	if err != nil {
		return nil, err
	}
	var p RegisterPayload
	if err := DecodeJSON(canonical, &p); err != nil {
		return nil, err
	}
	if err := s.checkPayloadHeader(p.Type, TypeRegister, p.Server, p.TS); err != nil {
		return nil, err
	}
	if err := ValidateHandle(p.Handle); err != nil {
		return nil, err
	}
	if want := signing.PrimaryID(doc.Signature.Alg, pub); p.PrimaryID != want {
		return nil, Errorf(CodePrimaryIDMismatch, "primary_id does not derive from the signing key (expected %s)", want)
	}
	encKey, err := decodeKey("enc_key", p.EncKey)
	if err != nil {
		return nil, err
	}
	u := &User{
		Handle:    p.Handle,
		Server:    s.cfg.Domain,
		PrimaryID: p.PrimaryID,
		Alg:       doc.Signature.Alg,
		Key:       pub,
		EncKey:    encKey,
		CreatedAt: s.now(),
	}
	if err := s.store.CreateUser(ctx, u); err != nil {
		return nil, fmt.Errorf("registering %s: %w", p.Handle, err)
	}
	s.log.InfoContext(ctx, "registered", "handle", u.Handle, "primary_id", u.PrimaryID, "alg", u.Alg)
	return u, nil
}

// User returns the registered record of handle.
func (s *Service) User(ctx context.Context, handle string) (*User, error) {
	if err := checkHandleSyntax(handle); err != nil {
		return nil, Errorf(CodeUnknownHandle, "no user %q", handle)
	}
	return s.store.UserByHandle(ctx, handle)
}

// Record returns the public record of handle: the registered record with,
// when its identity has published key documents, the current device keys
// and encryption key. When those cannot be resolved now it is the
// registered record alone.
func (s *Service) Record(ctx context.Context, handle string) (*User, error) {
	u, err := s.User(ctx, handle)
	if err != nil || s.Keys == nil {
		return u, err
	}
	doc, err := s.Keys.ResolveKeys(ctx, u.PrimaryID)
	if err != nil {
		// The resolver logs the outage itself; this would repeat it per lookup.
		s.log.DebugContext(ctx, "serving a record without its device keys", "handle", handle, "err", err)
		return u, nil
	}
	if doc == nil {
		return u, nil
	}
	rec := *u
	rec.EncKey, rec.SigningKeys, rec.KeysVersion = doc.EncKey, doc.SigningKeys, doc.Version
	return &rec, nil
}

// deviceKeys returns u's latest key document, nil when there is none or no
// sig-server. Failing to learn it is unavailable: the request may be
// signed by a device key that cannot be checked now.
func (s *Service) deviceKeys(ctx context.Context, u *User) (*KeyDocument, error) {
	if s.Keys == nil {
		return nil, nil
	}
	doc, err := s.Keys.ResolveKeys(ctx, u.PrimaryID)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("resolving device keys of %s: %w", u.Handle, err)
		}
		s.log.WarnContext(ctx, "cannot resolve device keys", "handle", u.Handle, "err", err)
		return nil, &Error{Code: CodeUnavailable, Message: "the device keys of " + u.Handle + " cannot be checked now; retry later", RetryAfter: 5 * time.Second}
	}
	return doc, nil
}

// deviceKeysHolding returns u's key document and whether holds accepts it.
// When the cached document does not, it asks the sig-server again (at most
// once per identity per moment: KeyResolver.RefreshKeys): a device linked
// since the document was cached is accepted at once, not after the
// cache's TTL.
func (s *Service) deviceKeysHolding(ctx context.Context, u *User, holds func(*KeyDocument) bool) (*KeyDocument, bool, error) {
	doc, err := s.deviceKeys(ctx, u)
	if err != nil {
		return nil, false, err
	}
	// holds may verify a signature per key: called once per document.
	if holds(doc) {
		return doc, true, nil
	}
	if s.Keys == nil {
		return doc, false, nil
	}
	fresh, err := s.Keys.RefreshKeys(ctx, u.PrimaryID)
	if err != nil {
		// What was cached stands: the key is not in it.
		s.log.DebugContext(ctx, "refreshing device keys", "handle", u.Handle, "err", err)
		return doc, false, nil
	}
	return fresh, holds(fresh), nil
}

// Send verifies a signed kez.chat.message/v1 document from a registered
// sender, stores it durably in the recipient's inbox and relays it to the
// recipient's open streams. A retry of an accepted message answers the
// original receipt and reports it as replayed.
func (s *Service) Send(ctx context.Context, doc signing.Signed) (r Receipt, replayed bool, err error) {
	// The stored document is built in one buffer: the canonical payload is
	// written into it, and the signature appended after it.
	buf := make([]byte, 0, len(envelopePrefix)+len(doc.Payload)+signatureSize(doc.Signature))
	buf, canonical, pub, err := appendVerified(append(buf, envelopePrefix...), doc)
	if err != nil {
		return Receipt{}, false, err
	}
	var p MessagePayload
	remote, err := s.checkMessagePayload(canonical, &p, true)
	if err != nil {
		return Receipt{}, false, err
	}
	from := p.From
	if remote {
		// A document for another server names its sender by address.
		if from, err = s.localSender(p.From); err != nil {
			return Receipt{}, false, err
		}
	}
	sender, err := s.lookup(ctx, from, CodeUnknownSender)
	if err != nil {
		return Receipt{}, false, err
	}
	if !keyAuthorized(sender, doc.Signature.Alg, pub) {
		_, ok, err := s.deviceKeysHolding(ctx, sender, func(d *KeyDocument) bool { return d.Authorizes(doc.Signature.Alg, pub) })
		if err != nil {
			return Receipt{}, false, err
		}
		if !ok {
			return Receipt{}, false, Errorf(CodeKeyNotAuthorized, "the signing key is not authorized for %q", p.From)
		}
	}
	if ok, wait := s.SendLimiter.Allow(from); !ok {
		return Receipt{}, false, &Error{Code: CodeRateLimited, Message: "too many messages from " + from, RetryAfter: wait}
	}
	if !remote {
		if _, err := s.lookup(ctx, p.To, CodeUnknownRecipient); err != nil {
			return Receipt{}, false, err
		}
	}
	msg, err := appendEnvelopeSignature(buf, doc.Signature)
	if err != nil {
		return Receipt{}, false, fmt.Errorf("encoding envelope: %w", err)
	}
	// Spent before the append, so that concurrent sends cannot all pass;
	// given back when nothing was stored.
	size := float64(len(msg))
	if ok, wait := s.SenderQuota.AllowN(from, size); !ok {
		return Receipt{}, false, &Error{Code: CodeSenderQuota, RetryAfter: wait,
			Message: fmt.Sprintf("%s has stored its day's quota of message bytes; wait %s", from, wait.Round(time.Second))}
	}
	if remote {
		dup, err := s.queue(ctx, []*OutboundDoc{outboundDoc(from, &p, msg)})
		if err != nil || dup[0] {
			s.SenderQuota.Refund(from, size)
		}
		if err != nil {
			return Receipt{}, false, err
		}
		return queuedReceipt(&p), dup[0], nil
	}
	e := &Envelope{Recipient: p.To, Sender: p.From, ID: p.ID, Message: msg, Blobs: p.Blobs, AcceptedAt: time.Now()}
	dup, err := s.store.AppendMessage(ctx, e, InboxLimits{MaxPending: s.cfg.MaxPending, MaxPendingBytes: s.cfg.MaxPendingBytes})
	if err != nil || dup {
		s.SenderQuota.Refund(p.From, size)
	}
	if err != nil {
		return Receipt{}, false, fmt.Errorf("storing message %s from %s: %w", p.ID, p.From, err)
	}
	if !dup {
		s.messagesStored.Add(1)
		// The envelope is durable; a failed publish only delays it until the
		// recipient's next poll or stream resume.
		if err := s.broker.Publish(ctx, e); err != nil {
			s.log.WarnContext(ctx, "publishing envelope", "to", e.Recipient, "seq", e.Seq, "err", err)
		}
		s.notifyOffline(e)
	}
	return Receipt{To: p.To, Seq: e.Seq, ID: p.ID}, dup, nil
}

// checkMessagePayload decodes a canonical kez.chat.message/v1 payload into
// p and checks every field of it on its own: type, server, ts, id, ct.
// Single and group sends share it. With relay, a document for another
// server is accepted when this one federates with it (remote); its from
// and to are left to the caller.
func (s *Service) checkMessagePayload(canonical []byte, p *MessagePayload, relay bool) (remote bool, err error) {
	if err := decodeMessagePayload(canonical, p); err != nil {
		return false, err
	}
	if relay && p.Server != s.cfg.Domain {
		if err := s.checkRelayHeader(p); err != nil {
			return false, err
		}
		remote = true
	} else if err := s.checkPayloadHeader(p.Type, TypeMessage, p.Server, p.TS); err != nil {
		return false, err
	}
	return remote, checkMessageBody(p)
}

// checkMessageBody checks a message payload's id, ct and blobs.
func checkMessageBody(p *MessagePayload) error {
	if err := checkMessageID(p.ID); err != nil {
		return err
	}
	ct, err := signing.DecodeB64(p.CT)
	switch {
	case err != nil:
		return Errorf(CodeInvalidEncoding, "ct is not base64url without padding")
	case len(ct) == 0:
		return Errorf(CodeInvalidField, "ct is empty")
	case len(ct) > MaxCiphertext:
		return Errorf(CodeCiphertextTooLarge, "ct is %d bytes; at most %d are allowed", len(ct), MaxCiphertext)
	}
	return checkBlobIDs(p.Blobs)
}

// Inbox returns handle's envelopes with seq > since, at most limit, and the
// cursor for the next call.
func (s *Service) Inbox(ctx context.Context, handle string, since uint64, limit int) ([]*Envelope, uint64, error) {
	envs, err := s.store.Messages(ctx, handle, since, limit, s.cfg.MaxPageBytes)
	if err != nil {
		return nil, since, fmt.Errorf("reading inbox of %s: %w", handle, err)
	}
	next := since
	if len(envs) > 0 {
		next = envs[len(envs)-1].Seq
	}
	return envs, next, nil
}

// Ack moves the acknowledgement point of the device that signed sess to
// upto and deletes handle's envelopes that every device of handle has
// acknowledged (docs/protocol.md, DELETE /v1/inbox/{handle}).
func (s *Service) Ack(ctx context.Context, sess *Session, upto uint64) (int, error) {
	u := sess.User
	devices, err := s.authorizedDevices(ctx, u)
	if err != nil {
		return 0, err
	}
	n, err := s.store.Ack(ctx, u.Handle, DeviceID(sess.Alg, sess.Key), upto, devices)
	if err != nil {
		return 0, fmt.Errorf("acknowledging inbox of %s up to %d: %w", u.Handle, upto, err)
	}
	return n, nil
}

// authorizedDevices lists the keys that speak for u now, as DeviceIDs: its
// registered key and its published device keys (at most 1 +
// MaxSigningKeys). When the device keys cannot be learnt now it is nil,
// so that no device loses its acknowledgement point to an outage of the
// sig-server.
func (s *Service) authorizedDevices(ctx context.Context, u *User) ([]string, error) {
	devices := []string{DeviceID(u.Alg, u.Key)}
	if s.Keys == nil {
		return devices, nil
	}
	doc, err := s.Keys.ResolveKeys(ctx, u.PrimaryID)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("resolving device keys of %s: %w", u.Handle, ctx.Err())
		}
		s.log.WarnContext(ctx, "keeping every acknowledgement point: device keys cannot be resolved", "handle", u.Handle, "err", err)
		return nil, nil
	}
	if doc != nil {
		for _, k := range doc.SigningKeys {
			if id := DeviceID(k.Alg, k.Key); id != devices[0] {
				devices = append(devices, id)
			}
		}
	}
	return devices, nil
}

// Run prunes expired envelopes, anti-replay state and blobs until ctx ends.
func (s *Service) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.Prune(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Prune runs one round of Run: expired envelopes first, so that the blobs
// they named are released in the same round.
func (s *Service) Prune(ctx context.Context) {
	now := s.now()
	res, err := s.store.Prune(ctx, now, now.Add(-s.cfg.Retention))
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.ErrorContext(ctx, "pruning store", "err", err)
	case res.Envelopes > 0:
		s.log.InfoContext(ctx, "expired unacknowledged envelopes", "count", res.Envelopes)
	}
	n, err := s.store.PruneBlobs(ctx, now, now.Add(-BlobUnreferencedTTL), now.Add(-s.cfg.Retention))
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.ErrorContext(ctx, "pruning blobs", "err", err)
	case n > 0:
		s.log.InfoContext(ctx, "deleted blobs", "count", n)
	}
}

func (s *Service) now() time.Time { return s.cfg.Now() }

// lookup finds handle, reporting an unknown one with code.
func (s *Service) lookup(ctx context.Context, handle, code string) (*User, error) {
	if err := checkHandleSyntax(handle); err != nil {
		return nil, Errorf(code, "no user %q", handle)
	}
	u, err := s.store.UserByHandle(ctx, handle)
	if ErrorCode(err) == CodeUnknownHandle {
		return nil, Errorf(code, "no user %q on this server", handle)
	}
	return u, err
}

// verifySigned checks doc's signature over the JCS form of its payload and
// returns that canonical form and the raw public key.
func (s *Service) verifySigned(doc signing.Signed) (canonical, pub []byte, err error) {
	return verifySigned(doc)
}

func verifySigned(doc signing.Signed) (canonical, pub []byte, err error) {
	_, canonical, pub, err = appendVerified(make([]byte, 0, len(doc.Payload)), doc)
	return canonical, pub, err
}

// appendVerified is verifySigned writing the canonical payload to the end
// of dst; it returns the extended buffer and the canonical part of it.
func appendVerified(dst []byte, doc signing.Signed) (out, canonical, pub []byte, err error) {
	out, canonical, pub, sig, err := appendWellFormed(dst, doc)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := signing.Verify(doc.Signature.Alg, pub, canonical, sig); err != nil {
		return nil, nil, nil, Errorf(CodeBadSignature, "the signature does not verify over the payload")
	}
	return out, canonical, pub, nil
}

// appendWellFormed is appendVerified without the verification: the
// payload canonicalized onto dst, the suite known, the key and signature
// decoded.
func appendWellFormed(dst []byte, doc signing.Signed) (out, canonical, pub, sig []byte, err error) {
	if len(doc.Payload) == 0 || doc.Payload[0] != '{' {
		return nil, nil, nil, nil, Errorf(CodeInvalidField, "payload must be a JSON object")
	}
	out, err = signing.AppendCanonical(dst, doc.Payload)
	if err != nil {
		return nil, nil, nil, nil, Errorf(CodeInvalidJSON, "payload cannot be canonicalized: %v", err)
	}
	canonical = out[len(dst):]
	if _, err := signing.Lookup(doc.Signature.Alg); err != nil {
		return nil, nil, nil, nil, Errorf(CodeUnknownAlg, "signature.alg %q is not one of %v", doc.Signature.Alg, signing.Algorithms())
	}
	pub, err = decodeKey("signature.key", doc.Signature.Key)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	sig, err = signing.DecodeB64(doc.Signature.Sig)
	if err != nil {
		return nil, nil, nil, nil, Errorf(CodeInvalidEncoding, "signature.sig is not base64url without padding")
	}
	return out, canonical, pub, sig, nil
}

// checkPayloadHeader checks the fields every signed payload carries, so a
// signature of one kind, for another server, or from another time is never
// accepted.
func (s *Service) checkPayloadHeader(typ, wantType, server string, ts int64) error {
	if typ != wantType {
		return Errorf(CodeWrongType, "payload type must be %q, got %q", wantType, typ)
	}
	if server != s.cfg.Domain {
		return Errorf(CodeWrongServer, "payload is for server %q; this is %q", server, s.cfg.Domain)
	}
	if !s.fresh(ts) {
		return Errorf(CodeStaleTimestamp, "ts %d is more than %v from the server's clock", ts, ClockSkew)
	}
	return nil
}

func (s *Service) fresh(ts int64) bool {
	d := s.now().Sub(time.Unix(ts, 0))
	return d <= ClockSkew && d >= -ClockSkew
}

// keyAuthorized reports whether (alg, key) may speak for u.
func keyAuthorized(u *User, alg string, key []byte) bool {
	return alg == u.Alg && subtle.ConstantTimeCompare(key, u.Key) == 1
}

// decodeKey decodes a base64url 32-byte public key field.
func decodeKey(field, v string) ([]byte, error) {
	b, err := signing.DecodeB64(v)
	if err != nil {
		return nil, Errorf(CodeInvalidEncoding, "%s is not base64url without padding", field)
	}
	if len(b) != 32 {
		return nil, Errorf(CodeInvalidField, "%s must be 32 bytes, got %d", field, len(b))
	}
	return b, nil
}

// checkMessageID accepts 1 to 64 characters of A-Z a-z 0-9 _ - . :, enough
// for a UUID or a ULID and nothing that needs escaping anywhere.
func checkMessageID(id string) error {
	if len(id) == 0 || len(id) > 64 {
		return Errorf(CodeInvalidMessageID, "id must be 1 to 64 characters")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == ':') {
			return Errorf(CodeInvalidMessageID, "id may hold only A-Z a-z 0-9 _ - . :")
		}
	}
	return nil
}

var errStreamClosed = errors.New("stream closed")
