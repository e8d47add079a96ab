package client

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// MaxSSELine bounds one line of an event stream, and the data of one event.
const MaxSSELine = 256 << 10

// ErrSSELineTooLong is returned for a stream line or event over MaxSSELine.
var ErrSSELineTooLong = errors.New("event stream line too long")

// sseEvent is one dispatched Server-Sent Event.
type sseEvent struct {
	Type string // "message" when the stream named none
	ID   string // the last event id, as of this event
	Data string
}

// sseReader parses text/event-stream as the HTML standard says: lines end
// in CRLF, LF or CR; lines starting with ':' are comments; "field: value"
// with one optional space after the colon; a blank line dispatches the
// event; data lines are joined with "\n"; an event without data is not
// dispatched, though its id still sets the last event id.
type sseReader struct {
	br     *bufio.Reader
	max    int
	line   []byte
	skipLF bool // the previous line ended in CR: a following LF is part of it
	bomOK  bool // the leading BOM was dealt with

	lastID string
	retry  int // reconnection time in ms the stream asked for, 0 if none
}

func newSSEReader(r io.Reader, max int) *sseReader {
	return &sseReader{br: bufio.NewReaderSize(r, 16<<10), max: max}
}

// readLine returns the next line without its terminator. The slice is valid
// until the next call.
func (r *sseReader) readLine() ([]byte, error) {
	r.line = r.line[:0]
	for {
		// Wait for at least one byte, then look at all that is buffered.
		buf, err := r.br.Peek(max(r.br.Buffered(), 1))
		if len(buf) == 0 {
			if err == io.EOF && len(r.line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if !r.bomOK {
			r.bomOK = true
			if bytes.HasPrefix(buf, []byte("\uFEFF")) {
				_, _ = r.br.Discard(3)
				continue
			}
			if len(buf) < 3 && bytes.HasPrefix([]byte("\uFEFF"), buf) {
				// Too little buffered to tell; wait for three bytes.
				if b, err := r.br.Peek(3); err == nil && bytes.Equal(b, []byte("\uFEFF")) {
					_, _ = r.br.Discard(3)
				}
				continue
			}
		}
		if r.skipLF {
			r.skipLF = false
			if buf[0] == '\n' {
				_, _ = r.br.Discard(1)
				continue
			}
		}
		i := bytes.IndexAny(buf, "\r\n")
		end := i
		if i < 0 {
			end = len(buf)
		}
		if len(r.line)+end > r.max {
			return nil, fmt.Errorf("%w: over %d bytes", ErrSSELineTooLong, r.max)
		}
		r.line = append(r.line, buf[:end]...)
		if i < 0 {
			_, _ = r.br.Discard(end)
			continue
		}
		r.skipLF = buf[i] == '\r'
		_, _ = r.br.Discard(i + 1)
		return r.line, nil
	}
}

// next returns the next dispatched event; comments are skipped.
func (r *sseReader) next() (sseEvent, error) {
	var (
		typ     string
		data    []byte
		hasData bool
	)
	for {
		line, err := r.readLine()
		if err != nil {
			return sseEvent{}, err
		}
		if len(line) == 0 {
			if !hasData {
				typ = ""
				continue
			}
			if typ == "" {
				typ = "message"
			}
			return sseEvent{Type: typ, ID: r.lastID, Data: string(bytes.TrimSuffix(data, []byte("\n")))}, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		switch string(field) {
		case "event":
			typ = string(value)
		case "data":
			if len(data)+len(value)+1 > r.max {
				return sseEvent{}, fmt.Errorf("%w: event data over %d bytes", ErrSSELineTooLong, r.max)
			}
			data = append(data, value...)
			data = append(data, '\n')
			hasData = true
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				r.lastID = string(value)
			}
		case "retry":
			if n, err := strconv.Atoi(string(value)); err == nil && n >= 0 && isDigits(value) {
				r.retry = n
			}
		}
	}
}

func isDigits(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
