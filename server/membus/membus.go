// Package membus implements server.Broker inside one process: a map from
// recipient to the subscriptions of the streams open on this replica.
// natsbus builds on it for the streams on its own replica.
package membus

import (
	"context"
	"sync"

	"kez.lat/chat/server"
)

// Hooks let a broker built on a Bus follow which recipients have
// subscriptions (natsbus holds a NATS subscription for each). Both run with
// the Bus locked, so that they see first and last in order; they must not
// call back into the Bus.
type Hooks struct {
	// First runs before a recipient's first subscription is added; an
	// error refuses the subscription.
	First func(recipient string) error
	// Last runs once a recipient's last subscription is gone.
	Last func(recipient string)
}

// Bus is an in-process server.Broker.
type Bus struct {
	hooks Hooks

	mu   sync.Mutex
	subs map[string]map[*subscription]struct{}
}

var _ server.Broker = (*Bus)(nil)

// New returns an empty Bus.
func New() *Bus { return NewWithHooks(Hooks{}) }

// NewWithHooks returns an empty Bus that calls hooks.
func NewWithHooks(hooks Hooks) *Bus {
	return &Bus{hooks: hooks, subs: make(map[string]map[*subscription]struct{})}
}

// Publish offers e to every subscription of its recipient. One whose buffer
// is full is closed and removed rather than allowed to block the sender or
// grow; its stream resumes from the store.
func (b *Bus) Publish(_ context.Context, e *server.Envelope) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for sub := range b.subs[e.Recipient] {
		select {
		case sub.ch <- e:
		default:
			b.removeLocked(sub)
		}
	}
	return nil
}

// PublishTyping offers t to every subscription of its recipient. One
// whose typing buffer is full misses it: unlike an envelope, a typing
// event is not in the store, and it is worth nothing seconds later, so it
// neither waits nor ends the stream.
func (b *Bus) PublishTyping(_ context.Context, t *server.Typing) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for sub := range b.subs[t.Recipient] {
		select {
		case sub.typing <- t:
		default:
		}
	}
	return nil
}

// Subscribe follows recipient's envelopes with room for buffer unread ones,
// and its typing events with room for server.TypingBuffer.
func (b *Bus) Subscribe(_ context.Context, recipient string, buffer int) (server.Subscription, error) {
	sub := &subscription{bus: b, recipient: recipient, ch: make(chan *server.Envelope, buffer),
		typing: make(chan *server.Typing, server.TypingBuffer)}
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.subs[recipient]
	if set == nil {
		if b.hooks.First != nil {
			if err := b.hooks.First(recipient); err != nil {
				return nil, err
			}
		}
		set = make(map[*subscription]struct{})
		b.subs[recipient] = set
	}
	set[sub] = struct{}{}
	return sub, nil
}

// Drop closes every subscription of recipient: their streams resume from
// the store.
func (b *Bus) Drop(recipient string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for sub := range b.subs[recipient] {
		b.removeLocked(sub)
	}
}

// DropAll closes every subscription.
func (b *Bus) DropAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, set := range b.subs {
		for sub := range set {
			b.removeLocked(sub)
		}
	}
}

// removeLocked closes sub's channel once and forgets it; b.mu is held.
func (b *Bus) removeLocked(sub *subscription) {
	set := b.subs[sub.recipient]
	if _, ok := set[sub]; !ok {
		return
	}
	delete(set, sub)
	close(sub.ch)
	if len(set) == 0 {
		delete(b.subs, sub.recipient)
		if b.hooks.Last != nil {
			b.hooks.Last(sub.recipient)
		}
	}
}

type subscription struct {
	bus       *Bus
	recipient string
	ch        chan *server.Envelope
	typing    chan *server.Typing // never closed: C's closing ends a stream
}

func (s *subscription) C() <-chan *server.Envelope { return s.ch }

func (s *subscription) Typing() <-chan *server.Typing { return s.typing }

func (s *subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.bus.removeLocked(s)
}
