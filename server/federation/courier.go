package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
)

// Courier delivers the outbox: each sender's units for each destination in
// queue order, one request at a time per sender and destination, at most
// Workers requests at once; failures are retried with backoff until the
// documents leave the federation window (docs/protocol.md, "Delivery
// between servers").
type Courier struct {
	cfg   Config
	store server.FederationStore
	http  *http.Client
	log   *slog.Logger
	wake  chan struct{}

	// Workers bounds the requests in flight at once; Poll is how often
	// the queue is read without being woken.
	Workers int
	Poll    time.Duration
	// Active, when set, says whether this replica delivers now (on
	// JetStream, the writer lease's holder): one courier at a time keeps
	// each queue's order. Two for a moment, at a handover, may deliver a
	// unit twice, which the other server's idempotency answers.
	Active func() bool

	deliveries *prometheus.CounterVec

	mu sync.Mutex
	// alone are the queues whose head goes in a request of its own: a
	// request of several sends was refused.
	alone map[string]bool
	// typing holds a token per typing forward in flight.
	typing chan struct{}
}

// maxTypingForwards bounds the typing documents being forwarded at once;
// past it they are dropped (a typing indicator is stale in seconds).
const maxTypingForwards = 64

// ForwardTyping hands doc to domain's POST /v1/federation/typing in the
// background, once, and reports false when too many are in flight. It
// never blocks; the answer is not read beyond its status.
func (c *Courier) ForwardTyping(domain string, doc []byte) bool {
	select {
	case c.typing <- struct{}{}:
	default:
		return false
	}
	go func() {
		defer func() { <-c.typing }()
		ctx, cancel := context.WithTimeout(context.Background(), typingTimeout)
		defer cancel()
		resp, err := c.postJSON(ctx, domain, "/v1/federation/typing", bytes.NewReader(doc))
		if err != nil {
			c.log.Debug("forwarding a typing indicator", "domain", domain, "err", err)
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
		resp.Body.Close()
	}()
	return true
}

// postJSON POSTs body to path on domain's server, through the egress
// client.
func (c *Courier) postJSON(ctx context.Context, domain, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, BaseURL(domain, c.cfg.Loopback)+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "kezchat-server/1")
	return c.http.Do(req)
}

// typingTimeout bounds one typing forward.
const typingTimeout = 5 * time.Second

// maxRequestBytes bounds the documents of one delivery, under the other
// server's 4 MiB body limit with room for the framing.
const maxRequestBytes = 3 << 20

func (c *Courier) setAlone(q string, alone bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if alone {
		c.alone[q] = true
	} else {
		delete(c.alone, q)
	}
}

// Delivery outcomes, the values of the outcome label.
const (
	outcomeDelivered = "delivered"
	outcomeRetry     = "retry"
	outcomeFailed    = "failed"
)

// Backoff bounds.
const (
	minBackoff = time.Second
	maxBackoff = 10 * time.Minute
)

// NewCourier returns a Courier over store, registering its metrics with
// reg.
func NewCourier(cfg Config, store server.FederationStore, log *slog.Logger, reg prometheus.Registerer) *Courier {
	cfg = withDefaults(cfg)
	c := &Courier{
		cfg: cfg, store: store, http: httpClient(cfg, cfg.DeliveryTimeout), log: log,
		wake: make(chan struct{}, 1), Workers: 32, Poll: time.Second, alone: make(map[string]bool),
		typing: make(chan struct{}, maxTypingForwards),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kezchat_federation_deliveries_total",
			Help: "Attempts to deliver queued documents to other servers, by outcome: delivered, retry, failed.",
		}, []string{"outcome"}),
	}
	for _, o := range []string{outcomeDelivered, outcomeRetry, outcomeFailed} {
		c.deliveries.WithLabelValues(o) // exported at 0 from the start, for rates
	}
	reg.MustRegister(c.deliveries)
	return c
}

// Wake tells the courier that units were queued; it never blocks.
func (c *Courier) Wake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends. An attempt cut short by the end is not
// recorded: its unit is tried again after a restart, and the other
// server's idempotency answers it if it had been stored.
func (c *Courier) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	busy := make(map[string]bool) // queues (sender and destination) with a delivery in flight
	// A queue whose delivery finished after a read of the queue began is
	// skipped in that read's round: the read may show the unit as it was
	// before (delivered twice, or its emptied documents).
	var gen uint64
	finished := make(map[string]uint64)
	done := make(chan struct{}, 1)
	t := time.NewTicker(c.Poll)
	defer t.Stop()
	for {
		mu.Lock()
		read := gen
		for d, g := range finished {
			if g <= read {
				delete(finished, d)
			}
		}
		mu.Unlock()
		var due []*server.Delivery
		var err error
		if c.Active == nil || c.Active() {
			due, err = c.store.DueDeliveries(ctx, c.cfg.Now(), 2*c.Workers)
		}
		if err != nil && ctx.Err() == nil {
			c.log.Error("reading the outbox", "err", err)
		}
		for _, d := range due {
			q := d.Sender + "@" + d.Domain
			mu.Lock()
			skip := busy[q] || finished[q] > read || len(busy) >= c.Workers
			if !skip {
				busy[q] = true
			}
			mu.Unlock()
			if skip {
				continue
			}
			wg.Go(func() {
				c.deliver(ctx, d)
				mu.Lock()
				delete(busy, q)
				gen++
				finished[q] = gen
				mu.Unlock()
				select {
				case done <- struct{}{}:
				default:
				}
			})
		}
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-done:
		case <-t.C:
		}
	}
}

