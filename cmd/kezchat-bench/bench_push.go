package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/push/pushtest"
	"kez.lat/chat/server/signing"
)

const (
	// targetPushRate is issue 3's target: Web Push notifications per
	// second, each VAPID-verified and decrypted by the push service.
	targetPushRate = 1000
	// pushWindow bounds the messages sent whose push has not arrived yet.
	// The server queues a notice per message to a recipient without a
	// stream and drops notices when its queue (4,096, push.Config's
	// default) is full, as designed: pushes are best effort. Keeping fewer
	// outstanding keeps that queue from overflowing, so the phase measures
	// how fast pushes go out, not how many a burst loses; with 16 push
	// workers, 1,024 outstanding keep every worker busy.
	pushWindow = 1024
	// pushStall is how long the phase waits for the next push before it
	// gives up on the missing ones.
	pushStall = 15 * time.Second
	// maxPushMessages bounds --push-messages: at the target rate they must
	// all be sent within the server's 5-minute window (see maxMessageAge).
	maxPushMessages = 100_000
)

// errPushStalled stops the senders when no push freed a slot within
// pushStall.
var errPushStalled = errors.New("no push arrived")

// pushResult is what the Web Push phase measured.
type pushResult struct {
	recipients             int
	sent, accepted, failed int
	// pushed is the accepted messages whose push arrived: authenticated
	// (VAPID), decrypted, and carrying exactly the message's notice.
	pushed     int
	missing    int // accepted, no push arrived
	duplicates int // a message's push arrived more than once
	unexpected int // a well-formed push for no message of this phase
	malformed  int // a push whose plaintext is not the notice it should be
	// refused counts requests the push service refused (bad VAPID,
	// headers or body); lastRefusal is why it refused the last one.
	refused     int
	lastRefusal error
	// wall runs from the first POST to the last push; rate is pushed/wall.
	wall time.Duration
	rate float64
	// sendWall runs from the first POST to the last 201; msgRate is
	// accepted/sendWall.
	sendWall time.Duration
	msgRate  float64
	// CPU used from the first POST to the last push, in cores; the bench's
	// includes the push service, which runs in the bench process.
	serverCores, benchCores float64
}

// ok reports whether every accepted message brought exactly one push with
// its notice, the push service refused nothing and the server accepted
// every message.
func (r *pushResult) ok() bool {
	return r.accepted == r.sent && r.failed == 0 && r.pushed == r.accepted && r.missing == 0 &&
		r.duplicates == 0 && r.unexpected == 0 && r.malformed == 0 && r.refused == 0
}

// pushRecipient is a recipient of the push phase: a registered handle with
// one push subscription, whose private half the push service holds.
type pushRecipient struct {
	handle   string
	endpoint string
}

