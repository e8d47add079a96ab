package httpapi

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"kez.lat/chat/server"
)

// streamHeader opens a stream on a taken-over connection. Without chunking,
// Connection: close delimits the body: an event stream ends when its
// connection does anyway.
const streamHeader = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n" +
	"X-Accel-Buffering: no\r\nConnection: close\r\n\r\n"

// streamPreamble is the first event-stream text: a comment that makes
// proxies and clients see the stream open, and the reconnection delay.
const streamPreamble = ": connected\nretry: 2000\n\n"

// stream serves GET /v1/inbox/{handle}/stream as Server-Sent Events.
//
// An idle stream must cost little memory (the target is 20 KiB at 10,000
// streams), and net/http keeps about 20 KiB per connection for as long as a
// handler runs: buffers, the request, and two goroutines. So on HTTP/1 the
// stream takes over the connection and the handler returns; a pump
// goroutine then writes events until the client leaves, the reader is too
// slow, or the server shuts down. Where the connection cannot be taken over
// (HTTP/2), the handler serves the stream itself.
func (s *Server) stream(w http.ResponseWriter, r *http.Request) {
	handle := r.PathValue("handle")
	q := r.URL.Query()
	since, err := queryUint(q.Get("since"), "since", 0)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		if since, err = queryUint(id, "Last-Event-ID", 0); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	// The auth travels in the URL, where it may be seen (logs, a history):
	// it opens one stream, once, and the stream ends when the auth leaves
	// the window. The client reconnects with fresh auth from its cursor.
	sess, ok := s.authenticate(w, r, server.RequestAuth{
		Handle: handle,
		Method: http.MethodGet,
		Path:   "/v1/inbox/" + handle + "/stream",
		Header: q.Get("auth"),
		Once:   true,
	})
	if !ok {
		return
	}

	addr := s.clientAddr(r)
	if !s.holdStream(addr) {
		s.fail(w, r, &server.Error{Code: server.CodeTooManyStreams, RetryAfter: 30 * time.Second,
			Message: "this address has too many open streams"})
		return
	}
	// The stream outlives the request on a taken-over connection, so it
	// hangs off the server's shutdown context, not the request's.
	ctx, cancel := context.WithDeadline(s.shutdown, sess.Expires)
	context.AfterFunc(ctx, func() { s.releaseStream(addr) })
	st, err := s.svc.OpenStream(ctx, handle, since)
	if err != nil {
		cancel()
		s.fail(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	conn, _, err := rc.Hijack()
	if err != nil {
		defer cancel()
		stop := context.AfterFunc(r.Context(), cancel)
		defer stop()
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		s.pump(ctx, st, sess, &responseSink{w: w, rc: rc, timeout: s.cfg.StreamWriteTimeout})
		return
	}
	// Bytes a client pipelined after its GET are ignored: the connection
	// closes with the stream.
	sink := &connSink{conn: conn, timeout: s.cfg.StreamWriteTimeout}
	if err := sink.write([]byte(streamHeader)); err != nil {
		st.Close()
		cancel()
		conn.Close()
		return
	}
	// A client that hangs up is noticed at once, as net/http's background
	// read would, rather than at the next keep-alive write.
	go func() {
		var b [1]byte
		conn.Read(b[:])
		cancel()
	}()
	// Shutdown must not wait out a write deadline.
	stopDeadline := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	s.pumpsMu.Lock()
	defer s.pumpsMu.Unlock()
	if s.pumpsClosed {
		// The server is shutting down: this stream ends before it starts.
		stopDeadline()
		st.Close()
		cancel()
		conn.Close()
		return
	}
	s.pumps.Go(func() {
		defer cancel()
		defer conn.Close()
		defer stopDeadline()
		s.pump(ctx, st, sess, sink)
	})
}

// eventSink is where a stream's text goes.
type eventSink interface {
	write(p []byte) error
}

// connSink writes to a taken-over connection.
type connSink struct {
	conn    net.Conn
	timeout time.Duration
}

func (c *connSink) write(p []byte) error {
	if err := c.conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return err
	}
	_, err := c.conn.Write(p)
	return err
}

// responseSink writes through net/http, flushing every frame.
type responseSink struct {
	w       io.Writer
	rc      *http.ResponseController
	timeout time.Duration
}

func (r *responseSink) write(p []byte) error {
	_ = r.rc.SetWriteDeadline(time.Now().Add(r.timeout))
	if _, err := r.w.Write(p); err != nil {
		return err
	}
	return r.rc.Flush()
}

// pump writes st's envelopes, and keep-alives while there are none, to sink
// until the stream, the sink or ctx ends, or sess no longer holds (checked
// at every keep-alive interval). It closes st.
func (s *Server) pump(ctx context.Context, st *server.Stream, sess *server.Session, sink eventSink) {
	defer st.Close()
	handle := sess.User.Handle
	if sink.write([]byte(streamPreamble)) != nil {
		return
	}
	checked := time.Now()
	// One timer for the keep-alives, reset per wait: no context or timer per
	// event.
	idle := time.NewTimer(s.cfg.KeepAlive)
	defer idle.Stop()
	for {
		if time.Since(checked) >= s.cfg.KeepAlive {
			if err := s.svc.CheckSession(ctx, sess); err != nil {
				if ctx.Err() == nil {
					s.log.DebugContext(ctx, "ending a stream", "handle", handle, "reason", server.ErrorCode(err))
				}
				return
			}
			checked = time.Now()
		}
		idle.Reset(s.cfg.KeepAlive)
		e, t, err := st.NextEventBefore(ctx, idle.C)
		// A frame's buffer comes from a pool shared by all streams and goes
		// back after the write: an idle stream holds no buffer, and a busy
		// one allocates none per event.
		var frame []byte
		pooled := false
		switch {
		case err == nil:
			frame, pooled = appendStreamEvent(getFrame(), e, t), true
			s.observeDelivery(e)
			// What came meanwhile goes in the same write: a burst (a group's
			// messages, a catch-up) costs one syscall, not one per event.
			for len(frame) < maxCoalescedFrame {
				e, t, ok := st.Ready()
				if !ok {
					break
				}
				frame = appendStreamEvent(frame, e, t)
				s.observeDelivery(e)
			}
		case errors.Is(err, server.ErrIdle) && ctx.Err() == nil:
			frame = []byte(keepAlive)
		case errors.Is(err, server.ErrSlowConsumer):
			s.metrics.slowConsumers.Inc()
			return
		case ctx.Err() != nil:
			return
		default:
			s.log.ErrorContext(ctx, "streaming inbox", "handle", handle, "after", st.Last(), "err", err)
			return
		}
		werr := sink.write(frame) // the sinks keep no reference to frame
		if pooled {
			putFrame(frame)
		}
		if werr != nil {
			return
		}
	}
}

// observeDelivery times e (nil for a typing event) from its acceptance on
// this replica to its frame.
func (s *Server) observeDelivery(e *server.Envelope) {
	if e != nil && !e.AcceptedAt.IsZero() {
		s.metrics.deliveryLatency.Observe(time.Since(e.AcceptedAt).Seconds())
	}
}

// framePool holds frame buffers between writes; buffers larger than
// maxPooledFrame (a large message's) are left to the collector.
var framePool = sync.Pool{New: func() any { return new([]byte) }}

const maxPooledFrame = 16 << 10

func getFrame() []byte { return (*framePool.Get().(*[]byte))[:0] }

func putFrame(b []byte) {
	if cap(b) > maxPooledFrame {
		return
	}
	framePool.Put(&b)
}

// maxCoalescedFrame is where a write stops taking events that came
// meanwhile; the next write takes the rest.
const maxCoalescedFrame = 64 << 10

// appendStreamEvent frames an envelope or a typing event (one of e and t
// is set) after b.
func appendStreamEvent(b []byte, e *server.Envelope, t *server.Typing) []byte {
	if t != nil {
		return appendTypingEvent(slices.Grow(b, len(t.From)+len(t.CT)+typingOverhead), t)
	}
	return appendEvent(slices.Grow(b, len(e.Message)+eventOverhead), e)
}

// keepAlive is the comment frame written while a stream is idle.
const keepAlive = ": keep-alive\n\n"

// eventOverhead bounds what a message event adds to its envelope's
// message: the event and id lines, the envelope's seq and received_at.
const eventOverhead = 128

// appendEvent frames e as one SSE message event. Its JSON holds no newline,
// so one data line carries it. The envelope is written as MarshalJSON
// writes it, the message byte for byte.
func appendEvent(b []byte, e *server.Envelope) []byte {
	b = append(b, "event: message\nid: "...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, "\ndata: "...)
	b = e.AppendJSON(b)
	return append(b, "\n\n"...)
}

// typingOverhead is what a typing event adds to its from and ct.
const typingOverhead = 64

// appendTypingEvent frames t as one SSE typing event. It has no id line:
// it is not stored, so it must not move the client's resume point. Handles
// and base64url need no JSON escaping.
func appendTypingEvent(b []byte, t *server.Typing) []byte {
	b = append(b, "event: typing\ndata: {\"from\":\""...)
	b = append(b, t.From...)
	b = append(b, "\",\"ct\":\""...)
	b = append(b, t.CT...)
	return append(b, "\"}\n\n"...)
}

// holdStream counts a stream against addr's cap, or reports that it is
// full.
func (s *Server) holdStream(addr string) bool {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.cfg.MaxStreamsPerAddress > 0 && s.addrStreams[addr] >= s.cfg.MaxStreamsPerAddress {
		return false
	}
	s.addrStreams[addr]++
	return true
}

// releaseStream gives back a stream of addr's.
func (s *Server) releaseStream(addr string) {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.addrStreams[addr]--; s.addrStreams[addr] <= 0 {
		delete(s.addrStreams, addr)
	}
}