// deliver makes one attempt at d and records its result.
func (c *Courier) deliver(ctx context.Context, d *server.Delivery) {
	now := c.cfg.Now()
	if !now.Before(d.Expires) {
		d.Units = []int64{d.Unit}
		c.finish(ctx, d, server.DeliveryResult{State: server.OutboxFailed, At: now, Code: "expired",
			Message: fmt.Sprintf("not delivered to %s within %v", d.Domain, server.FederationWindow)})
		return
	}
	q := d.Sender + "@" + d.Domain
	c.mu.Lock()
	alone := c.alone[q]
	c.mu.Unlock()
	if err := c.store.DeliveryMessages(ctx, d, alone, server.MaxBatchDocuments, maxRequestBytes); err != nil {
		if ctx.Err() == nil {
			c.log.Error("reading a unit of the outbox", "unit", d.Unit, "err", err)
		}
		return
	}
	code, msg, retry, retryAfter, err := c.post(ctx, d)
	if ctx.Err() != nil {
		return
	}
	now = c.cfg.Now()
	switch {
	case err == nil && code == "":
		c.setAlone(q, false)
		c.finish(ctx, d, server.DeliveryResult{State: server.OutboxDelivered, At: now})
	case err == nil && !retry && len(d.Units) > 1:
		// The other server refused one of several sends, and stored none:
		// the queue's head goes alone next, to get a verdict of its own.
		c.setAlone(q, true)
	case err == nil && !retry:
		c.setAlone(q, false)
		c.finish(ctx, d, server.DeliveryResult{State: server.OutboxFailed, At: now, Code: code, Message: msg})
	default:
		if err != nil {
			code, msg = server.CodeUnavailable, err.Error()
		}
		next := now.Add(max(retryAfter, backoff(d.Attempts)))
		if next.After(d.Expires) {
			next = d.Expires
		}
		c.finish(ctx, d, server.DeliveryResult{State: server.OutboxQueued, At: now, NextAt: next, Code: code, Message: msg})
	}
}

func (c *Courier) finish(ctx context.Context, d *server.Delivery, r server.DeliveryResult) {
	switch r.State {
	case server.OutboxDelivered:
		c.deliveries.WithLabelValues(outcomeDelivered).Inc()
	case server.OutboxFailed:
		c.deliveries.WithLabelValues(outcomeFailed).Inc()
		c.log.Warn("delivery to another server failed", "domain", d.Domain, "sender", d.Sender, "documents", len(d.Messages), "code", r.Code, "err", r.Message)
	default:
		c.deliveries.WithLabelValues(outcomeRetry).Inc()
		c.log.Info("delivery to another server will be retried", "domain", d.Domain, "attempts", d.Attempts+1, "next", r.NextAt, "code", r.Code, "err", r.Message)
	}
	if err := c.store.FinishDelivery(ctx, d.Units, r); err != nil && ctx.Err() == nil {
		c.log.Error("recording a delivery", "domain", d.Domain, "unit", d.Unit, "err", err)
	}
}

// post sends d's documents; code is "" for a 2xx, else the answer's error
// code, and retry whether it is worth another attempt; err is a failure to
// get an answer.
func (c *Courier) post(ctx context.Context, d *server.Delivery) (code, msg string, retry bool, retryAfter time.Duration, err error) {
	var body bytes.Buffer
	body.WriteString(`{"messages":[`)
	for i, m := range d.Messages {
		if i > 0 {
			body.WriteByte(',')
		}
		body.Write(m)
	}
	body.WriteString("]}")
	resp, err := c.postJSON(ctx, d.Domain, "/v1/federation/messages", &body)
	if err != nil {
		return "", "", true, 0, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return "", "", false, 0, nil
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		retryAfter = min(time.Duration(s)*time.Second, maxBackoff)
	}
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(data, &e)
	code, msg = e.Error.Code, e.Error.Message
	if code == "" {
		code = fmt.Sprintf("http_%d", resp.StatusCode)
	}
	retry = resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || retriable(code)
	return code, fmt.Sprintf("%s answered %d: %s", d.Domain, resp.StatusCode, msg), retry, retryAfter, nil
}

// retriable reports whether a refusal's code is worth another attempt:
// rate limits and quotas, an unavailable or full server or inbox.
func retriable(code string) bool {
	switch code {
	case server.CodeRateLimited, server.CodeSenderQuota, server.CodeDomainQuota, server.CodeUnavailable,
		server.CodeStorageFull, server.CodeInboxFull:
		return true
	}
	return false
}

// backoff is the wait after attempts failed ones: 1 s doubling to 10
// minutes, ±20%.
func backoff(attempts int) time.Duration {
	d := maxBackoff
	if attempts < 20 {
		d = min(minBackoff<<attempts, maxBackoff)
	}
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