// runPush is phase 4, Web Push throughput, on a server started with Web
// Push on (startBenchServer with withPush): it registers
// cfg.pushRecipients recipients, subscribes each to the local push service
// with a fresh P-256 key and auth secret, opens no stream for them (the
// server pushes only to recipients without one), sends them
// cfg.pushMessages messages and counts the pushes the push service
// accepts, having verified each one's VAPID JWT and decrypted its body.
//
// The server sends one push per stored message to a recipient without a
// stream: it does not coalesce. Its Topic header (one per recipient) lets a
// real push service keep only the newest undelivered push for an offline
// device, but the local service, like a device that is online, delivers
// each at once. So every message is owed exactly one push.
func runPush(ctx context.Context, cfg benchConfig, t *benchTarget, hc *http.Client, tag string, p *benchPrinter) (*pushResult, error) {
	if t.push == nil {
		return nil, errors.New("the server was started without Web Push")
	}
	c := client.New(t.url, hc)
	domain, err := c.Domain(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkVAPIDKey(ctx, hc, t); err != nil {
		return nil, err
	}

	var users, senders []benchUser
	err = p.step(fmt.Sprintf("registering %d recipients and %d senders", cfg.pushRecipients, benchSenderIDs), func() error {
		var err error
		if users, err = registerUsers(ctx, c, handles(tag, "p", cfg.pushRecipients)); err != nil {
			return err
		}
		senders, err = registerUsers(ctx, c, handles(tag, "ps", benchSenderIDs))
		return err
	})
	if err != nil {
		return nil, err
	}
	recipients := make([]pushRecipient, len(users))
	err = p.step(fmt.Sprintf("subscribing %d recipients to Web Push (a P-256 key and auth secret each)", len(users)), func() error {
		return subscribeAll(ctx, hc, t, domain, users, recipients)
	})
	if err != nil {
		return nil, err
	}

	n := cfg.pushMessages
	ids := newMessageIDs(n)
	signedAt := time.Now()
	var bodies [][]byte
	err = p.step(fmt.Sprintf("signing and encrypting %d messages of %d bytes", n, cfg.msgSize), func() error {
		var err error
		bodies, err = buildMessages(ctx, ids, senders, users, cfg.msgSize, signedAt)
		return err
	})
	if err != nil {
		return nil, err
	}

	p.printf("sending %d messages to %d recipients without a stream (%d concurrent senders, at most %d awaiting their push) ... ",
		n, len(recipients), cfg.senders, pushWindow)
	ph := newPushPhase(recipients, n)
	go ph.receive(t.push)
	cpu := startCPUMeter(t)
	var fail failureCounts
	ph.send(ctx, hc, t.url, bodies, cfg.senders, &fail)
	if first := ph.firstPost.Load(); first >= 0 {
		p.printf("%s\n", fmtDuration(time.Duration(ph.now()-first)))
	} else {
		p.printf("failed\n")
	}
	if len(fail.m) > 0 {
		p.printf("  refused: %s\n", fmtCounts(fail.m))
	}
	// Wait for the pushes still on their way: until each accepted message
	// has had one, or none has come for pushStall.
	p.step("waiting for the last pushes", func() error {
		ph.wait(ctx, pushStall)
		return nil
	})
	res := ph.finish()
	res.serverCores, res.benchCores = cpu.cores()
	res.refused, res.lastRefusal = t.push.Refused()
	p.printf("phase 4, Web Push: %d of %d messages pushed, each push VAPID-verified and decrypted, in %s: %.0f pushes/s\n",
		res.pushed, res.accepted, fmtDuration(res.wall), res.rate)
	p.printf("  messages accepted: %d of %d in %s: %.0f messages/s\n", res.accepted, res.sent, fmtDuration(res.sendWall), res.msgRate)
	if res.serverCores > 0 {
		p.printf("  CPU while pushing: server %.2f cores, bench with the push service %.2f cores (of %d)\n",
			res.serverCores, res.benchCores, runtime.NumCPU())
	}
	p.printf("  pushes: %d missing, %d duplicates, %d unexpected, %d not the message's notice; the push service refused %d requests\n",
		res.missing, res.duplicates, res.unexpected, res.malformed, res.refused)
	if res.lastRefusal != nil {
		p.printf("  last refusal: %v\n", res.lastRefusal)
	}
	return res, nil
}

// checkVAPIDKey checks that the server serves, for pushManager.subscribe,
// the public half of the key the push service expects.
func checkVAPIDKey(ctx context.Context, hc *http.Client, t *benchTarget) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url+"/v1/push/vapid-public-key", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		PublicKey string `json:"public_key"`
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK || json.Unmarshal(data, &body) != nil {
		return fmt.Errorf("GET /v1/push/vapid-public-key: %d %s", resp.StatusCode, bytes.TrimSpace(data))
	}
	if body.PublicKey != t.vapidKey {
		return fmt.Errorf("the server's VAPID key %s is not the bench's %s", body.PublicKey, t.vapidKey)
	}
	return nil
}

// subscribeAll subscribes each user to the push service, as a browser
// would after pushManager.subscribe, registerWorkers at a time, and fills
// recipients.
func subscribeAll(ctx context.Context, hc *http.Client, t *benchTarget, domain string, users []benchUser, recipients []pushRecipient) error {
	return forEachIndex(ctx, len(users), registerWorkers, func(ctx context.Context, i int) error {
		sub := t.push.Subscribe()
		if err := subscribeOne(ctx, hc, t.url, domain, users[i].id, sub); err != nil {
			return fmt.Errorf("subscribing %s: %w", users[i].id.Handle, err)
		}
		recipients[i] = pushRecipient{handle: users[i].id.Handle, endpoint: sub.Endpoint}
		return nil
	})
}

