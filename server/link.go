package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"kez.lat/chat/server/signing"
)

// Link channel bounds (docs/protocol.md, "POST /v1/link/{handle}").
const (
	// LinkTTL is how long a link channel lives after it is opened.
	LinkTTL = 10 * time.Minute
	// MaxLinksPerHandle is how many unexpired channels one handle holds.
	MaxLinksPerHandle = 2
	// MaxLinkRequest and MaxLinkResponse bound a slot's decoded data.
	MaxLinkRequest  = 8 << 10
	MaxLinkResponse = 64 << 10
	// MaxLinkWait is the longest a read waits for its slot to be written.
	MaxLinkWait = 25 * time.Second
	// linkChannelLen is the length of a channel id: base64url of 32 bytes.
	linkChannelLen = 43
	// linkPollInterval is how often a waiting read looks at the store, for
	// a write through another replica; a write through this one wakes it
	// at once.
	linkPollInterval = time.Second
)

// LinkSlot names one of a channel's two write-once slots.
type LinkSlot string

const (
	LinkRequest  LinkSlot = "request"  // written by the new device, no auth
	LinkResponse LinkSlot = "response" // written by the handle that opened the channel
)

// ParseLinkSlot returns the slot named s, or false.
func ParseLinkSlot(s string) (LinkSlot, bool) {
	switch LinkSlot(s) {
	case LinkRequest, LinkResponse:
		return LinkSlot(s), true
	}
	return "", false
}

// maxData is the most bytes slot holds.
func (slot LinkSlot) maxData() int {
	if slot == LinkRequest {
		return MaxLinkRequest
	}
	return MaxLinkResponse
}

// Link is a device-linking mailbox: a channel one handle opened, with its
// two slots.
type Link struct {
	Channel string
	Handle  string // who opened it
	// Expires is when the channel stops answering (Unix seconds): at or
	// after it the channel is unknown_link.
	Expires  time.Time
	Request  []byte // nil until written
	Response []byte // nil until written
}

// Data is what slot holds, nil while it is not written.
func (l *Link) Data(slot LinkSlot) []byte {
	if slot == LinkRequest {
		return l.Request
	}
	return l.Response
}

// Expired reports whether l no longer answers at now.
func (l *Link) Expired(now time.Time) bool { return now.Unix() >= l.Expires.Unix() }

// LinkChannels keep link channels where every replica reads them. Expiry
// is judged against the now passed in, so the Service's clock decides it;
// Prune deletes expired channels.
type LinkChannels interface {
	// OpenLink stores l with both slots empty, atomically refusing
	// link_exists when a channel l.Channel is open at now, and
	// too_many_links when l.Handle has max channels open at now. An
	// expired channel of that id is replaced.
	OpenLink(ctx context.Context, l *Link, now time.Time, max int) error
	// WriteLink writes data into slot once: unknown_link when no channel
	// is open at now, link_used when the slot holds data already; of two
	// concurrent writes exactly one succeeds.
	WriteLink(ctx context.Context, channel string, slot LinkSlot, data []byte, now time.Time) error
	// Link returns the channel, or unknown_link when none is open at now.
	Link(ctx context.Context, channel string, now time.Time) (*Link, error)
}

// CheckLinkChannel refuses a channel id that is not 43 base64url
// characters decoding to 32 bytes.
func CheckLinkChannel(channel string) error {
	if len(channel) != linkChannelLen {
		return Errorf(CodeInvalidField, "a link channel is %d base64url characters", linkChannelLen)
	}
	if b, err := signing.DecodeB64(channel); err != nil || len(b) != 32 {
		return Errorf(CodeInvalidField, "a link channel is the base64url of 32 bytes")
	}
	return nil
}

// LinkData is the body of a slot write and of a read's answer.
type LinkData struct {
	Data string `json:"data"`
}

