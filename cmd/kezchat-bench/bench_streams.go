package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
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

// rawStream is one inbox stream on a bare TCP connection with a handwritten
// request. client.Stream carries an http.Transport, large buffers and an
// idle timer per stream; the bench holds thousands, so it keeps only the
// connection and, while it reads, two small buffers.
type rawStream struct {
	conn  net.Conn
	lines *bufio.Reader // the de-chunked event stream
	long  []byte        // holds a line longer than lines' buffer
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
	d := net.Dialer{Timeout: streamHandshake}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*rawStream, error) {
		conn.Close()
		return nil, fmt.Errorf("stream of %s: %w", id.Handle, err)
	}
	_ = conn.SetDeadline(time.Now().Add(streamHandshake))
	req := "GET " + path + "?auth=" + url.QueryEscape(auth) + " HTTP/1.1\r\n" +
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
	st := &rawStream{conn: conn, lines: bufio.NewReaderSize(resp.Body, bufSize)}
	line, err := st.readLine()
	if err != nil {
		return fail(fmt.Errorf("reading the first frame: %w", err))
	}
	if !bytes.HasPrefix(line, []byte(":")) {
		return fail(fmt.Errorf("the first frame is %q, not a comment", line))
	}
	for len(line) > 0 { // the rest of the frame, up to its blank line
		if line, err = st.readLine(); err != nil {
			return fail(fmt.Errorf("reading the first frame: %w", err))
		}
	}
	_ = conn.SetDeadline(time.Time{})
	return st, nil
}

// openStreams opens one stream per user, openWorkers at a time; user i's
// on targets[i mod len(targets)].
func openStreams(ctx context.Context, targets []*benchTarget, domain string, users []benchUser, bufSize int) ([]*rawStream, error) {
	streams := make([]*rawStream, len(users))
	err := forEachIndex(ctx, len(users), openWorkers, func(ctx context.Context, i int) error {
		st, err := openRawStream(ctx, targets[i%len(targets)].addr, domain, users[i].id, bufSize)
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

// follow reads events until the connection ends, recording each message's
// delivery by its payload id (no decryption: the id is in the signed
// payload) in the log cur holds at the time, and checking that seqs
// increase.
func (st *rawStream) follow(cur *atomic.Pointer[deliveryLog]) {
	var (
		data         []byte
		hasData      bool
		event        string
		seq, lastSeq uint64
	)
	var env struct {
		Seq     uint64 `json:"seq"`
		Message struct {
			Payload struct {
				ID string `json:"id"`
			} `json:"payload"`
		} `json:"message"`
	}
	for {
		line, err := st.readLine()
		if err != nil {
			return // closed at the end of the phase
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch {
		case len(line) == 0: // end of an event
			if event == "message" && hasData {
				log := cur.Load()
				env.Message.Payload.ID = ""
				if json.Unmarshal(data, &env) != nil || env.Seq != seq {
					log.unexpected.Add(1)
				} else {
					if seq <= lastSeq {
						log.outOfOrder.Add(1)
					}
					lastSeq = seq
					log.deliver(env.Message.Payload.ID)
				}
			}
			event, hasData, seq = "", false, 0
		case len(field) == 0: // a comment: keep-alive
		case string(field) == "event":
			event = string(value)
		case string(field) == "id":
			seq, _ = strconv.ParseUint(string(value), 10, 64)
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
