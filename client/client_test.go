package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server/signing"
)

// fakeServer serves just enough of the protocol to check what the client
// sends: request auth exactly as docs/protocol.md spells it, and the inbox
// stream, which it drops after dropAfter events per connection.
type fakeServer struct {
	t         *testing.T
	alice     *Identity
	bob       *User      // the sender of every envelope
	envelopes []Envelope // alice's inbox

	mu        sync.Mutex
	usedSigs  map[string]bool
	sinces    []string // since of each stream request
	acks      []string
	dropAfter int
}

func newFakeServer(t *testing.T) (*fakeServer, *httptest.Server) {
	alice, aliceRec := newUser(t, "ed25519", "alice")
	bob, bobRec := newUser(t, "bip340", "bob")
	f := &fakeServer{t: t, alice: alice, bob: bobRec, usedSigs: map[string]bool{}, dropAfter: 3}
	for _, seq := range []uint64{1, 2, 4, 5, 9, 10, 11, 20} {
		doc, err := NewMessage(bob, aliceRec, fmt.Sprint("m", seq), fmt.Sprint("body ", seq))
		if err != nil {
			t.Fatal(err)
		}
		f.envelopes = append(f.envelopes, envelopeOf(t, seq, doc))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"server":%q,"status":"ok","version":"fake"}`, testDomain)
	})
	mux.HandleFunc("GET /v1/inbox/alice", func(w http.ResponseWriter, r *http.Request) {
		if !f.auth(w, r.Header.Get("X-KEZ-Auth"), "GET", "/v1/inbox/alice", "since="+r.URL.Query().Get("since")) {
			return
		}
		since, _ := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
		var b strings.Builder
		b.WriteString(`{"messages":[`)
		next := since
		n := 0
		for _, e := range f.envelopes {
			if e.Seq > since {
				if n > 0 {
					b.WriteString(",")
				}
				msg, _ := marshalDoc(e.Message)
				fmt.Fprintf(&b, `{"seq":%d,"received_at":%d,"message":%s}`, e.Seq, e.ReceivedAt, msg)
				next = e.Seq
				n++
			}
		}
		fmt.Fprintf(&b, `],"next":%d}`, next)
		w.Write([]byte(b.String()))
	})
	mux.HandleFunc("DELETE /v1/inbox/alice", func(w http.ResponseWriter, r *http.Request) {
		upto := r.URL.Query().Get("upto")
		if !f.auth(w, r.Header.Get("X-KEZ-Auth"), "DELETE", "/v1/inbox/alice", "upto="+upto) {
			return
		}
		f.mu.Lock()
		f.acks = append(f.acks, upto)
		f.mu.Unlock()
		w.Write([]byte(`{"deleted":1}`))
	})
	mux.HandleFunc("GET /v1/inbox/alice/stream", func(w http.ResponseWriter, r *http.Request) {
		if !f.auth(w, r.URL.Query().Get("auth"), "GET", "/v1/inbox/alice/stream") {
			return
		}
		since, _ := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
		f.mu.Lock()
		f.sinces = append(f.sinces, r.URL.Query().Get("since"))
		drop := f.dropAfter
		f.mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, ": connected\r\nretry: 10\r\n\r\n")
		sent := 0
		for _, e := range f.envelopes {
			if e.Seq <= since {
				continue
			}
			if sent == drop {
				return // connection ends mid-stream
			}
			msg, _ := marshalDoc(e.Message)
			fmt.Fprintf(w, ": keep-alive\n\nevent: message\nid: %d\ndata: {\"seq\":%d,\"received_at\":%d,\"message\":%s}\n\n", e.Seq, e.Seq, e.ReceivedAt, msg)
			w.(http.Flusher).Flush()
			sent++
		}
		<-r.Context().Done()
	})
	mux.HandleFunc("GET /v1/u/limited", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"error":{"code":"rate_limited","message":"slow down"}}`)
	})
	mux.HandleFunc("GET /v1/u/proxy", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprint(w, "<html>\n<body>Bad Gateway\x1b[31m</body></html>")
	})
	mux.HandleFunc("GET /v1/u/huge", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"handle":"`+strings.Repeat("x", maxSmallBody)+`"}`)
	})
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return f, hs
}

// auth checks an auth value against the request string of the protocol, and
// that it is fresh; state-changing requests are accepted once.
func (f *fakeServer) auth(w http.ResponseWriter, v, method, path string, bindings ...string) bool {
	ts, sig, err := signing.ParseAuth(v)
	if err != nil {
		http.Error(w, `{"error":{"code":"bad_auth","message":"malformed"}}`, http.StatusUnauthorized)
		return false
	}
	if d := time.Since(time.Unix(ts, 0)); d > 5*time.Minute || d < -5*time.Minute {
		http.Error(w, `{"error":{"code":"stale_auth","message":"stale"}}`, http.StatusUnauthorized)
		return false
	}
	msg := signing.RequestString(testDomain, method, path, ts, bindings...)
	want := testDomain + "\n" + method + "\n" + path + "\n"
	for _, b := range bindings {
		want += b + "\n"
	}
	if string(msg) != want+strconv.FormatInt(ts, 10) {
		f.t.Errorf("request string %q", msg)
	}
	if err := signing.Verify(f.alice.Signer.Alg(), f.alice.Signer.PublicKey(), msg, sig); err != nil {
		http.Error(w, `{"error":{"code":"bad_auth","message":"bad"}}`, http.StatusUnauthorized)
		return false
	}
	if method == "DELETE" {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.usedSigs[string(sig)] {
			http.Error(w, `{"error":{"code":"replayed_auth","message":"replayed"}}`, http.StatusUnauthorized)
			return false
		}
		f.usedSigs[string(sig)] = true
	}
	return true
}

func TestPollAndAckAuth(t *testing.T) {
	ctx := context.Background()
	f, hs := newFakeServer(t)
	c := New(hs.URL+"/", nil)
	page, err := c.Poll(ctx, f.alice, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Messages) != 5 || page.Messages[0].Seq != 5 || page.Next != 20 {
		t.Fatalf("page %+v", page)
	}
	// The same upto acknowledged twice in one second: the second request
	// must not be a replay of the first.
	c.Now = func() time.Time { return time.Unix(time.Now().Unix(), 0) }
	for range 3 {
		if _, err := c.Ack(ctx, f.alice, 20); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Ack(ctx, f.alice, 0); err != nil {
		t.Fatal(err)
	}
	if strings.Join(f.acks, ",") != "20,20,20,0" {
		t.Fatalf("acks %q", f.acks)
	}
	// Auth by another key does not verify, and the stream says why.
	impostor, _ := newUser(t, "ed25519", "alice")
	_, err = c.Stream(ctx, impostor, 0)
	var e *APIError
	if !errors.As(err, &e) || e.Status != 401 || e.Code != "bad_auth" || e.Message != "bad" {
		t.Fatalf("stream with another key: %#v", err)
	}
	// Auth from another server's domain does not verify.
	c2 := New(hs.URL, nil)
	c2.SetDomain("elsewhere.example")
	f.alice.Server = ""
	if _, err := c2.Poll(ctx, f.alice, 0, 0); ErrorCode(err) != "bad_auth" {
		t.Fatalf("poll signed for another domain: %v", err)
	}
	f.alice.Server = testDomain
	if _, err := c2.Poll(ctx, f.alice, 0, 0); err == nil || retryable(err) {
		t.Fatalf("identity of another server: %v", err)
	}
}

func TestAPIErrors(t *testing.T) {
	ctx := context.Background()
	_, hs := newFakeServer(t)
	c := New(hs.URL, nil)

	_, err := c.Lookup(ctx, "limited")
	var e *APIError
	if !errors.As(err, &e) || e.Status != 429 || e.Code != "rate_limited" || e.Message != "slow down" || e.RetryAfter != 3*time.Second {
		t.Fatalf("rate limited: %#v", err)
	}
	if !retryable(err) {
		t.Error("429 is not retryable")
	}
	_, err = c.Lookup(ctx, "proxy")
	if !errors.As(err, &e) || e.Status != 502 || e.Code != "" || strings.ContainsAny(e.Message, "\n\x1b") || !strings.Contains(e.Message, "Bad Gateway") {
		t.Fatalf("proxy error: %#v", err)
	}
	if _, err := c.Lookup(ctx, "huge"); err == nil || !strings.Contains(err.Error(), "over") {
		t.Fatalf("huge answer: %v", err)
	}
	if _, err := c.Lookup(ctx, "nobody"); ErrorCode(err) != "" || !errors.As(err, &e) || e.Status != 404 {
		t.Fatalf("unknown route: %v", err)
	}
	if _, err := New("ftp://x", nil).Health(ctx); err == nil {
		t.Fatal("ftp URL accepted")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"": 0, "0": 0, "-1": 0, "7": 7 * time.Second, "soon": 0,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):       0,
	} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("%q: %v, want %v", v, got, want)
		}
	}
}

func TestListenResumesAcrossDrops(t *testing.T) {
	f, hs := newFakeServer(t)
	c := New(hs.URL, nil)
	var reconnects int
	c.OnListenError = func(err error, wait time.Duration) {
		reconnects++
		if wait <= 0 || wait > time.Second {
			t.Errorf("reconnect wait %v", wait)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got []uint64
	err := c.Listen(ctx, f.alice, 2, func(env Envelope) error {
		pt, err := f.alice.Decrypt(env, f.bob)
		if err != nil || pt.Body != fmt.Sprint("body ", env.Seq) {
			t.Errorf("seq %d: %+v %v", env.Seq, pt, err)
		}
		got = append(got, env.Seq)
		if env.Seq == 20 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Listen: %v", err)
	}
	if fmt.Sprint(got) != "[4 5 9 10 11 20]" {
		t.Fatalf("delivered %v", got)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.Join(f.sinces, ",") != "2,9" {
		t.Fatalf("stream requests since %q", f.sinces)
	}
	if reconnects < 1 {
		t.Fatalf("%d reconnects", reconnects)
	}
}

func TestStreamIdleTimeout(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/inbox/alice/stream", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("since") == "1" { // never answers
			<-r.Context().Done()
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, ": connected\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	hs := httptest.NewServer(mux)
	defer hs.Close()
	alice, _ := newUser(t, "ed25519", "alice")
	c := New(hs.URL, nil)
	c.SetDomain(testDomain)
	c.StreamIdleTimeout = 200 * time.Millisecond

	start := time.Now()
	st, err := c.Stream(context.Background(), alice, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Next(); !errors.Is(err, ErrStreamIdle) {
		t.Fatalf("Next: %v", err)
	}
	if _, err := c.Stream(context.Background(), alice, 1); !errors.Is(err, ErrStreamIdle) {
		t.Fatalf("Stream without an answer: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestStreamRefusesNonSSE(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/inbox/alice/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{}`)
	})
	hs := httptest.NewServer(mux)
	defer hs.Close()
	alice, _ := newUser(t, "ed25519", "alice")
	c := New(hs.URL, nil)
	c.SetDomain(testDomain)
	if _, err := c.Stream(context.Background(), alice, 0); err == nil {
		t.Fatal("accepted a JSON answer as a stream")
	}
}
