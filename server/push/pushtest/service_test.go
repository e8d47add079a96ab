package pushtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	webpush "github.com/SherClockHolmes/webpush-go"
	"github.com/golang-jwt/jwt/v5"
)

const subject = "mailto:ops@chat.test"

// sender sends pushes with the webpush-go library, as the chat server does,
// letting a test change each request just before it leaves.
type sender struct {
	t      *testing.T
	key    *ecdsa.PrivateKey
	tamper func(*http.Request)
}

func (s *sender) Do(r *http.Request) (*http.Response, error) {
	if s.tamper != nil {
		s.tamper(r)
	}
	return http.DefaultClient.Do(r)
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// send pushes payload to sub and returns the status and body of the answer.
func (s *sender) send(sub *webpush.Subscription, payload string, opts webpush.Options) (int, string) {
	s.t.Helper()
	opts.HTTPClient = s
	opts.Subscriber = strings.TrimPrefix(subject, "mailto:") // webpush-go adds mailto: itself
	opts.VAPIDPrivateKey = vapidPrivate(s.t, s.key)
	opts.VAPIDPublicKey = vapidPublic(s.t, s.key)
	if opts.TTL == 0 {
		opts.TTL = 60
	}
	resp, err := webpush.SendNotificationWithContext(s.t.Context(), []byte(payload), sub, &opts)
	if err != nil {
		s.t.Fatalf("sending: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func subscribe(svc *Service) *webpush.Subscription {
	j := svc.Subscribe()
	return &webpush.Subscription{Endpoint: j.Endpoint, Keys: webpush.Keys{Auth: j.Keys.Auth, P256dh: j.Keys.P256dh}}
}

func TestServiceDeliversTheDecryptedPushAndItsHeaders(t *testing.T) {
	s := &sender{t: t, key: newKey(t)}
	svc := New(t, subject, &s.key.PublicKey)
	sub := subscribe(svc)

	status, body := s.send(sub, `{"hello":"world"}`, webpush.Options{TTL: 86400, Urgency: webpush.UrgencyHigh, Topic: "abc-_09"})
	if status != http.StatusCreated {
		t.Fatalf("status = %d (%s), want 201", status, body)
	}
	select {
	case p := <-svc.Received():
		if p.Endpoint != sub.Endpoint || string(p.Plaintext) != `{"hello":"world"}` ||
			p.TTL != "86400" || p.Urgency != "high" || p.Topic != "abc-_09" {
			t.Fatalf("received %+v", p)
		}
	default:
		t.Fatal("a push answered 201 is not on Received")
	}
	if n := svc.Requests(sub.Endpoint); n != 1 {
		t.Fatalf("Requests = %d, want 1", n)
	}
}

// signedAuth is a vapid Authorization header for claims, signed by key.
func signedAuth(t *testing.T, key *ecdsa.PrivateKey, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodES256, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := key.PublicKey.Bytes()
	return "vapid t=" + tok + ", k=" + base64.RawURLEncoding.EncodeToString(pub)
}

func TestServiceRefusesWhatARealPushServiceRefuses(t *testing.T) {
	key := newKey(t)
	stranger := newKey(t)
	svcKey := &key.PublicKey
	origin := func(r *http.Request) string { return "http://" + r.URL.Host }
	claims := func(r *http.Request, aud string, exp time.Duration, sub string) jwt.MapClaims {
		if aud == "" {
			aud = origin(r)
		}
		return jwt.MapClaims{"aud": aud, "exp": time.Now().Add(exp).Unix(), "sub": sub}
	}
	tests := []struct {
		name   string
		key    *ecdsa.PrivateKey // signs; default key
		opts   webpush.Options
		tamper func(t *testing.T, r *http.Request)
		want   int
	}{
		{name: "no Authorization", want: 401,
			tamper: func(t *testing.T, r *http.Request) { r.Header.Del("Authorization") }},
		{name: "the legacy WebPush scheme", want: 401,
			tamper: func(t *testing.T, r *http.Request) { r.Header.Set("Authorization", "WebPush abc") }},
		{name: "another application server's key", key: stranger, want: 403},
		{name: "a JWT signed by a key other than k", want: 403,
			tamper: func(t *testing.T, r *http.Request) {
				h := signedAuth(t, stranger, claims(r, "", time.Hour, subject))
				pub, _ := key.PublicKey.Bytes()
				r.Header.Set("Authorization", h[:strings.Index(h, "k=")]+"k="+base64.RawURLEncoding.EncodeToString(pub))
			}},
		{name: "aud another origin", want: 403,
			tamper: func(t *testing.T, r *http.Request) {
				r.Header.Set("Authorization", signedAuth(t, key, claims(r, "https://push.example", time.Hour, subject)))
			}},
		{name: "exp in the past", want: 403,
			tamper: func(t *testing.T, r *http.Request) {
				r.Header.Set("Authorization", signedAuth(t, key, claims(r, "", -time.Minute, subject)))
			}},
		{name: "exp more than 24 hours away", want: 403,
			tamper: func(t *testing.T, r *http.Request) {
				r.Header.Set("Authorization", signedAuth(t, key, claims(r, "", 25*time.Hour, subject)))
			}},
		{name: "another subject", want: 403,
			tamper: func(t *testing.T, r *http.Request) {
				r.Header.Set("Authorization", signedAuth(t, key, claims(r, "", time.Hour, "mailto:else@chat.test")))
			}},
		{name: "an unknown subscription", want: 404,
			tamper: func(t *testing.T, r *http.Request) { r.URL.Path = "/push/gone" }},
		{name: "Content-Encoding aesgcm", want: 400,
			tamper: func(t *testing.T, r *http.Request) { r.Header.Set("Content-Encoding", "aesgcm") }},
		{name: "no TTL", want: 400,
			tamper: func(t *testing.T, r *http.Request) { r.Header.Del("TTL") }},
		{name: "an unknown Urgency", want: 400,
			tamper: func(t *testing.T, r *http.Request) { r.Header.Set("Urgency", "urgent") }},
		{name: "a Topic over 32 characters", want: 400, opts: webpush.Options{Topic: strings.Repeat("a", 33)}},
		{name: "a Topic outside base64url", want: 400, opts: webpush.Options{Topic: "a+b"}},
		{name: "a body that does not decrypt", want: 400,
			tamper: func(t *testing.T, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				b[len(b)-1] ^= 1
				r.Body = io.NopCloser(strings.NewReader(string(b)))
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := New(t, subject, svcKey)
			s := &sender{t: t, key: key}
			if tt.key != nil {
				s.key = tt.key
			}
			if tt.tamper != nil {
				s.tamper = func(r *http.Request) { tt.tamper(t, r) }
			}
			if status, body := s.send(subscribe(svc), "x", tt.opts); status != tt.want {
				t.Fatalf("status = %d (%s), want %d", status, body, tt.want)
			}
			select {
			case p := <-svc.Received():
				t.Fatalf("a refused push was delivered: %+v", p)
			default:
			}
		})
	}
}

func TestServiceAnswersScriptedRepliesInOrderThenAccepts(t *testing.T) {
	s := &sender{t: t, key: newKey(t)}
	svc := New(t, subject, &s.key.PublicKey)
	sub := subscribe(svc)
	svc.SetReply(sub.Endpoint, Reply{Status: 429, Header: http.Header{"Retry-After": {"7"}}}, 1)
	svc.SetResponse(sub.Endpoint, 500, 2)

	var got []int
	for range 4 {
		status, _ := s.send(sub, "x", webpush.Options{})
		got = append(got, status)
	}
	if want := []int{429, 500, 500, 201}; !slices.Equal(got, want) {
		t.Fatalf("statuses = %v, want %v", got, want)
	}
	if n := svc.Requests(sub.Endpoint); n != 4 {
		t.Fatalf("Requests = %d, want 4", n)
	}
}

func TestServiceHangsUntilTheClientGivesUp(t *testing.T) {
	s := &sender{t: t, key: newKey(t)}
	svc := New(t, subject, &s.key.PublicKey)
	sub := subscribe(svc)
	svc.Hang(sub.Endpoint)

	client := &http.Client{Timeout: 50 * time.Millisecond}
	opts := webpush.Options{HTTPClient: client, Subscriber: "ops@chat.test", TTL: 1,
		VAPIDPrivateKey: vapidPrivate(t, s.key), VAPIDPublicKey: vapidPublic(t, s.key)}
	resp, err := webpush.SendNotificationWithContext(t.Context(), []byte("x"), sub, &opts)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a hung push answered %d", resp.StatusCode)
	}
}

func vapidPrivate(t *testing.T, k *ecdsa.PrivateKey) string {
	t.Helper()
	b, err := k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func vapidPublic(t *testing.T, k *ecdsa.PrivateKey) string {
	t.Helper()
	b, err := k.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// TestNewServerWorksOutsideATest runs the service as kezchat-bench does,
// without a testing.TB: it verifies and decrypts as New's does, counts
// what it refuses, and Close ends hung requests and may be called twice.
func TestNewServerWorksOutsideATest(t *testing.T) {
	s := &sender{t: t, key: newKey(t)}
	svc, err := NewServer(subject, &s.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	sub := subscribe(svc)
	if status, body := s.send(sub, `{"n":1}`, webpush.Options{}); status != http.StatusCreated {
		t.Fatalf("status = %d (%s), want 201", status, body)
	}
	if p := <-svc.Received(); string(p.Plaintext) != `{"n":1}` || p.Endpoint != sub.Endpoint {
		t.Fatalf("received %+v", p)
	}
	if n, last := svc.Refused(); n != 0 || last != nil {
		t.Fatalf("Refused = %d, %v before any refusal", n, last)
	}

	stranger := &sender{t: t, key: newKey(t)}
	if status, _ := stranger.send(sub, "x", webpush.Options{}); status != http.StatusForbidden {
		t.Fatalf("a push under another key answered %d, want 403", status)
	}
	if n, last := svc.Refused(); n != 1 || last == nil || !strings.Contains(last.Error(), "403") {
		t.Fatalf("Refused = %d, %v; want 1 and the 403", n, last)
	}

	hung := subscribe(svc)
	svc.Hang(hung.Endpoint)
	errc := make(chan error, 1)
	go func() {
		opts := webpush.Options{Subscriber: "ops@chat.test", TTL: 1,
			VAPIDPrivateKey: vapidPrivate(t, s.key), VAPIDPublicKey: vapidPublic(t, s.key)}
		resp, err := webpush.SendNotificationWithContext(context.Background(), []byte("x"), hung, &opts)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	eventually(t, func() bool { return svc.Requests(hung.Endpoint) == 1 })
	closed := make(chan struct{})
	go func() { svc.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return with a hung request in flight")
	}
	<-errc // answered or cut off; either way no longer hanging
	svc.Close()
}

func eventually(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
