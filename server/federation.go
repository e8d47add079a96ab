package server

import (
	"context"
	"crypto/subtle"
	"time"
)

// Federation's constants (docs/protocol.md, "Federation").
const (
	// FederationWindow is how long after its ts a document for another
	// server is retried by the sender's server and accepted by the
	// recipient's: a queued message stays acceptable while it waits.
	FederationWindow = 48 * time.Hour
	// RemoteIDWindow is how long a remote sender's (from, id) answers a
	// retry with its first receipt: the window and the clock skew, twice.
	RemoteIDWindow = FederationWindow + 2*ClockSkew
	// OutboxKeep is how long delivered and failed outbox entries stay
	// visible to their sender.
	OutboxKeep = 24 * time.Hour
	// MaxPrivacyBlocked and MaxPrivacyKnown bound a person's lists.
	MaxPrivacyBlocked = 1000
	MaxPrivacyKnown   = 5000
)

// OutboxLimits bound what one sending handle may have queued for other
// servers; past either, outbox_full.
type OutboxLimits struct {
	MaxDocs  int
	MaxBytes int64
}

// DefaultOutboxLimits are the protocol's: 10,000 documents and 64 MiB.
func DefaultOutboxLimits() OutboxLimits { return OutboxLimits{MaxDocs: 10000, MaxBytes: 64 << 20} }

// OutboundDoc is one signed document for a person on another server,
// queued by its sender's server.
type OutboundDoc struct {
	Sender    string // the local handle
	ID        string
	Domain    string // the recipient's server
	Recipient string // the recipient's handle there
	// Message is the stored document, as an envelope's.
	Message []byte
	// Blobs are the sender's blobs the document names: the store keeps
	// them until the retention after their upload.
	Blobs []string
	// TS is the payload's ts: delivery gives up at TS + FederationWindow.
	TS time.Time
}

// Delivery is one request's worth of queued documents: those of one send
// to one server, delivered together, and in queue order per sender and
// server.
type Delivery struct {
	Unit     int64
	Domain   string
	Sender   string
	Attempts int
	// Units and Messages are what one request carries: Unit and the units
	// queued behind it for the same sender and domain that fit with it
	// (DeliveryMessages), their documents in queue order.
	Units    []int64
	Messages [][]byte
	// Expires is when the oldest of them leaves the window.
	Expires time.Time
}

// Outbox states.
const (
	OutboxQueued    = "queued"
	OutboxDelivered = "delivered"
	OutboxFailed    = "failed"
)

// DeliveryResult is what an attempt came to: delivered, failed for good,
// or queued again until NextAt.
type DeliveryResult struct {
	State   string
	At      time.Time
	NextAt  time.Time // when State is queued
	Code    string    // the last attempt's error, if any
	Message string
}

// OutboxEntry is one queued document as its sender sees it.
type OutboxEntry struct {
	To        string       `json:"to"`
	ID        string       `json:"id"`
	State     string       `json:"state"`
	Attempts  int          `json:"attempts"`
	QueuedAt  int64        `json:"queued_at"`
	UpdatedAt int64        `json:"updated_at"`
	Error     *OutboxError `json:"error,omitempty"`
}

// OutboxError says why an entry failed, or why its last attempt did.
type OutboxError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// RemotePin is the first identity a server accepted for an address on
// another server: a later record must name the same primary key.
type RemotePin struct {
	Address   string
	PrimaryID string
	Alg       string
	Key       []byte
}

// Privacy is who may write to a person from other servers
// (PUT /v1/privacy/{handle}).
type Privacy struct {
	// Strangers is "accept" or "refuse".
	Strangers string   `json:"strangers"`
	Known     []string `json:"known"`
	Blocked   []string `json:"blocked"`
}

// Privacy's strangers settings.
const (
	StrangersAccept = "accept"
	StrangersRefuse = "refuse"
)

