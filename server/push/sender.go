package push

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	webpush "github.com/SherClockHolmes/webpush-go"
	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
)

// SubscriptionStore is the part of server.Store the sender uses.
type SubscriptionStore interface {
	PushSubscriptions(ctx context.Context, handle string) ([]*server.PushSubscription, error)
	DeletePushSubscription(ctx context.Context, handle, endpoint string) (bool, error)
}

// Config tunes a Sender; zero values take the defaults.
type Config struct {
	Key *ecdsa.PrivateKey // the VAPID key
	// Subject is the VAPID subject, a mailto: or https: URL
	// (NormalizeSubject).
	Subject string
	// TTL is how long a push service keeps a push for an offline device
	// (default 24 hours).
	TTL time.Duration
	// Workers send concurrently (default 16); QueueSize notices wait for
	// them (default 4096), and more are dropped.
	Workers, QueueSize int
	// MaxAttempts bounds the requests per subscription and notice, the
	// first included (default 3).
	MaxAttempts int
	// Timeout bounds each request to a push service or the store
	// (default 10 s).
	Timeout time.Duration
	// RetryBase is the first retry's backoff, doubled for each next one
	// (default 1 s); RetryMax caps backoffs, and a push service that asks
	// to wait longer (Retry-After) is not retried (default 30 s).
	RetryBase, RetryMax time.Duration
	// Presence, when set, is asked before a recipient with subscriptions
	// is pushed to: a recipient some other replica streams to gets no push.
	// When it cannot answer, the push is sent.
	Presence server.Presence
}

func (c Config) withDefaults() Config {
	orDefault := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	orDefault(&c.TTL, 24*time.Hour)
	orDefault(&c.Timeout, 10*time.Second)
	orDefault(&c.RetryBase, time.Second)
	orDefault(&c.RetryMax, 30*time.Second)
	if c.Workers <= 0 {
		c.Workers = 16
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 4096
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	return c
}

// Sender sends a push to each of a recipient's subscriptions when a
// message for them is stored, off the request path: Notify only queues,
// and a bounded pool of workers sends. Pushes are best effort, as the
// messages themselves are durable. Sender implements server.Pusher.
type Sender struct {
	cfg      Config
	store    SubscriptionStore
	policy   *Policy
	log      *slog.Logger
	metrics  *metrics
	opts     webpush.Options // shared by every push; Topic set per recipient
	topicKey []byte

	// ctx ends when Close gives up waiting: in-flight requests are
	// abandoned and queued notices dropped.
	ctx    context.Context
	cancel context.CancelFunc
	queue  chan notice
	wg     sync.WaitGroup

	mu      sync.RWMutex // guards closed and started; Notify reads
	closed  bool
	started bool
}

type notice struct {
	handle string
	seq    uint64
}

var _ server.Pusher = (*Sender)(nil)

// NewSender returns a Sender that sends through policy's HTTP client, logs
// to log (slog.Default() when nil) and registers its metrics on reg (none
// when nil). It panics when cfg.Key is not a P-256 key or cfg.Subject is
// not a valid subject, which startup checks first (LoadOrCreateKey,
// NormalizeSubject).
func NewSender(cfg Config, store SubscriptionStore, policy *Policy, log *slog.Logger, reg prometheus.Registerer) *Sender {
	cfg = cfg.withDefaults()
	if cfg.Key == nil || cfg.Key.Curve != elliptic.P256() {
		panic("push: the VAPID key must be a P-256 key")
	}
	priv, err := cfg.Key.Bytes()
	if err != nil {
		panic(fmt.Sprintf("push: VAPID key: %v", err))
	}
	subject, err := NormalizeSubject(cfg.Subject)
	if err != nil {
		panic(fmt.Sprintf("push: %v", err))
	}
	// The topic key is derived from the VAPID key so that it is secret and
	// stable for as long as the subscriptions are.
	topicKey, err := hkdf.Key(sha256.New, priv, nil, "kez-push-topic/v1", 32)
	if err != nil {
		panic(fmt.Sprintf("push: deriving the topic key: %v", err))
	}
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sender{
		cfg:    cfg,
		store:  store,
		policy: policy,
		log:    log,
		opts: webpush.Options{
			HTTPClient: policy.HTTPClient(cfg.Timeout),
			// webpush-go prefixes "mailto:" to any subscriber that does not
			// start with "https:", so it takes the bare address.
			Subscriber:      strings.TrimPrefix(subject, "mailto:"),
			VAPIDPublicKey:  PublicKey(cfg.Key),
			VAPIDPrivateKey: base64.RawURLEncoding.EncodeToString(priv),
			TTL:             int(cfg.TTL / time.Second),
			// iOS delivers web pushes of lower urgency late or not at all.
			Urgency: webpush.UrgencyHigh,
		},
		topicKey: topicKey,
		ctx:      ctx,
		cancel:   cancel,
		queue:    make(chan notice, cfg.QueueSize),
	}
	s.metrics = newMetrics(reg, s.QueueDepth)
	return s
}

// Notify queues a notice that handle's inbox holds seq. It never blocks:
// when the queue is full, or the sender closed, the notice is dropped and
// counted.
func (s *Sender) Notify(handle string, seq uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.closed {
		select {
		case s.queue <- notice{handle: handle, seq: seq}:
			return
		default:
		}
	}
	s.metrics.dropped.Inc()
	// Debug: under overload a line per drop would flood the log; the
	// metric shows it.
	s.log.Debug("push notice dropped", "handle", handle, "seq", seq, "queue_depth", len(s.queue))
}

// Start starts the workers. Notices queued before are sent then.
func (s *Sender) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return
	}
	s.started = true
	s.wg.Add(s.cfg.Workers)
	for range s.cfg.Workers {
		go s.work()
	}
}

