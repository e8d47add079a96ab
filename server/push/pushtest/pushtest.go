// Package pushtest runs a local Web Push service for tests and for
// kezchat-bench. It is not a mock: like a real push service it
// authenticates every request (VAPID, RFC 8292), refuses malformed ones,
// and decrypts the payload (RFC 8291) as the subscribed browser would, so a
// caller sees exactly what a device would get. Tests can also script
// failures: status codes, Retry-After, hangs.
//
// The package does not import testing, so a command (kezchat-bench) can
// link it: New takes a TB, which testing.TB satisfies, and NewServer needs
// none.
package pushtest

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"time"

	"kez.lat/chat/server"
)

// MaxBody is the largest body the service takes: RFC 8030 §7.2 has push
// services accept at least 4096 octets, and some (Apple) take no more.
const MaxBody = 4096

// Push is a push message the service accepted and decrypted.
type Push struct {
	Endpoint  string
	Plaintext []byte // decrypted, without padding
	// TTL, Urgency and Topic are the request's headers.
	TTL, Urgency, Topic string
	At                  time.Time // when it arrived
}

// Reply is a scripted answer to a valid push.
type Reply struct {
	Status int
	Header http.Header // e.g. Retry-After
}

// TB is the part of testing.TB that New uses.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Service is a push service on a 127.0.0.1 port. New stops it when the
// test ends; a Service from NewServer runs until Close.
type Service struct {
	t        TB // nil outside a test
	srv      *http.Server
	url      string // http://127.0.0.1:port
	subject  string
	key      *ecdsa.PublicKey
	received chan Push
	done     chan struct{} // closed by Close: hung requests return
	closed   sync.Once
	served   chan struct{} // closed when Serve has returned

	mu          sync.Mutex
	browsers    map[string]*browser // by endpoint
	scripts     map[string][]script
	hung        map[string]bool
	requests    map[string]int
	refused     int
	lastRefusal error
}

// browser is the private half of a subscription: what decrypts its pushes.
type browser struct {
	key  *ecdh.PrivateKey
	auth []byte
}

type script struct {
	reply Reply
	left  int
}

// New starts a push service that accepts pushes authenticated by wantKey
// with VAPID subject wantSubject (e.g. "mailto:ops@chat.test"), logs each
// refusal to t and is closed when the test ends.
func New(t TB, wantSubject string, wantKey *ecdsa.PublicKey) *Service {
	t.Helper()
	s, err := start(t, wantSubject, wantKey)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// NewServer starts a push service outside a test, with the checks New's
// makes: it accepts pushes authenticated by wantKey with VAPID subject
// wantSubject. Refusals are counted (Refused), not logged. The caller must
// Close it.
func NewServer(wantSubject string, wantKey *ecdsa.PublicKey) (*Service, error) {
	return start(nil, wantSubject, wantKey)
}

func start(t TB, wantSubject string, wantKey *ecdsa.PublicKey) (*Service, error) {
	if wantKey == nil {
		return nil, fmt.Errorf("pushtest: no VAPID key to accept")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("pushtest: listening on a loopback port: %w", err)
	}
	s := &Service{
		t:        t,
		url:      "http://" + ln.Addr().String(),
		subject:  wantSubject,
		key:      wantKey,
		received: make(chan Push, 1024),
		done:     make(chan struct{}),
		served:   make(chan struct{}),
		browsers: make(map[string]*browser),
		scripts:  make(map[string][]script),
		hung:     make(map[string]bool),
		requests: make(map[string]int),
	}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serve),
		ReadHeaderTimeout: 10 * time.Second,
		// A sender that hangs up mid-request is the sender's business, not
		// a line on stderr.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(s.served)
		s.srv.Serve(ln) // returns http.ErrServerClosed once Close runs
	}()
	return s, nil
}

// Close stops the service: hung requests return, and Close waits for every
// request in flight to finish (so none logs after a test ends). Calling it
// again does nothing.
func (s *Service) Close() {
	s.closed.Do(func() {
		close(s.done)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if s.srv.Shutdown(ctx) != nil {
			s.srv.Close()
		}
		<-s.served
	})
}

// Origin is the service's origin, e.g. "http://127.0.0.1:43123": the
// entry that widens a push.Policy to trust it.
func (s *Service) Origin() string { return s.url }

// Subscribe creates a subscription the way a browser's
// pushManager.subscribe does: a fresh P-256 key pair and 16-byte auth
// secret, and an endpoint of its own on this service.
func (s *Service) Subscribe() server.PushSubscriptionJSON {
	key, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		// crypto/rand does not fail (it crashes the program instead), so
		// neither does this.
		panic(fmt.Sprintf("pushtest: generating a subscription key: %v", err))
	}
	auth := make([]byte, 16)
	rand.Read(auth)
	var j server.PushSubscriptionJSON
	j.Endpoint = s.url + "/push/" + rand.Text()
	j.Keys.P256dh = base64.RawURLEncoding.EncodeToString(key.PublicKey().Bytes())
	j.Keys.Auth = base64.RawURLEncoding.EncodeToString(auth)
	s.mu.Lock()
	s.browsers[j.Endpoint] = &browser{key: key, auth: auth}
	s.mu.Unlock()
	return j
}

