// Package natsbus implements server.Broker across replicas over core NATS.
//
// Every replica delivers a published envelope to its own streams through
// a membus.Bus, and publishes it on kez.chat.inbox.<token> for the other
// replicas (the connection is NoEcho, so a replica never receives its own
// publishes back). A replica with at least one stream open for a handle
// holds one NATS subscription on that handle's inbox subject and one on its
// presence subject, kez.chat.presence.<token>, which it answers: a request
// there that finds no responder means no replica streams the handle.
//
// Local delivery never waits for NATS, so one replica keeps working while
// NATS is down; only the other replicas miss what is published meanwhile.
// After a reconnect every local subscription that follows NATS is closed,
// so its stream resumes from the store and misses nothing.
package natsbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"kez.lat/chat/server"
	"kez.lat/chat/server/membus"
)

// Subjects. A handle becomes a subject token by Token. Typing events have
// a subject of their own: followers of an inbox subject over NATS
// WebSocket read everything there as envelopes.
const (
	InboxPrefix    = "kez.chat.inbox."
	PresencePrefix = "kez.chat.presence."
	TypingPrefix   = "kez.chat.typing."
)

// HeaderPrev, on an envelope published on an inbox subject, is the seq of
// the recipient's envelope stored just before it, when the store vouches
// for it (server.Envelope.Prev): a stream that delivered that one may
// deliver this one without reading the store.
const HeaderPrev = "Kez-Prev"

// Token maps a handle to a single subject token (and KV key): handles are
// a-z 0-9 _ - . and a dot would split the subject, so dots become '=',
// which no handle holds. The mapping is one to one.
func Token(handle string) string { return strings.ReplaceAll(handle, ".", "=") }

// InboxSubject is the subject handle's live envelopes are published on.
func InboxSubject(handle string) string { return InboxPrefix + Token(handle) }

// TypingSubject is the subject handle's typing events are relayed on.
func TypingSubject(handle string) string { return TypingPrefix + Token(handle) }

// PresenceSubject is the subject a replica streaming handle answers on.
func PresenceSubject(handle string) string { return PresencePrefix + Token(handle) }

