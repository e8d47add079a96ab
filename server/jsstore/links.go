package jsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"kez.lat/chat/server"
	"kez.lat/chat/server/natsbus"
)

// Link channels live in the links bucket: key the channel (base64url, so
// never holding a '.'), value a linkRecord; and key "h.<token>", the
// channels its handle opened, for the per-handle cap. Every change is a
// compare-and-set at the revision read. The bucket's TTL (server.LinkTTL)
// deletes what expired; a channel's own expiry, against the Service's
// clock, decides whether it still answers.

// linkRecord is one channel.
type linkRecord struct {
	Handle   string `json:"handle"`
	Expires  int64  `json:"expires"`
	Request  []byte `json:"request,omitempty"`
	Response []byte `json:"response,omitempty"`
}

// heldLink is one entry of a handle's list.
type heldLink struct {
	Channel string `json:"channel"`
	Expires int64  `json:"expires"`
}

func heldKey(handle string) string { return "h." + natsbus.Token(handle) }

var errUnknownLink = server.Errorf(server.CodeUnknownLink, "no such link channel, or it expired")

// casConflict reports whether err is a lost compare-and-set: another
// replica wrote the key meanwhile.
func casConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// maxCASAttempts bounds the retries of one compare-and-set loop.
const maxCASAttempts = 20

// OpenLink reserves a place in l.Handle's list (refusing past max), then
// creates the channel's key (refusing an open one); a refused create
// gives the place back.
func (s *Store) OpenLink(ctx context.Context, l *server.Link, now time.Time, max int) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	err := s.updateHeld(ctx, l.Handle, func(held []heldLink) ([]heldLink, error) {
		held = slices.DeleteFunc(held, func(h heldLink) bool { return h.Expires <= now.Unix() })
		if slices.ContainsFunc(held, func(h heldLink) bool { return h.Channel == l.Channel }) {
			return nil, server.Errorf(server.CodeLinkExists, "that link channel is open already")
		}
		if len(held) >= max {
			return nil, &server.Error{Code: server.CodeTooManyLinks, RetryAfter: time.Minute,
				Message: fmt.Sprintf("%s has %d link channels open", l.Handle, len(held))}
		}
		return append(held, heldLink{Channel: l.Channel, Expires: l.Expires.Unix()}), nil
	})
	if err != nil {
		return fmt.Errorf("opening link channel for %s: %w", l.Handle, err)
	}
	if err := s.createLink(ctx, l, now); err != nil {
		if uerr := s.updateHeld(ctx, l.Handle, func(held []heldLink) ([]heldLink, error) {
			return slices.DeleteFunc(held, func(h heldLink) bool { return h.Channel == l.Channel }), nil
		}); uerr != nil {
			// The place frees itself when the entry expires.
			s.log.Warn("giving back a link channel place", "handle", l.Handle, "err", uerr)
		}
		return fmt.Errorf("opening link channel for %s: %w", l.Handle, err)
	}
	return nil
}

// createLink creates the channel's key, or replaces an expired one.
func (s *Store) createLink(ctx context.Context, l *server.Link, now time.Time) error {
	val, err := json.Marshal(linkRecord{Handle: l.Handle, Expires: l.Expires.Unix()})
	if err != nil {
		return fmt.Errorf("encoding link channel: %w", err)
	}
	exists := server.Errorf(server.CodeLinkExists, "that link channel is open already")
	e, err := s.links.Get(ctx, l.Channel)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		_, err = s.links.Create(ctx, l.Channel, val)
	case err != nil:
		return fmt.Errorf("looking up link channel: %w", err)
	default:
		var r linkRecord
		if json.Unmarshal(e.Value(), &r) == nil && r.Expires > now.Unix() {
			return exists
		}
		_, err = s.links.Update(ctx, l.Channel, val, e.Revision())
	}
	switch {
	case err == nil:
		return nil
	case casConflict(err):
		return exists // opened by a concurrent request
	default:
		return fmt.Errorf("creating link channel: %w", err)
	}
}

// updateHeld applies change to handle's list of channels by
// compare-and-set; an error from change is returned as is.
func (s *Store) updateHeld(ctx context.Context, handle string, change func([]heldLink) ([]heldLink, error)) error {
	key := heldKey(handle)
	for attempt := 0; ; attempt++ {
		var held []heldLink
		var rev uint64
		e, err := s.links.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &held); err != nil {
				return fmt.Errorf("decoding the link channels of %s: %w", handle, err)
			}
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return fmt.Errorf("reading the link channels of %s: %w", handle, err)
		}
		held, err = change(held)
		if err != nil {
			return err
		}
		val, _ := json.Marshal(held)
		if rev == 0 {
			_, err = s.links.Create(ctx, key, val)
		} else {
			_, err = s.links.Update(ctx, key, val, rev)
		}
		switch {
		case err == nil:
			return nil
		case !casConflict(err) || attempt >= maxCASAttempts:
			return fmt.Errorf("writing the link channels of %s: %w", handle, err)
		}
	}
}

// getLink reads channel and its revision; unknown_link when it is
// missing or expired at now.
func (s *Store) getLink(ctx context.Context, channel string, now time.Time) (*linkRecord, uint64, error) {
	e, err := s.links.Get(ctx, channel)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, 0, errUnknownLink
	case err != nil:
		return nil, 0, fmt.Errorf("reading link channel: %w", err)
	}
	var r linkRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("decoding link channel: %w", err)
	}
	if r.Expires <= now.Unix() {
		return nil, 0, errUnknownLink
	}
	return &r, e.Revision(), nil
}

// WriteLink sets slot by compare-and-set: of two concurrent writes, the
// second reads the first's and answers link_used.
func (s *Store) WriteLink(ctx context.Context, channel string, slot server.LinkSlot, data []byte, now time.Time) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		r, rev, err := s.getLink(ctx, channel, now)
		if err != nil {
			return fmt.Errorf("writing the %s slot: %w", slot, err)
		}
		dst := &r.Request
		if slot == server.LinkResponse {
			dst = &r.Response
		}
		if *dst != nil {
			return server.Errorf(server.CodeLinkUsed, "the %s slot was written already", slot)
		}
		*dst = data
		val, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encoding link channel: %w", err)
		}
		_, err = s.links.Update(ctx, channel, val, rev)
		switch {
		case err == nil:
			return nil
		case !casConflict(err) || attempt >= maxCASAttempts:
			return fmt.Errorf("writing the %s slot: %w", slot, err)
		}
	}
}

// Link reads channel.
func (s *Store) Link(ctx context.Context, channel string, now time.Time) (*server.Link, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	r, _, err := s.getLink(ctx, channel, now)
	if err != nil {
		return nil, err
	}
	return &server.Link{Channel: channel, Handle: r.Handle, Expires: time.Unix(r.Expires, 0),
		Request: r.Request, Response: r.Response}, nil
}
