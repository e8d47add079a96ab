package server

import (
	"context"
	"time"
)

// Store keeps users, envelopes and the anti-replay state. server/sqlite
// implements it for one replica, server/jsstore on NATS JetStream for any
// number of them.
//
// Implementations return *Error values for the outcomes a client can act on
// (handle_taken, primary_id_taken, unknown_handle, message_id_conflict,
// inbox_full) and wrapped plain errors for everything else.
type Store interface {
	// CreateUser registers u atomically: exactly one of two concurrent
	// registrations of a handle or primary_id succeeds.
	CreateUser(ctx context.Context, u *User) error
	// UserByHandle returns the user or an unknown_handle *Error.
	UserByHandle(ctx context.Context, handle string) (*User, error)

	// AppendMessage durably stores e for e.Recipient with the next seq of
	// that inbox, which strictly increases (gaps allowed), and sets e.Seq and
	// e.ReceivedAt. If (e.Sender, e.ID) was stored before with the same
	// message, it sets the original seq and reports duplicate; with a
	// different message it returns message_id_conflict. An inbox that would
	// hold more than limits allow refuses with inbox_full. It returns only
	// once the envelope is on stable storage.
	// An error does not prove the envelope was not stored (the caller's ctx
	// may end after the commit began): a retry with the same (Sender, ID)
	// then answers the original seq. Idempotency keys are kept at least 15
	// minutes, three times the clock-skew window in which a signed message
	// is accepted at all.
	AppendMessage(ctx context.Context, e *Envelope, limits InboxLimits) (duplicate bool, err error)
	// AppendMessages stores envs, each in its Recipient's inbox as
	// AppendMessage would, atomically: every one of them or, when one is
	// refused, none. Their (Sender, ID) are distinct. An envelope whose
	// (Sender, ID) was stored before with the same message gets the
	// original seq and is stored again nowhere (dups[i]); one with a
	// different message refuses the whole call with message_id_conflict.
	// A refusal about one envelope carries its index (server.AtIndex).
	AppendMessages(ctx context.Context, envs []*Envelope, limits InboxLimits) (dups []bool, err error)
	// Messages returns up to limit envelopes of recipient with seq > since,
	// in seq order; none for an unknown recipient. It stops after the
	// envelope that brings their messages to maxBytes or more (0: no byte
	// bound), so a page holds at most maxBytes plus one message: a reader
	// never makes the store load more than that.
	Messages(ctx context.Context, recipient string, since uint64, limit, maxBytes int) ([]*Envelope, error)
	// Ack moves device's acknowledgement point of recipient's inbox to
	// upto (never back), forgets the points of devices not in devices (the
	// keys authorized for recipient now; nil: forget none), and deletes the
	// envelopes with seq at or below every remaining point. It reports how
	// many it deleted (0 for an unknown recipient). Devices are
	// DeviceID strings.
	Ack(ctx context.Context, recipient, device string, upto uint64, devices []string) (int, error)

	// UseOnce records a request signature's digest until expires and
	// reports false if it was already recorded (a replay). A recorded
	// digest counts as expired only if its expiry is before checked, the
	// time the request's freshness was checked: a store that runs the
	// write later (a stalled writer) must not take a live digest for an
	// expired one.
	UseOnce(ctx context.Context, digest []byte, expires, checked time.Time) (bool, error)

	// SavePushSubscription stores sub, replacing the handle's subscription
	// with the same endpoint; past max subscriptions per handle the oldest
	// are deleted.
	SavePushSubscription(ctx context.Context, sub *PushSubscription, max int) error
	// DeletePushSubscription deletes handle's subscription at endpoint and
	// reports whether there was one.
	DeletePushSubscription(ctx context.Context, handle, endpoint string) (bool, error)
	// PushSubscriptions returns handle's subscriptions, oldest first.
	PushSubscriptions(ctx context.Context, handle string) ([]*PushSubscription, error)

	// BlobStore keeps attachment blobs; AppendMessage references those
	// e.Blobs names (unknown_blob when one is not the sender's), and the
	// reference goes with the envelope.
	BlobStore

	// KeyCheckpoints keep the highest key document verified per identity,
	// shared by every replica on the store.
	KeyCheckpoints

	// LinkChannels keep the device-linking mailboxes, shared by every
	// replica on the store.
	LinkChannels

	// Prune deletes envelopes received before olderThan and expired
	// anti-replay and idempotency entries and link channels.
	Prune(ctx context.Context, now, olderThan time.Time) (PruneResult, error)

	// Ping fails while the store cannot serve.
	Ping(ctx context.Context) error
	Close() error
}

// InboxLimits bound what one inbox holds unacknowledged; an append past
// either is refused with inbox_full. Zero means no limit.
type InboxLimits struct {
	MaxPending      int   // envelopes
	MaxPendingBytes int64 // bytes of their messages
}

// PruneResult says what a Prune removed.
type PruneResult struct {
	Envelopes int
}

// Broker relays stored envelopes to the streams open for their recipient.
// server/membus implements it in process, server/natsbus across replicas.
type Broker interface {
	// Publish hands e to every subscription of e.Recipient without blocking:
	// a subscription whose buffer is full is closed instead (its reader
	// resumes from the store).
	Publish(ctx context.Context, e *Envelope) error
	// Subscribe follows recipient's new envelopes. buffer bounds what may
	// wait unread.
	Subscribe(ctx context.Context, recipient string, buffer int) (Subscription, error)
	// PublishTyping hands t to every subscription of t.Recipient, on every
	// replica, without blocking and without storing it: a subscription
	// whose typing buffer is full misses it and stays open.
	PublishTyping(ctx context.Context, t *Typing) error
}

// Subscription is one stream's view of a recipient's new envelopes.
type Subscription interface {
	// C yields envelopes in publish order; it is closed when the
	// subscription is dropped for being too slow, or after Close.
	C() <-chan *Envelope
	// Typing yields typing events, at most TypingBuffer waiting; it is
	// never closed (select on it together with C).
	Typing() <-chan *Typing
	Close()
}
