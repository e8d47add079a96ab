package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"kez.lat/chat/server"
)

// stream serves GET /v1/inbox/{handle}/stream as Server-Sent Events.
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
	if !s.authenticate(w, r, server.RequestAuth{
		Handle: handle,
		Method: http.MethodGet,
		Path:   "/v1/inbox/" + handle + "/stream",
		Header: q.Get("auth"),
	}) {
		return
	}

	// The stream ends with the request or at shutdown, whichever is first.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.shutdown, cancel)
	defer stop()

	st, err := s.svc.OpenStream(ctx, handle, since)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer st.Close()

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	var frame bytes.Buffer
	send := func() bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.StreamWriteTimeout))
		_, err := w.Write(frame.Bytes())
		if err == nil {
			err = rc.Flush()
		}
		frame.Reset()
		return err == nil
	}
	frame.WriteString(": connected\nretry: 2000\n\n")
	if !send() {
		return
	}
	for {
		next, cancelNext := context.WithTimeout(ctx, s.cfg.KeepAlive)
		e, err := st.Next(next)
		cancelNext()
		switch {
		case err == nil:
			writeEvent(&frame, e)
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			frame.WriteString(": keep-alive\n\n")
		case errors.Is(err, server.ErrSlowConsumer):
			s.metrics.slowConsumers.Inc()
			return
		case ctx.Err() != nil:
			return
		default:
			s.log.ErrorContext(ctx, "streaming inbox", "handle", handle, "after", st.Last(), "err", err)
			return
		}
		if !send() {
			return
		}
	}
}

// writeEvent frames e as one SSE message event. Its JSON holds no newline,
// so one data line carries it.
func writeEvent(b *bytes.Buffer, e *server.Envelope) {
	b.WriteString("event: message\nid: ")
	b.WriteString(strconv.FormatUint(e.Seq, 10))
	b.WriteString("\ndata: ")
	data, _ := json.Marshal(e) // an Envelope always encodes
	b.Write(data)
	b.WriteString("\n\n")
}