// Received yields the pushes the service accepted, in arrival order. It
// buffers 1024; past that, accepting a push waits for the test to read.
func (s *Service) Received() <-chan Push { return s.received }

// SetResponse makes the next times valid pushes to endpoint answer status.
func (s *Service) SetResponse(endpoint string, status, times int) {
	s.SetReply(endpoint, Reply{Status: status}, times)
}

// SetReply makes the next times valid pushes to endpoint answer r; replies
// set earlier are used first.
func (s *Service) SetReply(endpoint string, r Reply, times int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[endpoint] = append(s.scripts[endpoint], script{reply: r, left: times})
}

// Hang makes valid pushes to endpoint wait for an answer until the client
// gives up or the test ends.
func (s *Service) Hang(endpoint string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hung[endpoint] = true
}

// Requests reports how many POSTs reached endpoint, whatever their answer.
func (s *Service) Requests(endpoint string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[endpoint]
}

var (
	base64url = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)
	urgencies = map[string]bool{"very-low": true, "low": true, "normal": true, "high": true}
)

func (s *Service) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "push takes POST", http.StatusMethodNotAllowed)
		return
	}
	endpoint := s.url + r.URL.Path
	s.mu.Lock()
	b := s.browsers[endpoint]
	s.requests[endpoint]++
	s.mu.Unlock()
	if b == nil {
		// What push services answer for a subscription they do not know.
		s.refuse(w, endpoint, http.StatusNotFound, errors.New("no such subscription"))
		return
	}

	check := vapidCheck{audience: s.url, subject: s.subject, key: s.key, now: time.Now()}
	if err := check.verify(r.Header.Get("Authorization")); err != nil {
		s.refuse(w, endpoint, err.status, err)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		s.refuse(w, endpoint, http.StatusBadRequest, fmt.Errorf("reading body: %w", err))
		return
	}
	push := Push{
		Endpoint: endpoint,
		TTL:      r.Header.Get("TTL"),
		Urgency:  r.Header.Get("Urgency"),
		Topic:    r.Header.Get("Topic"),
		At:       time.Now(),
	}
	if status, err := checkRequest(r.Header, body, push); err != nil {
		s.refuse(w, endpoint, status, err)
		return
	}
	if push.Plaintext, err = Decrypt(body, b.key, b.auth); err != nil {
		s.refuse(w, endpoint, http.StatusBadRequest, fmt.Errorf("decrypting: %w", err))
		return
	}

	if reply, hang := s.scripted(endpoint); hang {
		select {
		case <-r.Context().Done():
		case <-s.done:
		}
		return
	} else if reply != nil {
		for k, v := range reply.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(reply.Status)
		return
	}
	select {
	case s.received <- push:
	case <-r.Context().Done():
		return
	case <-s.done:
		return
	}
	w.Header().Set("Location", s.url+"/message/"+rand.Text())
	w.WriteHeader(http.StatusCreated)
}

// checkRequest checks the headers and size RFC 8030 and RFC 8291 require.
func checkRequest(h http.Header, body []byte, p Push) (int, error) {
	switch {
	case len(body) > MaxBody:
		return http.StatusRequestEntityTooLarge, fmt.Errorf("body over %d bytes", MaxBody)
	case h.Get("Content-Encoding") != "aes128gcm":
		return http.StatusBadRequest, fmt.Errorf("Content-Encoding %q, want aes128gcm", h.Get("Content-Encoding"))
	case p.Urgency != "" && !urgencies[p.Urgency]:
		return http.StatusBadRequest, fmt.Errorf("Urgency %q is not a known value", p.Urgency)
	case p.Topic != "" && !base64url.MatchString(p.Topic):
		return http.StatusBadRequest, fmt.Errorf("Topic %q is not at most 32 base64url characters", p.Topic)
	}
	if ttl, err := strconv.ParseUint(p.TTL, 10, 32); err != nil {
		return http.StatusBadRequest, fmt.Errorf("TTL %q is not a number of seconds", p.TTL)
	} else if ttl > 28*24*3600 {
		// FCM's limit; others are lower or clamp.
		return http.StatusBadRequest, fmt.Errorf("TTL %d is over 28 days", ttl)
	}
	return 0, nil
}

// scripted returns the scripted reply for endpoint's next valid push, if
// any, or reports that the push should hang.
func (s *Service) scripted(endpoint string) (*Reply, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hung[endpoint] {
		return nil, true
	}
	q := s.scripts[endpoint]
	if len(q) == 0 {
		return nil, false
	}
	reply := q[0].reply
	if q[0].left--; q[0].left <= 0 {
		s.scripts[endpoint] = q[1:]
	}
	return &reply, false
}

// Refused reports how many requests the service refused (bad VAPID,
// headers, body, or an unknown subscription) and why it refused the last.
func (s *Service) Refused() (n int, last error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused, s.lastRefusal
}

func (s *Service) refuse(w http.ResponseWriter, endpoint string, status int, err error) {
	why := fmt.Errorf("refusing a push to %s with %d: %w", endpoint, status, err)
	s.mu.Lock()
	s.refused++
	s.lastRefusal = why
	s.mu.Unlock()
	if s.t != nil {
		s.t.Logf("pushtest: %v", why)
	}
	http.Error(w, err.Error(), status)
}
