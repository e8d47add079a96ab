package server

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// catchUpPage is how many stored envelopes a stream reads at a time, as
// long as they stay within catchUpBytes (or the Service's MaxPageBytes,
// when lower).
const catchUpPage = 256

// catchUpBytes bounds the messages of one catch-up read: a stream whose
// client stops reading holds the rest of its page until it is closed, so
// the page is kept to a quarter of a poll's (more reads for a long
// catch-up, each still hundreds of envelopes of a usual size).
const catchUpBytes = 256 << 10

// Stream delivers a recipient's envelopes in seq order, with no gap and no
// duplicate: first what is stored after the resume point, then live ones.
//
// It subscribes before it reads the store. Envelopes are published only
// after they are durable, so anything published before a store read is in
// that read; live envelopes it has already seen are skipped by seq. A live
// envelope that does not follow the last one delivered (publishers may
// overtake each other, and some stores leave gaps) sends the stream back to
// the store, which is the source of truth for order.
type Stream struct {
	svc     *Service
	handle  string
	sub     Subscription
	last    uint64
	backlog []*Envelope
	live    bool // caught up with the store; following the subscription
	closed  bool
}

// OpenStream starts following handle's inbox after seq since. The caller has
// authenticated the request and must Close the stream.
func (s *Service) OpenStream(ctx context.Context, handle string, since uint64) (*Stream, error) {
	s.mu.Lock()
	if s.streams[handle] >= s.cfg.MaxStreamsPerHandle {
		s.mu.Unlock()
		return nil, Errorf(CodeTooManyStreams, "%s already has %d open streams", handle, s.cfg.MaxStreamsPerHandle)
	}
	s.streams[handle]++
	s.mu.Unlock()
	s.openStreams.Add(1)

	sub, err := s.broker.Subscribe(ctx, handle, s.cfg.StreamBuffer)
	if err != nil {
		s.releaseStream(handle)
		return nil, fmt.Errorf("subscribing to %s: %w", handle, err)
	}
	return &Stream{svc: s, handle: handle, sub: sub, last: since}, nil
}

// HasStream reports whether handle has a stream open on this replica.
func (s *Service) HasStream(handle string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[handle] > 0
}

func (s *Service) releaseStream(handle string) {
	s.mu.Lock()
	if s.streams[handle]--; s.streams[handle] <= 0 {
		delete(s.streams, handle)
	}
	s.mu.Unlock()
	s.openStreams.Add(-1)
}

// Last is the seq of the last envelope delivered (or the resume point).
func (st *Stream) Last() uint64 { return st.last }

// Next returns the next envelope, waiting for one until ctx ends. It returns
// ErrSlowConsumer when the stream fell too far behind the live feed. Typing
// events that arrive meanwhile are skipped.
func (st *Stream) Next(ctx context.Context) (*Envelope, error) {
	for {
		e, t, err := st.NextEvent(ctx)
		if t == nil {
			return e, err
		}
	}
}

// NextEvent is Next that also returns the typing events that arrive while
// it waits for a live envelope: exactly one of the envelope and the typing
// event is set when err is nil. Typing events are not ordered with
// envelopes and do not move the resume point.
func (st *Stream) NextEvent(ctx context.Context) (*Envelope, *Typing, error) {
	return st.NextEventBefore(ctx, nil)
}

// ErrIdle is what NextEventBefore returns when its idle channel fires
// before an event comes.
var ErrIdle = errors.New("no event before the idle deadline")

// NextEventBefore is NextEvent that returns ErrIdle once idle fires: a
// stream's writer waits with one timer it resets, rather than a context
// and a timer per event.
func (st *Stream) NextEventBefore(ctx context.Context, idle <-chan time.Time) (*Envelope, *Typing, error) {
	for {
		e, t, err := st.next(ctx, idle, true)
		if e != nil || t != nil || err != nil {
			return e, t, err
		}
	}
}