// subscribeOne posts sub for id: POST /v1/push/subscribe/{handle}, with
// X-KEZ-Auth bound to the endpoint.
func subscribeOne(ctx context.Context, hc *http.Client, base, domain string, id *client.Identity, sub server.PushSubscriptionJSON) error {
	path := "/v1/push/subscribe/" + id.Handle
	auth, err := signing.SignRequest(id.Signer, domain, http.MethodPost, path, time.Now().Unix(), "endpoint="+sub.Endpoint)
	if err != nil {
		return err
	}
	body, err := json.Marshal(sub)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-KEZ-Auth", auth)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("%d %s", resp.StatusCode, bytes.TrimSpace(data))
	}
	return nil
}

// pushPhase is the bookkeeping of one push phase. Message i goes to
// recipient i mod len(recipients) (as buildMessages addresses it); its
// sender records its receipt's seq, and the receiver, one goroutine,
// records each push by recipient and seq. Times are nanoseconds since base.
type pushPhase struct {
	recipients []pushRecipient
	byEndpoint map[string]int // endpoint -> recipient; read-only
	base       time.Time

	// Written by the one sender of message i, read after the senders end.
	seq        []uint64
	accepted   []bool
	started    []bool
	firstPost  atomic.Int64 // -1 until the first POST
	lastAnswer atomic.Int64

	// slots holds a token per message awaiting its push (pushWindow).
	slots chan struct{}
	// arrived counts pushes that carried a well-formed notice; progress
	// signals each to wait.
	arrived  atomic.Int64
	progress chan struct{}

	// Owned by the receiver until stop returns.
	got       []map[uint64]int // per recipient: seq -> pushes
	malformed int
	lastPush  int64
	quit      chan struct{}
	stopped   chan struct{}
}

func newPushPhase(recipients []pushRecipient, n int) *pushPhase {
	ph := &pushPhase{
		recipients: recipients,
		byEndpoint: make(map[string]int, len(recipients)),
		base:       time.Now(),
		seq:        make([]uint64, n),
		accepted:   make([]bool, n),
		started:    make([]bool, n),
		slots:      make(chan struct{}, pushWindow),
		progress:   make(chan struct{}, 1),
		got:        make([]map[uint64]int, len(recipients)),
		quit:       make(chan struct{}),
		stopped:    make(chan struct{}),
	}
	ph.firstPost.Store(-1)
	for i, r := range recipients {
		ph.byEndpoint[r.endpoint] = i
		ph.got[i] = make(map[uint64]int)
	}
	return ph
}

func (ph *pushPhase) now() int64 { return int64(time.Since(ph.base)) }

// receive takes every push the service accepted (it verified the VAPID
// JWT and decrypted the body; Received yields only those) and checks that
// its plaintext is exactly the notice the server promises, for the
// recipient the endpoint belongs to: {"type":"message","to":...,"seq":...}
// and nothing else.
func (ph *pushPhase) receive(svc *pushtest.Service) {
	defer close(ph.stopped)
	for {
		var p pushtest.Push
		select {
		case p = <-svc.Received():
		case <-ph.quit:
			return
		}
		i, ok := ph.byEndpoint[p.Endpoint]
		var seq uint64
		if ok {
			seq, ok = parseNotice(p.Plaintext, ph.recipients[i].handle)
		}
		if !ok {
			ph.malformed++
			continue
		}
		ph.got[i][seq]++
		ph.lastPush = int64(p.At.Sub(ph.base))
		ph.arrived.Add(1)
		select { // free a sender's slot
		case <-ph.slots:
		default:
		}
		select {
		case ph.progress <- struct{}{}:
		default:
		}
	}
}

// parseNotice returns the seq of a push plaintext that is exactly
// server.PushNotice{Type: "message", To: handle, Seq: seq} as the server
// encodes it.
func parseNotice(plaintext []byte, handle string) (uint64, bool) {
	var n server.PushNotice
	dec := json.NewDecoder(bytes.NewReader(plaintext))
	dec.DisallowUnknownFields()
	if dec.Decode(&n) != nil || n.Type != "message" || n.To != handle || n.Seq == 0 {
		return 0, false
	}
	want, err := json.Marshal(server.PushNotice{Type: "message", To: handle, Seq: n.Seq})
	if err != nil || !bytes.Equal(plaintext, want) {
		return 0, false
	}
	return n.Seq, true
}