// Close stops taking notices, lets the workers send what is queued and in
// flight until ctx ends, then abandons the rest and returns ctx's error.
func (s *Sender) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.queue) // no Notify sends now: they hold the read lock
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("closing the push sender: %w", ctx.Err())
		s.cancel() // every request and store call watches s.ctx
		<-done
	}
	s.cancel()
	// Left over when the workers were never started.
	for range s.queue {
		s.metrics.dropped.Inc()
	}
	return err
}

// QueueDepth reports how many notices wait for a worker.
func (s *Sender) QueueDepth() int { return len(s.queue) }

func (s *Sender) work() {
	defer s.wg.Done()
	for n := range s.queue {
		s.process(n)
	}
}

// process sends n to every subscription of its recipient, one by one: a
// recipient has few.
func (s *Sender) process(n notice) {
	if s.ctx.Err() != nil {
		s.metrics.dropped.Inc()
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	subs, err := s.store.PushSubscriptions(ctx, n.handle)
	cancel()
	if err != nil {
		s.metrics.failed.Inc()
		s.log.Warn("push: listing subscriptions", "handle", n.handle, "err", err)
		return
	}
	if len(subs) == 0 {
		return
	}
	if s.cfg.Presence != nil {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
		online, err := s.cfg.Presence.Streaming(ctx, n.handle)
		cancel()
		if err != nil {
			s.log.Debug("push: presence unknown, pushing", "handle", n.handle, "err", err)
		}
		if online {
			s.metrics.online.Inc()
			return
		}
	}
	payload, err := json.Marshal(server.PushNotice{Type: "message", To: n.handle, Seq: n.seq})
	if err != nil {
		panic(err) // a struct of a string and a number always marshals
	}
	topic := s.topic(n.handle)
	for _, sub := range subs {
		s.deliver(sub, payload, topic)
	}
}

// topic is the Topic header for handle's pushes: a push service keeps only
// the newest pending push of a topic, so a burst of messages to someone
// offline wakes their device once. It is a keyed hash (32 base64url
// characters, the most RFC 8030 allows) so the push service cannot test
// which handle a subscription belongs to by hashing guesses.
func (s *Sender) topic(handle string) string {
	mac := hmac.New(sha256.New, s.topicKey)
	mac.Write([]byte(handle))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))[:32]
}