// Ready returns an event that is there without waiting and without reading
// the store (a live envelope that follows, or a typing event), or false: a
// writer adds the events that came meanwhile to the frame it writes, one
// write for a burst. Whatever is not ready (the stream fell behind, a gap)
// the next NextEvent handles.
func (st *Stream) Ready() (*Envelope, *Typing, bool) {
	for !st.closed && (len(st.backlog) > 0 || st.live) {
		e, t, err := st.next(context.Background(), nil, false)
		if err != nil {
			return nil, nil, false
		}
		if e != nil || t != nil {
			return e, t, true
		}
		if len(st.backlog) == 0 && !st.pending() {
			break
		}
	}
	return nil, nil, false
}

// pending reports whether the subscription holds something to read now.
func (st *Stream) pending() bool { return len(st.sub.C()) > 0 || len(st.sub.Typing()) > 0 }

// next returns the next event, nothing (to be called again: an envelope
// was skipped, or the stream went back to the store), or an error. It waits
// only when block is set; without it a stream behind the live feed reports
// nothing rather than read the store.
func (st *Stream) next(ctx context.Context, idle <-chan time.Time, block bool) (*Envelope, *Typing, error) {
	if st.closed {
		return nil, nil, errStreamClosed
	}
	if len(st.backlog) > 0 {
		e := st.backlog[0]
		st.backlog[0] = nil
		st.backlog = st.backlog[1:]
		if e.Seq <= st.last {
			return nil, nil, nil
		}
		st.last = e.Seq
		return e, nil, nil
	}
	if !st.live {
		if !block {
			return nil, nil, nil
		}
		return nil, nil, st.catchUp(ctx)
	}
	var e *Envelope
	var ok bool
	if block {
		select {
		case e, ok = <-st.sub.C():
		case t := <-st.sub.Typing():
			return nil, t, nil
		case <-idle:
			return nil, nil, ErrIdle
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	} else {
		select {
		case e, ok = <-st.sub.C():
		case t := <-st.sub.Typing():
			return nil, t, nil
		default:
			return nil, nil, nil
		}
	}
	switch {
	case !ok:
		return nil, nil, ErrSlowConsumer
	case e.Seq <= st.last:
	case follows(e, st.last):
		st.last = e.Seq
		return e, nil, nil
	default:
		st.live = false
	}
	return nil, nil, nil
}

// follows reports whether the live envelope e, with e.Seq > last, is the
// next one after last: the store vouched that nothing of the recipient was
// stored between e.Prev and e.Seq, and seqs only grow, so nothing the
// stream has not delivered lies between last and e. Without a Prev only
// last+1 follows.
func follows(e *Envelope, last uint64) bool {
	if e.Prev == 0 {
		return e.Seq == last+1
	}
	return e.Prev <= last
}

// catchUp reads the next page of stored envelopes. Live envelopes already
// waiting are dropped first: they are durable, so this read or a later one
// returns them in order.
func (st *Stream) catchUp(ctx context.Context) error {
	for drained := false; !drained; {
		select {
		case _, ok := <-st.sub.C():
			if !ok {
				return ErrSlowConsumer
			}
		default:
			drained = true
		}
	}
	pageBytes := min(catchUpBytes, st.svc.cfg.MaxPageBytes)
	envs, err := st.svc.store.Messages(ctx, st.handle, st.last, catchUpPage, pageBytes)
	if err != nil {
		return fmt.Errorf("reading inbox of %s after %d: %w", st.handle, st.last, err)
	}
	st.backlog = envs
	st.live = len(envs) < catchUpPage && messageBytes(envs) < pageBytes
	return nil
}

// Close ends the subscription.
func (st *Stream) Close() {
	if st.closed {
		return
	}
	st.closed = true
	st.sub.Close()
	st.svc.releaseStream(st.handle)
}

// messageBytes is what envs's messages add up to.
func messageBytes(envs []*Envelope) int {
	n := 0
	for _, e := range envs {
		n += len(e.Message)
	}
	return n
}
