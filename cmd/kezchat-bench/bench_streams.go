package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server/signing"
)

const (
	// openWorkers is how many streams are being opened at once.
	openWorkers = 64
	// streamHandshake bounds connecting, the response headers and the first
	// frame of one stream.
	streamHandshake = 15 * time.Second
	// idleBuffer is the read buffer of an idle stream while it opens: enough
	// for the response headers line by line and the first frame.
	idleBuffer = 512
)

// rawStream is one stream of Server-Sent Events on a bare TCP connection
// with a handwritten request: a kezchat inbox stream, or in the anchor bench
// a Centrifugo uni_sse connection. client.Stream carries an http.Transport,
// large buffers and an idle timer per stream; the bench holds thousands, so
// it keeps only the connection and, while it reads, two small buffers.
type rawStream struct {
	conn  net.Conn
	lines *bufio.Reader // the de-chunked event stream
	long  []byte        // holds a line longer than lines' buffer
	// parse recognises the server's deliveries among the stream's events.
	parse deliveryParser
}

// eventKind is what a deliveryParser makes of one event.
type eventKind int

const (
	// notDelivery is an event the bench ignores: a ping, an event of
	// another type.
	notDelivery eventKind = iota
	// delivery is a message, with its id and the server's order for it.
	delivery
	// malformedDelivery looks like a delivery, but its id or order cannot
	// be read (or disagree): it counts as unexpected.
	malformedDelivery
)

// deliveryParser recognises a delivery in one event of a stream, from its
// event, id and data fields (empty when absent): the message's id and the
// server's sequence number for it, which must increase along the stream.
// The results may point into the fields. Both servers' parsers find the id
// the same cheap way (messageID), without decoding the JSON, so the bench's
// own CPU per delivery is the same for either.
type deliveryParser func(event, id, data []byte) (msgID []byte, seq uint64, kind eventKind)

// idKey opens the message id in a delivery's JSON.
var idKey = []byte(`"id":"`)

// messageID returns the message id in a delivery's data without decoding
// it: the string of its first "id" member. Both servers deliver the signed
// message document unchanged, and the payload's id is the document's only
// "id" member (the ciphertext is base64url; the other members are handles,
// numbers and the signature's alg, key and sig, none of which can hold a
// quote), so the first is the one. nil when there is none.
func messageID(data []byte) []byte {
	i := bytes.Index(data, idKey)
	if i < 0 {
		return nil
	}
	rest := data[i+len(idKey):]
	j := bytes.IndexByte(rest, '"')
	if j <= 0 {
		return nil
	}
	return rest[:j]
}

