package push

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"kez.lat/chat/server"
	"kez.lat/chat/server/push/pushtest"
)

const testSubject = "mailto:ops@chat.test"

// memStore keeps subscriptions in memory; the SQLite store is tested with
// its package.
type memStore struct {
	mu   sync.Mutex
	subs map[string][]*server.PushSubscription
}

func (m *memStore) PushSubscriptions(_ context.Context, handle string) ([]*server.PushSubscription, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.subs[handle]), nil
}

func (m *memStore) DeletePushSubscription(_ context.Context, handle, endpoint string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.subs[handle])
	m.subs[handle] = slices.DeleteFunc(m.subs[handle], func(s *server.PushSubscription) bool { return s.Endpoint == endpoint })
	return len(m.subs[handle]) < n, nil
}

func (m *memStore) add(t testing.TB, handle string, j server.PushSubscriptionJSON) string {
	t.Helper()
	p256dh, err := base64.RawURLEncoding.DecodeString(j.Keys.P256dh)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := base64.RawURLEncoding.DecodeString(j.Keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.subs == nil {
		m.subs = make(map[string][]*server.PushSubscription)
	}
	m.subs[handle] = append(m.subs[handle], &server.PushSubscription{
		Handle: handle, Endpoint: j.Endpoint, P256dh: p256dh, Auth: auth, CreatedAt: time.Now(),
	})
	return j.Endpoint
}

func (m *memStore) has(handle, endpoint string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.ContainsFunc(m.subs[handle], func(s *server.PushSubscription) bool { return s.Endpoint == endpoint })
}

// harness is a real Sender pushing to a local push service over loopback.
type harness struct {
	svc    *pushtest.Service
	store  *memStore
	sender *Sender
	reg    *prometheus.Registry
}

// newHarness starts a sender with cfg (key, and subject unless set, filled
// in) whose
// policy trusts the local push service. start=false leaves its workers
// stopped.
func newHarness(t testing.TB, cfg Config, start bool) *harness {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Key = key
	if cfg.Subject == "" {
		cfg.Subject = testSubject
	}
	subject, err := NormalizeSubject(cfg.Subject)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{
		svc:   pushtest.New(t, subject, &key.PublicKey),
		store: &memStore{},
		reg:   prometheus.NewRegistry(),
	}
	policy, err := NewPolicy([]string{h.svc.Origin()})
	if err != nil {
		t.Fatal(err)
	}
	h.sender = NewSender(cfg, h.store, policy, testLogger(t), h.reg)
	if start {
		h.sender.Start()
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.sender.Close(ctx)
	})
	return h
}

func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// metric is the value of the named counter or gauge; with outcome, of its
// series with that outcome label.
func (h *harness) metric(t testing.TB, name, outcome string) float64 {
	t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if outcome != "" && !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
				return l.GetName() == "outcome" && l.GetValue() == outcome
			}) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s{outcome=%q}", name, outcome)
	return 0
}

// outcomes counts pushes by outcome.
func (h *harness) outcomes(t testing.TB, outcome string) float64 {
	t.Helper()
	return h.metric(t, "kezchat_push_notifications_total", outcome)
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// next returns the next push the service accepted, failing the test after
// 10 s.
func (h *harness) next(t testing.TB) pushtest.Push {
	t.Helper()
	select {
	case p := <-h.svc.Received():
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for a push")
		return pushtest.Push{}
	}
}

// noPush fails the test if the service accepted a push.
func (h *harness) noPush(t testing.TB) {
	t.Helper()
	select {
	case p := <-h.svc.Received():
		t.Fatalf("unexpected push to %s: %s", p.Endpoint, p.Plaintext)
	default:
	}
}

func pushtestReply(status int, retryAfter string) pushtest.Reply {
	return pushtest.Reply{Status: status, Header: http.Header{"Retry-After": {retryAfter}}}
}
