package client

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func readAllEvents(r io.Reader, max int) ([]sseEvent, *sseReader, error) {
	sr := newSSEReader(r, max)
	var evs []sseEvent
	for {
		ev, err := sr.next()
		if err != nil {
			return evs, sr, err
		}
		evs = append(evs, ev)
	}
}

func TestSSEParser(t *testing.T) {
	cases := []struct {
		name  string
		in    string
		want  []sseEvent
		retry int
	}{
		{"server frame", ": connected\nretry: 2000\n\nevent: message\nid: 42\ndata: {\"seq\":42}\n\n",
			[]sseEvent{{"message", "42", `{"seq":42}`}}, 2000},
		{"default type", "data: x\n\n", []sseEvent{{"message", "", "x"}}, 0},
		{"multi-line data", "data: a\ndata:b\ndata:  c\ndata\n\n", []sseEvent{{"message", "", "a\nb\n c\n"}}, 0},
		{"empty data line dispatches", "data\n\n", []sseEvent{{"message", "", ""}}, 0},
		{"comments and keep-alives", ": keep-alive\n\n:\n: x\ndata: y\n: inner\n\n", []sseEvent{{"message", "", "y"}}, 0},
		{"CRLF", "event: message\r\nid: 1\r\ndata: a\r\ndata: b\r\n\r\n", []sseEvent{{"message", "1", "a\nb"}}, 0},
		{"CR only", "id: 2\rdata: a\r\r", []sseEvent{{"message", "2", "a"}}, 0},
		{"mixed endings", "data: a\r\n\ndata: b\r\rdata: c\n\r\n", []sseEvent{{"message", "", "a"}, {"message", "", "b"}, {"message", "", "c"}}, 0},
		{"id without data sets last id", "id: 5\n\ndata: x\n\n", []sseEvent{{"message", "5", "x"}}, 0},
		{"id persists", "id: 5\ndata: x\n\ndata: y\n\n", []sseEvent{{"message", "5", "x"}, {"message", "5", "y"}}, 0},
		{"empty id resets", "id: 5\ndata: x\n\nid\ndata: y\n\n", []sseEvent{{"message", "5", "x"}, {"message", "", "y"}}, 0},
		{"id with NUL ignored", "id: 5\n\nid: 6\x007\ndata: x\n\n", []sseEvent{{"message", "5", "x"}}, 0},
		{"event type without data is dropped", "event: ping\n\ndata: x\n\n", []sseEvent{{"message", "", "x"}}, 0},
		{"custom type", "event: hello\ndata: x\n\n", []sseEvent{{"hello", "", "x"}}, 0},
		{"one space only is stripped", "data:   x \n\n", []sseEvent{{"message", "", "  x "}}, 0},
		{"colon in value", "data: a:b: c\n\n", []sseEvent{{"message", "", "a:b: c"}}, 0},
		{"unknown fields ignored", "foo: bar\ndata: x\nbar\n\n", []sseEvent{{"message", "", "x"}}, 0},
		{"bad retry ignored", "retry: 1s\nretry: -5\ndata: x\n\n", []sseEvent{{"message", "", "x"}}, 0},
		{"BOM", "\uFEFFdata: x\n\n", []sseEvent{{"message", "", "x"}}, 0},
		{"only first BOM", "\uFEFFdata: x\n\n\uFEFFdata: y\n\n", []sseEvent{{"message", "", "x"}}, 0},
		{"unterminated event discarded", "data: x\n\ndata: y\n", []sseEvent{{"message", "", "x"}}, 0},
		{"unterminated line discarded", "data: x\n\ndata: y", []sseEvent{{"message", "", "x"}}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Whole, and one byte at a time (a line ending split across reads).
			for _, r := range []io.Reader{strings.NewReader(c.in), iotest.OneByteReader(strings.NewReader(c.in))} {
				got, sr, err := readAllEvents(r, 1<<10)
				if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("error %v", err)
				}
				if !reflect.DeepEqual(got, c.want) {
					t.Fatalf("got %q\nwant %q", got, c.want)
				}
				if sr.retry != c.retry {
					t.Fatalf("retry %d, want %d", sr.retry, c.retry)
				}
			}
		})
	}
}

func TestSSELineLimit(t *testing.T) {
	const max = 64
	ok := "data: " + strings.Repeat("x", max-6) + "\n\n"
	if evs, _, err := readAllEvents(strings.NewReader(ok), max); err != io.EOF || len(evs) != 1 {
		t.Fatalf("a line of exactly the limit: %v %d", err, len(evs))
	}
	long := "data: " + strings.Repeat("x", max-5) + "\n\n"
	if _, _, err := readAllEvents(strings.NewReader(long), max); !errors.Is(err, ErrSSELineTooLong) {
		t.Fatalf("a line over the limit: %v", err)
	}
	// A line that never ends is refused once over the limit, without
	// reading the rest.
	endless := io.MultiReader(strings.NewReader("data: "), neverEnding('x'))
	if _, _, err := readAllEvents(endless, max); !errors.Is(err, ErrSSELineTooLong) {
		t.Fatalf("an endless line: %v", err)
	}
	// Many short data lines are bounded too.
	many := strings.Repeat("data: "+strings.Repeat("x", 20)+"\n", 10) + "\n"
	if _, _, err := readAllEvents(strings.NewReader(many), max); !errors.Is(err, ErrSSELineTooLong) {
		t.Fatalf("event data over the limit: %v", err)
	}
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}