// OpenLink opens channel for handle (who authenticated) for LinkTTL.
func (s *Service) OpenLink(ctx context.Context, handle, channel string) (*Link, error) {
	if err := CheckLinkChannel(channel); err != nil {
		return nil, err
	}
	now := s.now()
	l := &Link{Channel: channel, Handle: handle, Expires: time.Unix(now.Add(LinkTTL).Unix(), 0)}
	if err := s.store.OpenLink(ctx, l, now, MaxLinksPerHandle); err != nil {
		return nil, fmt.Errorf("opening link channel for %s: %w", handle, err)
	}
	return l, nil
}

// Link returns channel while it is open: the response slot's writer must
// be the handle that opened it.
func (s *Service) Link(ctx context.Context, channel string) (*Link, error) {
	if err := CheckLinkChannel(channel); err != nil {
		return nil, err
	}
	l, err := s.store.Link(ctx, channel, s.now())
	if err != nil {
		return nil, fmt.Errorf("reading link channel: %w", err)
	}
	return l, nil
}

// WriteLink writes body's data into slot of channel, once. The caller has
// authenticated the channel's opener for the response slot.
func (s *Service) WriteLink(ctx context.Context, channel string, slot LinkSlot, body *LinkData) error {
	if err := CheckLinkChannel(channel); err != nil {
		return err
	}
	data, err := signing.DecodeB64(body.Data)
	switch {
	case err != nil:
		return Errorf(CodeInvalidEncoding, "data is not base64url without padding")
	case len(data) == 0:
		return Errorf(CodeInvalidField, "data is empty")
	case len(data) > slot.maxData():
		return Errorf(CodeInvalidField, "data is %d bytes; the %s slot holds at most %d", len(data), slot, slot.maxData())
	}
	if err := s.store.WriteLink(ctx, channel, slot, data, s.now()); err != nil {
		return fmt.Errorf("writing the %s slot of a link channel: %w", slot, err)
	}
	s.links.wake(channel)
	return nil
}

// ReadLink returns what slot of channel holds, nil while it is not
// written; with wait > 0 it waits up to wait (at most MaxLinkWait) for a
// write, and returns nil when ctx ends first.
func (s *Service) ReadLink(ctx context.Context, channel string, slot LinkSlot, wait time.Duration) ([]byte, error) {
	if err := CheckLinkChannel(channel); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(min(wait, MaxLinkWait))
	for {
		// Registered before the read, so that a write between the read
		// and the wait still wakes it.
		woken, release := s.links.wait(channel)
		l, err := s.store.Link(ctx, channel, s.now())
		if err != nil {
			release()
			if ctx.Err() != nil {
				return nil, nil
			}
			return nil, fmt.Errorf("reading link channel: %w", err)
		}
		left := time.Until(deadline)
		if d := l.Data(slot); d != nil || left <= 0 {
			release()
			return d, nil
		}
		t := time.NewTimer(min(left, linkPollInterval))
		select {
		case <-woken:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		release()
		if ctx.Err() != nil {
			return nil, nil
		}
	}
}

// linkWaiters wakes the reads waiting on a channel when this replica
// writes it. Entries live only while someone waits.
type linkWaiters struct {
	mu sync.Mutex
	m  map[string]*linkWaiter
}

type linkWaiter struct {
	woken   chan struct{}
	waiters int
}

// wait returns a channel closed at the next wake of channel, and the
// release the waiter must call once done with it.
func (lw *linkWaiters) wait(channel string) (<-chan struct{}, func()) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.m == nil {
		lw.m = make(map[string]*linkWaiter)
	}
	w := lw.m[channel]
	if w == nil {
		w = &linkWaiter{woken: make(chan struct{})}
		lw.m[channel] = w
	}
	w.waiters++
	return w.woken, func() {
		lw.mu.Lock()
		defer lw.mu.Unlock()
		if w.waiters--; w.waiters == 0 && lw.m[channel] == w {
			delete(lw.m, channel)
		}
	}
}

// wake wakes every read waiting on channel.
func (lw *linkWaiters) wake(channel string) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if w := lw.m[channel]; w != nil {
		close(w.woken)
		delete(lw.m, channel)
	}
}