// Config tunes a connection; zero values take the defaults.
type Config struct {
	URL  string
	Name string // connection name shown by the NATS server
	// User and Password authenticate the chat server to NATS (the
	// auth_users of an auth callout); empty: none, or those in URL.
	User, Password string
	// ReconnectBuffer bounds the bytes of publishes held while
	// reconnecting (default 8 MiB); beyond it Publish fails at once.
	ReconnectBuffer int
	// ReconnectWait is the pause between reconnect attempts (default 250ms,
	// with jitter). Reconnects never give up.
	ReconnectWait time.Duration
	// Timeout bounds the initial connection (default 5 s).
	Timeout time.Duration
	// PresenceTimeout bounds a presence query (default 500ms).
	PresenceTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.ReconnectBuffer <= 0 {
		c.ReconnectBuffer = 8 << 20
	}
	if c.ReconnectWait <= 0 {
		c.ReconnectWait = 250 * time.Millisecond
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.PresenceTimeout <= 0 {
		c.PresenceTimeout = 500 * time.Millisecond
	}
	if c.Name == "" {
		c.Name = "kezchat"
	}
	return c
}

// Options returns the nats.go options for cfg, with handlers for the
// connection's events that log to log; extra handlers run after them.
func Options(cfg Config, log *slog.Logger, onReconnect func()) []nats.Option {
	cfg = cfg.withDefaults()
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.Timeout(cfg.Timeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(cfg.ReconnectWait),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.ReconnectBufSize(cfg.ReconnectBuffer),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("NATS disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted())
			if onReconnect != nil {
				onReconnect()
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { log.Debug("NATS connection closed") }),
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	return opts
}

// Connect dials cfg.URL with Options.
func Connect(cfg Config, log *slog.Logger, onReconnect func(), extra ...nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect(cfg.URL, append(Options(cfg, log, onReconnect), extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", redact(cfg.URL), err)
	}
	return nc, nil
}

// redact hides a password in a URL for logs and errors.
func redact(u string) string {
	if at := strings.LastIndex(u, "@"); at >= 0 {
		if i := strings.Index(u, "://"); i >= 0 && i < at {
			return u[:i+3] + "***" + u[at:]
		}
	}
	return u
}

// Bus is a server.Broker across the replicas on one NATS; it also answers
// and asks presence (server.Presence). Local delivery is a membus.Bus; Bus
// adds the NATS subscriptions of the handles that have streams here.
type Bus struct {
	nc    *nats.Conn
	cfg   Config
	log   *slog.Logger
	local *membus.Bus

	// mu guards handles. It is taken inside local's hooks, with local
	// locked, and never the other way round.
	mu      sync.Mutex
	handles map[string]*handle
}

var (
	_ server.Broker   = (*Bus)(nil)
	_ server.Presence = (*Bus)(nil)
)

// handle is what a replica holds on NATS for one handle with open streams.
type handle struct {
	inbox    *nats.Subscription
	typing   *nats.Subscription
	presence *nats.Subscription
	// ready is closed once the NATS server has the subscriptions, so that
	// no envelope published after Subscribe returns can be missed.
	ready chan struct{}
}

// New connects to NATS. Close closes the connection.
func New(cfg Config, log *slog.Logger) (*Bus, error) {
	cfg = cfg.withDefaults()
	b := &Bus{cfg: cfg, log: log, handles: make(map[string]*handle)}
	b.local = membus.NewWithHooks(membus.Hooks{First: b.subscribeNATS, Last: b.unsubscribeNATS})
	nc, err := Connect(cfg, log, b.local.DropAll,
		nats.NoEcho(),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil && errors.Is(err, nats.ErrSlowConsumer) {
				if h, ok := strings.CutPrefix(sub.Subject, InboxPrefix); ok {
					// What it dropped never reaches the streams, which
					// resume from the store.
					b.local.Drop(handleOf(h))
				}
			}
			log.Warn("NATS error", "err", err)
		}))
	if err != nil {
		return nil, err
	}
	b.nc = nc
	return b, nil
}

// handleOf is the handle whose Token is token.
func handleOf(token string) string { return strings.ReplaceAll(token, "=", ".") }

// Conn is the bus's connection.
func (b *Bus) Conn() *nats.Conn { return b.nc }

// Close drains nothing: streams resume from the store.
func (b *Bus) Close() {
	b.nc.Close()
}

// Ping fails while the connection to NATS is down.
func (b *Bus) Ping(context.Context) error {
	if s := b.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("NATS connection is %s", s)
	}
	return nil
}

// wire is an envelope on an inbox subject: what an SSE event carries.
type wire struct {
	Seq        uint64          `json:"seq"`
	ReceivedAt int64           `json:"received_at"`
	Message    json.RawMessage `json:"message"`
}

// Publish delivers e to this replica's subscriptions and publishes it for
// the others. While NATS is reconnecting the publish is buffered (bounded);
// an error means other replicas' streams learn of e only from the store.
func (b *Bus) Publish(ctx context.Context, e *server.Envelope) error {
	_ = b.local.Publish(ctx, e)
	data, err := e.MarshalJSON()
	if err != nil {
		return fmt.Errorf("encoding envelope %d for %s: %w", e.Seq, e.Recipient, err)
	}
	m := &nats.Msg{Subject: InboxSubject(e.Recipient), Data: data}
	if e.Prev != 0 {
		m.Header = nats.Header{HeaderPrev: []string{strconv.FormatUint(e.Prev, 10)}}
	}
	if err := b.nc.PublishMsg(m); err != nil {
		return fmt.Errorf("publishing envelope %d for %s: %w", e.Seq, e.Recipient, err)
	}
	return nil
}

// Subscribe follows recipient's envelopes from every replica.
//
// It returns once the NATS server has the subscription (or NATS is down, in
// which case the reconnect ends the subscription and its stream resumes).
func (b *Bus) Subscribe(ctx context.Context, recipient string, buffer int) (server.Subscription, error) {
	sub, err := b.local.Subscribe(ctx, recipient, buffer)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	h := b.handles[recipient]
	b.mu.Unlock()
	if h == nil {
		// Dropped already (a reconnect): its closed channel sends the
		// stream back to the store.
		return sub, nil
	}
	select {
	case <-h.ready:
		return sub, nil
	case <-ctx.Done():
		sub.Close()
		return nil, fmt.Errorf("subscribing to the inbox of %s: %w", recipient, ctx.Err())
	}
}

// subscribeNATS subscribes to recipient's inbox and presence subjects, as
// its first local subscription is added.
func (b *Bus) subscribeNATS(recipient string) error {
	h := &handle{ready: make(chan struct{})}
	var err error
	h.inbox, err = b.nc.Subscribe(InboxSubject(recipient), func(m *nats.Msg) { b.receive(recipient, m) })
	if err != nil {
		return fmt.Errorf("subscribing to the inbox of %s: %w", recipient, err)
	}
	h.typing, err = b.nc.Subscribe(TypingSubject(recipient), func(m *nats.Msg) { b.receiveTyping(recipient, m) })
	if err != nil {
		_ = h.inbox.Unsubscribe()
		return fmt.Errorf("subscribing to the typing events of %s: %w", recipient, err)
	}
	h.presence, err = b.nc.Subscribe(PresenceSubject(recipient), func(m *nats.Msg) {
		if m.Reply != "" {
			_ = m.Respond(nil)
		}
	})
	if err != nil {
		_ = h.inbox.Unsubscribe()
		_ = h.typing.Unsubscribe()
		return fmt.Errorf("subscribing to the presence of %s: %w", recipient, err)
	}
	// Bounded: past these the NATS client drops messages and reports a
	// slow consumer, which closes the handle's subscriptions.
	_ = h.inbox.SetPendingLimits(4096, 32<<20)
	// Typing events past these are dropped (and logged as a slow
	// consumer); the streams stay open, since nothing stored was lost.
	_ = h.typing.SetPendingLimits(256, 256<<10)
	b.mu.Lock()
	b.handles[recipient] = h
	b.mu.Unlock()
	go func() {
		fctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
		defer cancel()
		if err := b.nc.FlushWithContext(fctx); err != nil {
			b.log.Debug("NATS flush after subscribing", "handle", recipient, "err", err)
		}
		close(h.ready)
	}()
	return nil
}

// unsubscribeNATS ends recipient's NATS subscriptions, as its last local
// subscription goes.
func (b *Bus) unsubscribeNATS(recipient string) {
	b.mu.Lock()
	h := b.handles[recipient]
	delete(b.handles, recipient)
	b.mu.Unlock()
	if h != nil {
		_ = h.inbox.Unsubscribe()
		_ = h.typing.Unsubscribe()
		_ = h.presence.Unsubscribe()
	}
}

// receive decodes an envelope another replica published.
func (b *Bus) receive(recipient string, m *nats.Msg) {
	var w wire
	if err := json.Unmarshal(m.Data, &w); err != nil || w.Seq == 0 {
		b.log.Warn("dropping a malformed envelope from NATS", "subject", m.Subject, "err", err)
		return
	}
	prev, _ := strconv.ParseUint(m.Header.Get(HeaderPrev), 10, 64)
	if prev >= w.Seq {
		prev = 0
	}
	_ = b.local.Publish(context.Background(), &server.Envelope{
		Recipient:  recipient,
		Seq:        w.Seq,
		Prev:       prev,
		ReceivedAt: time.Unix(w.ReceivedAt, 0),
		Message:    w.Message,
	})
}

// typingWire is a typing event on a typing subject: what its SSE event
// carries.
type typingWire struct {
	From string `json:"from"`
	CT   string `json:"ct"`
}

// PublishTyping delivers t to this replica's subscriptions and publishes
// it for the others, at most once: an error means other replicas' streams
// miss it, which the sender's next indicator (within seconds) makes good.
func (b *Bus) PublishTyping(ctx context.Context, t *server.Typing) error {
	_ = b.local.PublishTyping(ctx, t)
	data, err := json.Marshal(typingWire{From: t.From, CT: t.CT})
	if err != nil {
		return fmt.Errorf("encoding a typing event for %s: %w", t.Recipient, err)
	}
	if err := b.nc.Publish(TypingSubject(t.Recipient), data); err != nil {
		return fmt.Errorf("publishing a typing event for %s: %w", t.Recipient, err)
	}
	return nil
}

// receiveTyping decodes a typing event another replica published.
func (b *Bus) receiveTyping(recipient string, m *nats.Msg) {
	var w typingWire
	// What goes on a stream must be what the sending replica checked: a
	// handle and base64url, which need no escaping in the event's JSON.
	if err := json.Unmarshal(m.Data, &w); err != nil || !plainToken(w.From) || !plainToken(w.CT) {
		b.log.Warn("dropping a malformed typing event from NATS", "subject", m.Subject, "err", err)
		return
	}
	_ = b.local.PublishTyping(context.Background(), &server.Typing{Recipient: recipient, From: w.From, CT: w.CT})
}

// plainToken reports whether s is 1 to 1024 bytes of handle and base64url
// characters.
func plainToken(s string) bool {
	if len(s) == 0 || len(s) > 1024 {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// Streaming reports whether any other replica has a stream open for
// handle: a presence request that no one answers (NATS reports no
// responders at once) means none.
func (b *Bus) Streaming(ctx context.Context, h string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.PresenceTimeout)
	defer cancel()
	_, err := b.nc.RequestWithContext(ctx, PresenceSubject(h), nil)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, nats.ErrNoResponders):
		return false, nil
	default:
		return false, fmt.Errorf("asking who streams %s: %w", h, err)
	}
}
