package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"kez.lat/chat/server"
)

// DefaultStreamIdleTimeout is Client.StreamIdleTimeout's default: three
// of the server's 15 s keep-alives.
const DefaultStreamIdleTimeout = 45 * time.Second

// ErrStreamIdle ends a stream that stayed silent for StreamIdleTimeout.
var ErrStreamIdle = errors.New("stream idle: no data or keep-alive from the server")

// Stream is an open inbox stream (Server-Sent Events). Next and Close may be
// called from different goroutines; Next from one at a time.
type Stream struct {
	body   io.ReadCloser
	sse    *sseReader
	cancel context.CancelFunc
	idle   *idleTimer
	last   uint64 // seq of the last envelope Next returned
	once   sync.Once
}

// Stream opens id's inbox stream, resuming after seq since: stored envelopes
// come first, then live ones.
func (c *Client) Stream(ctx context.Context, id *Identity, since uint64) (*Stream, error) {
	path := inboxPath(id.Handle) + "/stream"
	ts, err := c.streamTS(ctx)
	if err != nil {
		return nil, err
	}
	auth, err := c.authorize(ctx, id, http.MethodGet, path, ts)
	if err != nil {
		return nil, err
	}
	q := url.Values{"auth": {auth}, "since": {strconv.FormatUint(since, 10)}}
	req, err := c.newRequest(ctx, http.MethodGet, "/v1/inbox/"+url.PathEscape(id.Handle)+"/stream", q, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-store")

	// The stream lives until ctx ends, Close, or it falls silent for the
	// idle timeout, which also bounds waiting for the response headers.
	sctx, cancel := context.WithCancel(ctx)
	req = req.WithContext(sctx)
	timeout := c.StreamIdleTimeout
	if timeout <= 0 {
		timeout = DefaultStreamIdleTimeout
	}
	idle := newIdleTimer(timeout, cancel)
	resp, err := c.stream.Do(req)
	if err != nil {
		idle.stop()
		cancel()
		if idle.fired.Load() {
			err = ErrStreamIdle
		}
		return nil, fmt.Errorf("opening inbox stream: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		apiErr := parseAPIError(resp) // before cancel, which ends the body
		resp.Body.Close()
		idle.stop()
		cancel()
		return nil, apiErr
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		resp.Body.Close()
		idle.stop()
		cancel()
		return nil, fmt.Errorf("opening inbox stream: the answer is %q, not text/event-stream", resp.Header.Get("Content-Type"))
	}
	idle.reset()
	s := &Stream{body: resp.Body, cancel: cancel, idle: idle, last: since}
	s.sse = newSSEReader(idleReader{resp.Body, idle}, MaxSSELine)
	return s, nil
}

// Next returns the next envelope. Events other than "message" are skipped.
// Any error ends the stream; reopen it from LastSeq (Listen does).
func (s *Stream) Next() (Envelope, error) {
	for {
		ev, err := s.sse.next()
		if err != nil {
			if s.idle.fired.Load() {
				err = ErrStreamIdle
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // the server never ends a stream on purpose
			}
			return Envelope{}, fmt.Errorf("inbox stream: %w", err)
		}
		if ev.Type != "message" {
			continue
		}
		var env Envelope
		if err := server.DecodeOpenJSON([]byte(ev.Data), &env); err != nil {
			return Envelope{}, fmt.Errorf("inbox stream: event %q: %w", ev.ID, err)
		}
		if ev.ID != "" && ev.ID != strconv.FormatUint(env.Seq, 10) {
			return Envelope{}, fmt.Errorf("inbox stream: event id %q but seq %d", ev.ID, env.Seq)
		}
		s.last = env.Seq
		return env, nil
	}
}

// LastSeq is the seq of the last envelope Next returned, or the since the
// stream was opened with.
func (s *Stream) LastSeq() uint64 { return s.last }

// retry is the reconnection delay the server asked for, 0 if none.
func (s *Stream) retry() time.Duration { return time.Duration(s.sse.retry) * time.Millisecond }

// Close ends the stream.
func (s *Stream) Close() error {
	s.once.Do(func() {
		s.idle.stop()
		s.cancel()
		s.body.Close()
	})
	return nil
}

// Listen follows id's inbox from after seq since, calling fn with each
// envelope in order until ctx ends or fn fails. When the stream breaks it
// reconnects with fresh auth, resuming after the last envelope fn accepted,
// so fn never sees a seq twice. Transport errors, 5xx and 429 are retried
// after a short backoff (at most 15 s, or the server's Retry-After / retry
// up to a minute); other errors from the server are returned, as is fn's
// error. It returns ctx.Err() when ctx ends.
func (c *Client) Listen(ctx context.Context, id *Identity, since uint64, fn func(Envelope) error) error {
	const (
		minBackoff = 250 * time.Millisecond
		maxBackoff = 15 * time.Second
		maxWait    = time.Minute
	)
	backoff := minBackoff
	last := since
	for {
		var wait time.Duration
		st, err := c.Stream(ctx, id, last)
		if err == nil {
			var delivered bool
			delivered, err = listenOnce(st, &last, fn)
			wait = st.retry()
			st.Close()
			var cb callbackError
			if errors.As(err, &cb) {
				return cb.err
			}
			if delivered {
				backoff = minBackoff
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !retryable(err) {
			return err
		}
		var apiErr *APIError
		if errors.As(err, &apiErr) && apiErr.RetryAfter > 0 {
			wait = apiErr.RetryAfter
		}
		wait = min(max(wait, backoff/2+rand.N(backoff/2+1)), maxWait)
		backoff = min(backoff*2, maxBackoff)
		if c.OnListenError != nil {
			c.OnListenError(err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// callbackError carries an error of Listen's fn out of listenOnce.
type callbackError struct{ err error }

func (e callbackError) Error() string { return e.err.Error() }

// listenOnce delivers one stream's envelopes to fn until it breaks.
func listenOnce(st *Stream, last *uint64, fn func(Envelope) error) (delivered bool, err error) {
	for {
		env, err := st.Next()
		if err != nil {
			return delivered, err
		}
		if env.Seq <= *last {
			continue // already delivered (the server promises none, but be sure)
		}
		if err := fn(env); err != nil {
			return delivered, callbackError{err}
		}
		*last = env.Seq
		delivered = true
	}
}

// idleTimer cancels a stream that sees no bytes for a while.
type idleTimer struct {
	d     time.Duration
	t     *time.Timer
	fired atomic.Bool
}

func newIdleTimer(d time.Duration, cancel context.CancelFunc) *idleTimer {
	it := &idleTimer{d: d}
	it.t = time.AfterFunc(d, func() {
		it.fired.Store(true)
		cancel()
	})
	return it
}

func (it *idleTimer) reset() { it.t.Reset(it.d) }
func (it *idleTimer) stop()  { it.t.Stop() }

// idleReader resets the idle timer whenever bytes arrive.
type idleReader struct {
	r    io.Reader
	idle *idleTimer
}

func (r idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.idle.reset()
	}
	return n, err
}

// streamTS is the ts of a new stream's auth. The server accepts a stream
// auth once, so no two of this client's share a ts (and so a signature):
// a reconnect within the same second signs the next one. Should that run
// a minute ahead of the clock, it waits, staying well inside the window.
func (c *Client) streamTS(ctx context.Context) (int64, error) {
	for {
		last, now := c.lastStreamTS.Load(), c.now().Unix()
		ts := max(now, last+1)
		if ts > now+60 {
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		if c.lastStreamTS.CompareAndSwap(last, ts) {
			return ts, nil
		}
	}
}