// send posts every body from senders goroutines, each waiting for a free
// slot before it posts: at most pushWindow messages await their push.
func (ph *pushPhase) send(ctx context.Context, hc *http.Client, base string, bodies [][]byte, senders int, fail *failureCounts) {
	// Sends use ctx, not forEachIndex's: a stall stops handing out
	// messages, but those in flight still finish.
	err := forEachIndex(ctx, len(bodies), senders, func(_ context.Context, i int) error {
		if !ph.acquire(ctx) {
			if ctx.Err() == nil {
				return errPushStalled
			}
			return ctx.Err()
		}
		ph.started[i] = true
		ph.firstPost.CompareAndSwap(-1, ph.now())
		status, data, why := postAnswer(ctx, hc, base+"/v1/messages", bodies[i])
		var rc server.Receipt
		if status == http.StatusCreated && json.Unmarshal(data, &rc) != nil {
			status, why = 0, "201 without a receipt"
		}
		if status != http.StatusCreated {
			fail.add(why, 1)
			ph.release() // no push will come for it
			return nil
		}
		ph.seq[i], ph.accepted[i] = rc.Seq, true
		for now := ph.now(); ; {
			last := ph.lastAnswer.Load()
			if now <= last || ph.lastAnswer.CompareAndSwap(last, now) {
				break
			}
		}
		return nil
	})
	unsent := 0
	for _, s := range ph.started {
		if !s {
			unsent++
		}
	}
	switch {
	case unsent == 0:
	case errors.Is(err, errPushStalled):
		fail.add(fmt.Sprintf("not sent: no push arrived for %s", pushStall), unsent)
	default:
		fail.add("not sent: "+context.Cause(ctx).Error(), unsent)
	}
}

// acquire takes a slot, waiting while pushWindow messages await their
// push; false when no push frees one within pushStall or ctx ends.
func (ph *pushPhase) acquire(ctx context.Context) bool {
	select {
	case ph.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(pushStall)
	defer t.Stop()
	select {
	case ph.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

func (ph *pushPhase) release() {
	select {
	case <-ph.slots:
	default:
	}
}

// wait returns once a push has arrived for every accepted message, or
// none has arrived for stall, or ctx ends.
func (ph *pushPhase) wait(ctx context.Context, stall time.Duration) {
	want := int64(0)
	for _, a := range ph.accepted {
		if a {
			want++
		}
	}
	t := time.NewTimer(stall)
	defer t.Stop()
	for ph.arrived.Load() < want {
		select {
		case <-ph.progress:
			t.Reset(stall)
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// finish stops the receiver and matches the pushes to the messages.
func (ph *pushPhase) finish() *pushResult {
	close(ph.quit)
	<-ph.stopped
	res := &pushResult{recipients: len(ph.recipients), sent: len(ph.seq), malformed: ph.malformed}
	owed := make([]map[uint64]bool, len(ph.recipients))
	for i := range owed {
		owed[i] = make(map[uint64]bool)
	}
	for i := range ph.seq {
		if !ph.accepted[i] {
			res.failed++
			continue
		}
		res.accepted++
		r := i % len(ph.recipients)
		owed[r][ph.seq[i]] = true
		switch k := ph.got[r][ph.seq[i]]; {
		case k == 0:
			res.missing++
		default:
			res.pushed++
			res.duplicates += k - 1
		}
	}
	for r, got := range ph.got {
		for seq, k := range got {
			if !owed[r][seq] {
				res.unexpected += k
			}
		}
	}
	if first := ph.firstPost.Load(); first >= 0 {
		res.wall = time.Duration(ph.lastPush - first)
		res.sendWall = time.Duration(ph.lastAnswer.Load() - first)
	}
	if res.wall > 0 {
		res.rate = float64(res.pushed) / res.wall.Seconds()
	}
	if res.sendWall > 0 {
		res.msgRate = float64(res.accepted) / res.sendWall.Seconds()
	}
	return res
}
