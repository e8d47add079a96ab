// Package membus implements server.Broker inside one process: a map from
// recipient to the subscriptions of the streams open on this replica.
package membus

import (
	"context"
	"sync"

	"kez.lat/chat/server"
)

// Bus is an in-process server.Broker.
type Bus struct {
	mu   sync.Mutex
	subs map[string]map[*subscription]struct{}
}

var _ server.Broker = (*Bus)(nil)

// New returns an empty Bus.
func New() *Bus {
	return &Bus{subs: make(map[string]map[*subscription]struct{})}
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

// Subscribe follows recipient's envelopes with room for buffer unread ones.
func (b *Bus) Subscribe(_ context.Context, recipient string, buffer int) (server.Subscription, error) {
	sub := &subscription{bus: b, recipient: recipient, ch: make(chan *server.Envelope, buffer)}
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.subs[recipient]
	if set == nil {
		set = make(map[*subscription]struct{})
		b.subs[recipient] = set
	}
	set[sub] = struct{}{}
	return sub, nil
}

// removeLocked closes sub's channel once and forgets it; b.mu is held.
func (b *Bus) removeLocked(sub *subscription) {
	set := b.subs[sub.recipient]
	if _, ok := set[sub]; !ok {
		return
	}
	delete(set, sub)
	if len(set) == 0 {
		delete(b.subs, sub.recipient)
	}
	close(sub.ch)
}

type subscription struct {
	bus       *Bus
	recipient string
	ch        chan *server.Envelope
}

func (s *subscription) C() <-chan *server.Envelope { return s.ch }

func (s *subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.bus.removeLocked(s)
}