// FederationStore keeps what federation needs durably: the outbox, the
// pins of remote identities and people's privacy settings. server/sqlite
// implements it.
type FederationStore interface {
	// Enqueue stores docs, all of one sender, in the outbox: one unit per
	// destination domain, in the order of the docs. A document whose
	// (Sender, ID) is queued with the same message reports dups[i] and is
	// queued again nowhere; with another message the call is refused
	// with message_id_conflict. Past limits, outbox_full; a blob not the
	// sender's, unknown_blob. Refusals carry the document's index.
	Enqueue(ctx context.Context, docs []*OutboundDoc, limits OutboxLimits) (dups []bool, err error)
	// DueDeliveries returns, for each sender and domain with queued
	// units, the oldest one if its next attempt is due at now; at most
	// limit of them, oldest first, without their Messages.
	DueDeliveries(ctx context.Context, now time.Time, limit int) ([]*Delivery, error)
	// DeliveryMessages fills d's Units and Messages: d.Unit's documents
	// and, unless alone, those of the whole units queued behind it for the
	// same sender and domain while they total at most maxDocs documents and
	// maxBytes bytes.
	DeliveryMessages(ctx context.Context, d *Delivery, alone bool, maxDocs int, maxBytes int64) error
	// FinishDelivery records an attempt's result for units.
	FinishDelivery(ctx context.Context, units []int64, r DeliveryResult) error
	// OutboxEntries returns sender's entries, newest first, at most limit.
	OutboxEntries(ctx context.Context, sender string, limit int) ([]*OutboxEntry, error)
	// PinRemote records pin unless its address has one, and returns the
	// one recorded.
	PinRemote(ctx context.Context, pin *RemotePin) (*RemotePin, error)
	// Unpin forgets address's pin and reports whether there was one: an
	// operator's decision (kezchat unpin) once a person's new identity
	// was checked out of band; the next record accepted is pinned.
	Unpin(ctx context.Context, address string) (bool, error)
	// Privacy returns handle's setting; the default (accept, no lists)
	// when it set none.
	Privacy(ctx context.Context, handle string) (*Privacy, error)
	// SavePrivacy replaces handle's setting.
	SavePrivacy(ctx context.Context, handle string, p *Privacy) error
}

// RemoteIdentity is what this server verified of a person on another
// server: the primary key its domain names (held to the pin) and the
// latest key document that key signed.
type RemoteIdentity struct {
	Address   Address
	PrimaryID string
	Alg       string
	Key       []byte
	Keys      *KeyDocument // nil when the identity published none
}

// Authorizes reports whether (alg, key) speaks for the identity.
func (r *RemoteIdentity) Authorizes(alg string, key []byte) bool {
	if alg == r.Alg && subtle.ConstantTimeCompare(key, r.Key) == 1 {
		return true
	}
	return r.Keys.Authorizes(alg, key)
}

// RemoteResolver learns remote senders' keys from their own domains
// (docs/protocol.md, "The sender's keys, as the recipient's server learns
// them"). server/federation implements it.
type RemoteResolver interface {
	// ResolveRemote returns addr's verified identity. refresh asks the
	// domain again rather than answer from the cache (a key the cached
	// identity lacks), at most once a second per address.
	ResolveRemote(ctx context.Context, addr Address, refresh bool) (*RemoteIdentity, error)
}

// Federation is a Service's federation: nil turns it off.
type Federation struct {
	Store    FederationStore
	Resolver RemoteResolver
	Domains  DomainPolicy
	// Loopback admits the test domains 127.0.0.1:<port> and
	// localhost:<port> (--federation-insecure-loopback).
	Loopback bool
	// Outbox bounds each sending handle's queue.
	Outbox OutboxLimits
	// Limits on what comes from other servers (nil: none): requests per
	// remote domain and per remote sender, bytes a day per remote sender
	// and per remote domain.
	DomainLimiter, SenderLimiter *RateLimiter
	SenderQuota, DomainQuota     *RateLimiter
	// Queued, when set, is told that units were queued (it wakes the
	// courier); it must not block.
	Queued func()
	// ForwardTyping, when set, hands a typing document to domain's server
	// in the background and reports whether it took it (false: dropped,
	// too many in flight); it must not block.
	ForwardTyping func(domain string, doc []byte) bool
}