// parseSeq reads a decimal sequence number (digits only, at least one).
func parseSeq(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 { // 19 digits always fit in a uint64
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// kezchatDelivery recognises a kezchat inbox event: "event: message", the
// seq as its id, and as data the envelope {"seq":<the same seq>,
// "received_at":...,"message":<the signed document>}.
func kezchatDelivery(event, id, data []byte) ([]byte, uint64, eventKind) {
	if string(event) != "message" {
		return nil, 0, notDelivery // typing, or a future event type
	}
	seq, ok := parseSeq(id)
	// The envelope repeats the seq: it must agree with the event's id.
	rest, prefixed := bytes.CutPrefix(data, []byte(`{"seq":`))
	if !ok || !prefixed || !bytes.HasPrefix(rest, id) || len(rest) == len(id) || rest[len(id)] != ',' {
		return nil, 0, malformedDelivery
	}
	mid := messageID(rest)
	if mid == nil {
		return nil, 0, malformedDelivery
	}
	return mid, seq, delivery
}

// openRawStream opens id's stream and returns once the server has sent its
// first frame, which it writes after subscribing: from then on every new
// message of id is delivered on this stream.
func openRawStream(ctx context.Context, addr, domain string, id *client.Identity, bufSize int) (*rawStream, error) {
	path := "/v1/inbox/" + id.Handle + "/stream"
	auth, err := signing.SignRequest(id.Signer, domain, http.MethodGet, path, time.Now().Unix())
	if err != nil {
		return nil, err
	}
	st, err := dialStream(ctx, addr, path+"?auth="+url.QueryEscape(auth), bufSize, kezchatDelivery, func(st *rawStream) error {
		line, err := st.readLine()
		if err != nil {
			return err
		}
		if !bytes.HasPrefix(line, []byte(":")) {
			return fmt.Errorf("the first frame is %q, not a comment", line)
		}
		for len(line) > 0 { // the rest of the frame, up to its blank line
			if line, err = st.readLine(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stream of %s: %w", id.Handle, err)
	}
	return st, nil
}

// dialStream connects to addr, sends GET target (a path and query) for an
// event stream and returns the stream once the server has answered 200 and
// first has read what the server sends first and found it right, all
// within streamHandshake. The stream recognises deliveries with parse.
func dialStream(ctx context.Context, addr, target string, bufSize int, parse deliveryParser, first func(*rawStream) error) (*rawStream, error) {
	d := net.Dialer{Timeout: streamHandshake}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*rawStream, error) {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(streamHandshake))
	req := "GET " + target + " HTTP/1.1\r\n" +
		"Host: " + addr + "\r\n" +
		"Accept: text/event-stream\r\n" +
		"Cache-Control: no-store\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, bufSize), nil)
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fail(fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body)))
	}
	// resp.Body undoes the chunked transfer encoding.
	st := &rawStream{conn: conn, lines: bufio.NewReaderSize(resp.Body, bufSize), parse: parse}
	if err := first(st); err != nil {
		return fail(fmt.Errorf("reading the first frame: %w", err))
	}
	_ = conn.SetDeadline(time.Time{})
	return st, nil
}

// openStreams opens one kezchat stream per user, openWorkers at a time;
// user i's on targets[i mod len(targets)].
func openStreams(ctx context.Context, targets []*benchTarget, domain string, users []benchUser, bufSize int) ([]*rawStream, error) {
	return openStreamsOf(ctx, &kezchatLoad{targets: targets, domain: domain, recipients: users}, len(users), bufSize)
}

// openStreamsOf opens srv's streams of recipients 0 to n-1, openWorkers at
// a time, and closes them all if one fails.
func openStreamsOf(ctx context.Context, srv loadServer, n, bufSize int) ([]*rawStream, error) {
	streams := make([]*rawStream, n)
	err := forEachIndex(ctx, n, openWorkers, func(ctx context.Context, i int) error {
		st, err := srv.openStream(ctx, i, bufSize)
		if err != nil {
			return err
		}
		streams[i] = st
		return nil
	})
	if err != nil {
		for _, st := range streams {
			if st != nil {
				st.close()
			}
		}
		return nil, err
	}
	return streams, nil
}

func (st *rawStream) close() { st.conn.Close() }

// readLine returns the next line without its line ending. The result is
// valid until the next read: it points into the read buffer, or into
// st.long for a line longer than that.
func (st *rawStream) readLine() ([]byte, error) {
	st.long = st.long[:0]
	for {
		frag, err := st.lines.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			st.long = append(st.long, frag...)
			continue
		}
		if err != nil {
			return nil, err
		}
		line := frag
		if len(st.long) > 0 {
			st.long = append(st.long, frag...)
			line = st.long
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		return bytes.TrimSuffix(line, []byte("\r")), nil
	}
}

// follow reads events until the connection ends, recording each delivery
// st.parse recognises by its message id (no decryption: the id is in the
// signed payload) in the log cur holds at the time, and checking that the
// server's sequence numbers increase along the stream.
func (st *rawStream) follow(cur *atomic.Pointer[deliveryLog]) {
	var (
		event, id, data []byte
		hasData         bool
		lastSeq         uint64
	)
	for {
		line, err := st.readLine()
		if err != nil {
			return // closed at the end of the phase
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch {
		case len(line) == 0: // end of an event
			if hasData {
				switch mid, seq, kind := st.parse(event, id, data); kind {
				case delivery:
					log := cur.Load()
					if seq <= lastSeq {
						log.outOfOrder.Add(1)
					}
					lastSeq = seq
					log.deliver(mid)
				case malformedDelivery:
					cur.Load().unexpected.Add(1)
				}
			}
			event, id, data, hasData = event[:0], id[:0], data[:0], false
		case len(field) == 0: // a comment: keep-alive
		case string(field) == "event":
			event = append(event[:0], value...)
		case string(field) == "id":
			id = append(id[:0], value...)
		case string(field) == "data":
			data, hasData = append(data[:0], value...), true
		}
	}
}

// idleResult is what phase 3 measured.
type idleResult struct {
	streams                int
	rssBefore, rssAfter    int64 // KiB
	perStreamKiB           float64
	open, settleA, settleB time.Duration
	stableA, stableB       bool
}

// runIdle is phase 3: register cfg.idleStreams recipients, read the server's
// RSS once it is stable, open a stream for each and read it again once it is
// stable; the difference per stream is what an idle stream costs.
func runIdle(ctx context.Context, cfg benchConfig, t *benchTarget, hc *http.Client, tag string, p *benchPrinter) (*idleResult, error) {
	c := client.New(t.url, hc)
	domain, err := c.Domain(ctx)
	if err != nil {
		return nil, err
	}
	var users []benchUser
	err = p.step(fmt.Sprintf("registering %d recipients", cfg.idleStreams), func() error {
		var err error
		users, err = registerUsers(ctx, c, handles(tag, "i", cfg.idleStreams))
		return err
	})
	if err != nil {
		return nil, err
	}
	hc.CloseIdleConnections() // their server-side buffers are not stream memory

	r := &idleResult{streams: cfg.idleStreams}
	p.printf("waiting for the server's RSS to settle ... ")
	start := time.Now()
	if r.rssBefore, r.stableA, err = settledRSS(ctx, t); err != nil {
		return nil, err
	}
	r.settleA = time.Since(start)
	p.printf("%d KiB after %s%s\n", r.rssBefore, fmtDuration(r.settleA), unstable(r.stableA))

	var streams []*rawStream
	start = time.Now()
	err = p.step(fmt.Sprintf("opening %d idle streams", cfg.idleStreams), func() error {
		var err error
		streams, err = openStreams(ctx, []*benchTarget{t}, domain, users, idleBuffer)
		return err
	})
	if err != nil {
		return nil, err
	}
	r.open = time.Since(start)
	defer func() {
		for _, st := range streams {
			st.close()
		}
	}()
	// Idle streams are not read: the server's keep-alive comments (a few
	// bytes each 15 s) wait in the kernel's socket buffers. Dropping the
	// read buffers keeps this side to a connection per stream.
	for _, st := range streams {
		st.lines, st.long = nil, nil
	}

	p.printf("waiting for the server's RSS to settle ... ")
	start = time.Now()
	if r.rssAfter, r.stableB, err = settledRSS(ctx, t); err != nil {
		return nil, err
	}
	r.settleB = time.Since(start)
	p.printf("%d KiB after %s%s\n", r.rssAfter, fmtDuration(r.settleB), unstable(r.stableB))
	r.perStreamKiB = float64(r.rssAfter-r.rssBefore) / float64(r.streams)
	p.printf("phase 3, idle memory: %d streams held open; server RSS %d KiB -> %d KiB: %.1f KiB per idle stream\n",
		r.streams, r.rssBefore, r.rssAfter, r.perStreamKiB)
	return r, nil
}

func unstable(stable bool) string {
	if stable {
		return ""
	}
	return " (still moving; last reading)"
}

// settledRSS polls the server's RSS until it stops moving: the same to
// within 1% (or 256 KiB) over 3 s, or 60 s have passed. It cannot force a
// GC in another process; waiting lets the runtime finish what the last
// burst of work started (sweeping, returning freed pages to the OS).
func settledRSS(ctx context.Context, t *benchTarget) (kib int64, stable bool, err error) {
	const (
		every  = 500 * time.Millisecond
		window = 6 // readings: 3 s
		limit  = 60 * time.Second
	)
	var recent []int64
	deadline := time.Now().Add(limit)
	for {
		v, err := t.rssKiB()
		if err != nil {
			return 0, false, err
		}
		recent = append(recent, v)
		if len(recent) > window {
			recent = recent[1:]
		}
		if len(recent) == window {
			lo, hi := recent[0], recent[0]
			for _, x := range recent {
				lo, hi = min(lo, x), max(hi, x)
			}
			if hi-lo <= max(hi/100, 256) {
				return v, true, nil
			}
		}
		if time.Now().After(deadline) {
			return v, false, nil
		}
		select {
		case <-ctx.Done():
			return 0, false, ctx.Err()
		case <-time.After(every):
		}
	}
}
