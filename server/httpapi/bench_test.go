package httpapi_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server/testutil"
)

// BenchmarkPostMessage measures what the server allocates per accepted
// message: POST /v1/messages through the API's handler (strict decoding,
// canonicalization, signature check, SQLite append, the 201 answer and the
// metrics), without a network or a client in the process's allocations.
// With "1 stream", the recipient has a stream open over a real connection
// and each message is also framed and written to it; a reader in the same
// process counts the events without allocating per event.
//
//	go test -run '^$' -bench PostMessage -benchmem -benchtime 5000x ./server/httpapi/
func BenchmarkPostMessage(b *testing.B) {
	b.Run("no stream", func(b *testing.B) { benchmarkPostMessage(b, false) })
	b.Run("1 stream", func(b *testing.B) { benchmarkPostMessage(b, true) })
}

func benchmarkPostMessage(b *testing.B, stream bool) {
	srv := testutil.StartServer(b, testutil.Options{})
	alice := newIdentity(b, "ed25519", "alice")
	bob := newIdentity(b, "ed25519", "bob")
	register(b, srv, alice)
	register(b, srv, bob)

	// A 100-byte text signed and HPKE-encrypted is a body of about 700
	// bytes; a 300-byte ciphertext gives that.
	bodies := make([][]byte, b.N)
	for i := range bodies {
		doc := alice.sign(b, alice.messagePayload("bob", "m-"+strconv.Itoa(i)+"-"+strconv.FormatInt(time.Now().UnixNano(), 36), randomCT(b, 300)))
		body, err := json.Marshal(doc)
		if err != nil {
			b.Fatal(err)
		}
		bodies[i] = body
	}

	var events chan int
	if stream {
		events = openCountingStream(b, srv, bob)
	}

	h := srv.API.Handler()
	u, _ := url.Parse("/v1/messages")
	w := &discardWriter{header: make(http.Header)}
	body := &bytes.Reader{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		body.Reset(bodies[i])
		req := &http.Request{
			Method: http.MethodPost, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(body),
			ContentLength: int64(len(bodies[i])), Host: "chat.test", RemoteAddr: "192.0.2.1:1234",
		}
		req = req.WithContext(b.Context())
		clear(w.header)
		w.status = 0
		h.ServeHTTP(w, req)
		if w.status != http.StatusCreated {
			b.Fatalf("message %d answered %d", i, w.status)
		}
	}
	if stream {
		// Every event must have been written before the clock stops.
		deadline := time.After(30 * time.Second)
		for n := 0; n < b.N; {
			select {
			case n = <-events:
			case <-deadline:
				b.Fatalf("%d of %d events delivered", n, b.N)
			}
		}
	}
	b.StopTimer()
}

// openCountingStream opens id's stream over a real connection and reports
// the number of message events read so far, each time it grows.
func openCountingStream(b *testing.B, srv *testutil.Server, id *identity) chan int {
	path := "/v1/inbox/" + id.handle + "/stream"
	auth := id.auth(b, http.MethodGet, path, time.Now().Unix())
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, "GET "+path+"?auth="+url.QueryEscape(auth)+" HTTP/1.1\r\nHost: chat.test\r\n\r\n"); err != nil {
		b.Fatal(err)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	// Headers and ": connected".
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			b.Fatalf("opening stream: %v", err)
		}
		if bytes.HasPrefix(line, []byte(": connected")) {
			break
		}
	}
	events := make(chan int, 1)
	go func() {
		marker := []byte("event: message\n")
		n := 0
		for {
			line, err := r.ReadSlice('\n')
			if err != nil && err != bufio.ErrBufferFull {
				return
			}
			if bytes.Equal(line, marker) {
				n++
				select {
				case <-events:
				default:
				}
				events <- n
			}
		}
	}()
	return events
}

// discardWriter is an http.ResponseWriter that keeps only the status.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.header }

func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}
