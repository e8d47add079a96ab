package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server/signing"
)

const (
	// registerWorkers is how many registrations run at once.
	registerWorkers = 32
	// benchSenderIDs is how many identities the senders share: a handful,
	// as many people would, not one per connection.
	benchSenderIDs = 8
	// deliveryGrace bounds the wait for the last deliveries after the last
	// 201; anything later counts as missing.
	deliveryGrace = 10 * time.Second
	// maxMessageAge is how old the pre-signed messages may be when sending
	// starts: the server accepts ts within 5 minutes, and sending must end
	// inside that window.
	maxMessageAge = 3 * time.Minute
	// maxRateDuration bounds the open-loop phase, which starts at most
	// maxMessageAge after signing, to the rest of that window.
	maxRateDuration = 2 * time.Minute
)

// loadResult is what one load phase measured: the closed loop (phase 1) or
// the open loop at a fixed rate (phase 2).
type loadResult struct {
	sent, accepted, failed int
	// wall runs from the first send (closed loop) or the first scheduled
	// send (open loop) to the last 201.
	wall           time.Duration
	rate           float64 // accepted / wall
	offered        float64 // the open loop's schedule, messages/s; 0 for the closed loop
	post, delivery latencies
	// lag is how long after its scheduled time each open-loop send began
	// (waiting for a free sender, or for the bench's own CPU).
	lag        latencies
	delivered  int // message events read from the streams
	missing    int // accepted, never delivered
	duplicates int // delivered more than once
	outOfOrder int // an event whose seq did not follow the stream's last
	unexpected int // an event that is none of this phase's messages
	// CPU used while sending, in cores (CPU time / wall time); the server's
	// is 0 for a --target.
	serverCores, benchCores float64
	// The same as CPU time, from the first send to the last answer.
	serverCPU, benchCPU time.Duration
}

// exactlyOnce reports whether every accepted message was delivered once, in
// order, and nothing else was.
func (r *loadResult) exactlyOnce() bool {
	return r.missing == 0 && r.duplicates == 0 && r.outOfOrder == 0 && r.unexpected == 0
}

// benchUser is a registered identity and its public record.
type benchUser struct {
	id   *client.Identity
	user *client.User
}

// registerUsers registers one fresh ed25519 identity per handle,
// registerWorkers at a time.
func registerUsers(ctx context.Context, c *client.Client, handles []string) ([]benchUser, error) {
	users := make([]benchUser, len(handles))
	err := forEachIndex(ctx, len(handles), registerWorkers, func(ctx context.Context, i int) error {
		id, err := client.NewIdentity("ed25519")
		if err == nil {
			users[i].user, err = c.Register(ctx, id, handles[i])
			users[i].id = id
		}
		if err != nil {
			return fmt.Errorf("registering %s: %w", handles[i], err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return users, nil
}

// handles returns n handles tag-kind-0 ... tag-kind-(n-1).
func handles(tag, kind string, n int) []string {
	hs := make([]string, n)
	for i := range hs {
		hs[i] = tag + "-" + kind + strconv.Itoa(i)
	}
	return hs
}

// newMessageIDs returns n random message ids, as clients make them
// (client.NewMessageID): the store's idempotency keys then spread as they
// do in real use, not in the order of a counter.
func newMessageIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = client.NewMessageID()
	}
	return ids
}

// buildMessages signs and encrypts every message before the timed phase,
// on all cores, so client crypto does not compete with the server while it
// is measured. Message i, with id ids[i], goes from sender i mod
// len(senders) to recipient i mod len(recipients); the result is each
// request body, ready to POST.
func buildMessages(ctx context.Context, ids []string, senders, recipients []benchUser, size int, ts time.Time) ([][]byte, error) {
	bodies := make([][]byte, len(ids))
	text := strings.Repeat("benchmark ", size/10+1)[:size]
	err := forEachIndex(ctx, len(ids), runtime.GOMAXPROCS(0), func(_ context.Context, i int) error {
		from, to := senders[i%len(senders)], recipients[i%len(recipients)]
		doc, err := client.NewMessageAt(from.id, to.user, ids[i], text, ts)
		if err == nil {
			bodies[i], err = marshalSigned(doc)
		}
		if err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return bodies, nil
}

// marshalSigned encodes a signed document as the client does: without
// encoding/json's HTML escaping, so the canonical payload goes byte for byte.
func marshalSigned(doc signing.Signed) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// deliveryLog records, per message of one phase, when it was sent and when
// (and how often) a stream delivered it. Times are nanoseconds since base on
// the monotonic clock; senders and stream readers touch disjoint or atomic
// fields, so there is no lock on the hot path.
type deliveryLog struct {
	index map[string]int // message id -> i; read-only once built
	base  time.Time
	// timed is set for a closed loop that runs for a duration: the
	// messages it did not reach by then were not sent, not refused.
	timed bool
	// sentAt is when message i was sent: just before its POST in the closed
	// loop, its scheduled time in the open loop. Both latencies run from it.
	sentAt     []atomic.Int64
	startedAt  []int64 // when its POST began, written by the one sender of i
	answeredAt []int64 // the 201, written by the one sender of i
	accepted   []bool  // written by the one sender of i
	deliveries []atomic.Int32
	latency    []atomic.Int64 // of the first delivery
	delivered  atomic.Int64
	unexpected atomic.Int64
	outOfOrder atomic.Int64
}

func newDeliveryLog(ids []string) *deliveryLog {
	n := len(ids)
	l := &deliveryLog{
		index:      make(map[string]int, n),
		base:       time.Now(),
		sentAt:     make([]atomic.Int64, n),
		startedAt:  make([]int64, n),
		answeredAt: make([]int64, n),
		accepted:   make([]bool, n),
		deliveries: make([]atomic.Int32, n),
		latency:    make([]atomic.Int64, n),
	}
	for i, id := range ids {
		l.index[id] = i
	}
	return l
}

func (l *deliveryLog) now() int64 { return int64(time.Since(l.base)) }

// deliver records that a stream delivered the message with id.
func (l *deliveryLog) deliver(id []byte) {
	i, ok := l.index[string(id)]
	if !ok {
		l.unexpected.Add(1)
		return
	}
	now := l.now()
	l.delivered.Add(1)
	if l.deliveries[i].Add(1) == 1 {
		l.latency[i].Store(now - l.sentAt[i].Load())
	}
}

// failureCounts counts refusals by reason; senders share it.
type failureCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (f *failureCounts) add(why string, n int) {
	f.mu.Lock()
	if f.m == nil {
		f.m = map[string]int{}
	}
	f.m[why] += n
	f.mu.Unlock()
}

// sendFunc sends prepared message i and reports whether the server
// accepted it, and if not, a short reason.
type sendFunc func(ctx context.Context, i int) (ok bool, why string)

// sendOne sends message i and records when it began and how it was answered.
func sendOne(ctx context.Context, send sendFunc, i int, log *deliveryLog, fail *failureCounts) {
	log.startedAt[i] = log.now()
	ok, why := send(ctx, i)
	log.answeredAt[i] = log.now()
	if ok {
		log.accepted[i] = true
	} else {
		fail.add(why, 1)
	}
}

// errTimeUp ends a closed loop that runs for a duration.
var errTimeUp = errors.New("the duration is over")

// sendClosedLoop sends messages 0 to n-1 from senders goroutines, each
// sending its next message as soon as the last one is answered (a closed
// loop: the server's speed sets the pace). Each message's latency runs from
// just before it is sent. With until > 0 (on log's clock) a sender starts
// no message after until, and the messages left are not sent (log.timed).
func sendClosedLoop(ctx context.Context, send sendFunc, n, senders int, until int64, log *deliveryLog, fail *failureCounts) {
	log.timed = until > 0
	var started atomic.Int64
	err := forEachIndex(ctx, n, senders, func(_ context.Context, i int) error {
		now := log.now()
		if until > 0 && now >= until {
			return errTimeUp
		}
		started.Add(1)
		log.sentAt[i].Store(now)
		sendOne(ctx, send, i, log, fail)
		return nil
	})
	if unsent := n - int(started.Load()); err != nil && !errors.Is(err, errTimeUp) && unsent > 0 {
		fail.add(err.Error(), unsent)
	}
}

// sendOpenLoop sends messages 0 to n-1 on a fixed schedule, message i at
// i/rate after the start, from at most inFlight requests at once. Each
// message's latency runs from its scheduled time (see openLoop).
func sendOpenLoop(ctx context.Context, send sendFunc, n int, rate float64, inFlight int, log *deliveryLog, fail *failureCounts) {
	unsent := openLoop(ctx, n, rate, inFlight, log.now, func(i int, due int64) {
		log.sentAt[i].Store(due)
		sendOne(ctx, send, i, log, fail)
	})
	if unsent > 0 {
		fail.add("not sent: "+context.Cause(ctx).Error(), unsent)
	}
}

// openLoop calls send(i, due) for every i in [0, n), where due = start +
// i/rate on clock's scale (nanoseconds) and start is clock() when it
// begins. The schedule never waits for answers: a send is handed to one of
// inFlight workers at its due time, or, when every worker is busy, as soon
// as one is free. A latency measured from due therefore includes any wait
// for the server, as a user sending at that rate would see it, instead of
// leaving out the sends a slow answer held back (coordinated omission, which
// a closed loop suffers; wrk2 measures the same way). It returns once every
// send has returned, with the number of messages it did not send because
// ctx ended.
func openLoop(ctx context.Context, n int, rate float64, inFlight int, clock func() int64, send func(i int, due int64)) (unsent int) {
	type item struct {
		i   int
		due int64
	}
	work := make(chan item) // unbuffered: only an idle worker takes a send
	var wg sync.WaitGroup
	for range min(inFlight, n) {
		wg.Go(func() {
			for it := range work {
				send(it.i, it.due)
			}
		})
	}
	defer func() {
		close(work)
		wg.Wait()
	}()
	interval := float64(time.Second) / rate
	start := clock()
	for i := range n {
		due := start + int64(float64(i)*interval)
		// The runtime may sleep longer than asked (up to about a
		// millisecond); the sends that fell due meanwhile then go at once,
		// late by that much, and their latency counts it.
		if wait := due - clock(); wait > 0 {
			time.Sleep(time.Duration(wait))
		}
		select {
		case work <- item{i, due}:
		case <-ctx.Done():
			return n - i
		}
	}
	return 0
}

// post sends one message body and returns the status, and for a refusal a
// short reason (the error code, or the transport error).
func post(ctx context.Context, hc *http.Client, u string, body []byte) (int, string) {
	status, _, why := postAnswer(ctx, hc, u, body)
	return status, why
}

// postAnswer is post that also returns the body of a 201 (the receipt).
func postAnswer(ctx context.Context, hc *http.Client, u string, body []byte) (int, []byte, string) {
	status, data, err := postRequest(ctx, hc, u, body, "", "")
	if err != nil {
		return 0, nil, err.Error()
	}
	if status == http.StatusCreated {
		return status, data, ""
	}
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	_ = json.Unmarshal(data, &e)
	return status, nil, fmt.Sprintf("%d %s", status, e.Error.Code)
}

// postRequest POSTs a JSON body, with the header key: value when key is
// set, and returns the status and the answer (up to 64 KiB), read to the
// end so the connection is reused.
func postRequest(ctx context.Context, hc *http.Client, u string, body []byte, key, value string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set(key, value)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, data, nil
}

// loadServer is what the load phases need to know of the server they load:
// how to open recipient i's stream, which then recognises the server's
// deliveries itself (rawStream.parse), and how to send prepared message i.
// kezchat's is kezchatLoad; the anchor bench's Centrifugo, centrifugoLoad.
type loadServer interface {
	openStream(ctx context.Context, i, bufSize int) (*rawStream, error)
	send(ctx context.Context, hc *http.Client, i int, body []byte) (ok bool, why string)
}

// kezchatLoad is a kezchat server, or replicas sharing a store: message i is
// a signed document POSTed to /v1/messages, and recipient i's stream is its
// inbox's, on targets[i mod len(targets)].
type kezchatLoad struct {
	targets    []*benchTarget
	postURLs   []string // each target's /v1/messages
	domain     string
	recipients []benchUser
}

func (k *kezchatLoad) openStream(ctx context.Context, i, bufSize int) (*rawStream, error) {
	return openRawStream(ctx, k.targets[i%len(k.targets)].addr, k.domain, k.recipients[i].id, bufSize)
}

func (k *kezchatLoad) send(ctx context.Context, hc *http.Client, i int, body []byte) (bool, string) {
	status, why := post(ctx, hc, k.postURL(i), body)
	return status == http.StatusCreated, why
}

// loadRun is what the load phases share: the server, its registered users,
// one open stream per recipient and its reader, which records each delivery
// in the log of the phase under way.
type loadRun struct {
	cfg benchConfig
	t   *benchTarget // targets[0]
	// targets are the servers: one, or the replicas of the replica phase,
	// which share a store. Recipient i's stream is on targets[i mod n].
	targets []*benchTarget
	srv     loadServer
	// phase1 and phase2 name the two phases in the output.
	phase1, phase2 string
	hc             *http.Client
	p              *benchPrinter
	senders        []benchUser
	recipients     []benchUser
	streams        []*rawStream
	readers        sync.WaitGroup
	log            atomic.Pointer[deliveryLog]
}

// startLoad registers cfg.streams recipients and benchSenderIDs senders
// (handles prefixed with tag) and opens a stream for each recipient. With
// several targets (replicas sharing a store) it registers on the first and
// spreads the streams over all of them.
func startLoad(ctx context.Context, cfg benchConfig, targets []*benchTarget, hc *http.Client, tag string, p *benchPrinter) (*loadRun, error) {
	t := targets[0]
	r := &loadRun{cfg: cfg, t: t, targets: targets, hc: hc, p: p,
		phase1: "phase 1, maximum throughput", phase2: "phase 2, latency at a fixed rate"}
	k := &kezchatLoad{targets: targets}
	for _, tt := range targets {
		k.postURLs = append(k.postURLs, tt.url+"/v1/messages")
	}
	r.srv = k
	c := client.New(t.url, hc)
	domain, err := c.Domain(ctx)
	if err != nil {
		return nil, err
	}
	err = p.step(fmt.Sprintf("registering %d recipients and %d senders", cfg.streams, benchSenderIDs), func() error {
		var err error
		if r.recipients, err = registerUsers(ctx, c, handles(tag, "r", cfg.streams)); err != nil {
			return err
		}
		r.senders, err = registerUsers(ctx, c, handles(tag, "s", benchSenderIDs))
		return err
	})
	if err != nil {
		return nil, err
	}
	k.domain, k.recipients = domain, r.recipients
	if err := r.openStreams(ctx, cfg.streams); err != nil {
		return nil, err
	}
	return r, nil
}

// openStreams opens n streams of r.srv, recipients 0 to n-1, and starts
// their readers.
func (r *loadRun) openStreams(ctx context.Context, n int) error {
	err := r.p.step(fmt.Sprintf("opening %d streams", n), func() error {
		var err error
		r.streams, err = openStreamsOf(ctx, r.srv, n, 4<<10)
		return err
	})
	if err != nil {
		return err
	}
	r.log.Store(newDeliveryLog(nil))
	for _, st := range r.streams {
		r.readers.Go(func() { st.follow(&r.log) })
	}
	return nil
}

// postURL is where message i is posted. Message i goes to recipient
// i mod R (see buildMessages), whose stream is on target (i mod R) mod n;
// posting it to target (i mod R + i div R) mod n sends every recipient's
// messages to each replica in turn, so with two replicas half the
// deliveries cross NATS, and each replica takes half the POSTs.
func (k *kezchatLoad) postURL(i int) string {
	n := len(k.postURLs)
	if n == 1 {
		return k.postURLs[0]
	}
	rcpt := len(k.recipients)
	return k.postURLs[(i%rcpt+i/rcpt)%n]
}

// sender sends prepared message i, bodies[i], to r.srv.
func (r *loadRun) sender(bodies [][]byte) sendFunc {
	return func(ctx context.Context, i int) (bool, string) {
		return r.srv.send(ctx, r.hc, i, bodies[i])
	}
}

// close ends the streams and waits for their readers.
func (r *loadRun) close() {
	for _, st := range r.streams {
		st.close()
	}
	r.readers.Wait()
}

// prepare makes n messages with fresh ids and ts for the next phase and
// makes its log the one deliveries are recorded in: from now on, a late
// delivery of an earlier phase's message counts as unexpected.
func (r *loadRun) prepare(ctx context.Context, n int) (*deliveryLog, [][]byte, error) {
	ids := newMessageIDs(n)
	log := newDeliveryLog(ids)
	r.log.Store(log)
	var bodies [][]byte
	signedAt := time.Now()
	err := r.p.step(fmt.Sprintf("signing and encrypting %d messages of %d bytes", n, r.cfg.msgSize), func() error {
		var err error
		bodies, err = buildMessages(ctx, ids, r.senders, r.recipients, r.cfg.msgSize, signedAt)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	if age := time.Since(signedAt); age > maxMessageAge {
		return nil, nil, fmt.Errorf("the messages were signed %s ago, too close to the server's 5 minute window; send fewer", age.Round(time.Second))
	}
	return log, bodies, nil
}

// closedLoop is phase 1, the maximum throughput: cfg.messages messages from
// cfg.senders senders that each wait for an answer before sending again.
func (r *loadRun) closedLoop(ctx context.Context) (*loadResult, error) {
	log, bodies, err := r.prepare(ctx, r.cfg.messages)
	if err != nil {
		return nil, err
	}
	r.p.printf("sending %d messages from %d concurrent senders (closed loop) ... ", len(bodies), r.cfg.senders)
	// Both processes share the machine's cores: record what each used.
	cpu := startCPUMeter(r.targets...)
	var fail failureCounts
	sendClosedLoop(ctx, r.sender(bodies), len(bodies), r.cfg.senders, 0, log, &fail)
	res := r.collect(ctx, log, cpu, &fail)
	r.p.printf("%s: %d of %d messages accepted in %s: %.0f messages/s\n",
		r.phase1, res.accepted, res.sent, fmtDuration(res.wall), res.rate)
	r.report(res)
	return res, nil
}

// openLoop is phase 2, latency at a fixed rate: cfg.rate messages a second
// for cfg.rateDuration, each sent at its scheduled time whatever the
// answers to earlier ones, with latencies measured from that time.
func (r *loadRun) openLoop(ctx context.Context) (*loadResult, error) {
	n := int(math.Ceil(r.cfg.rate * r.cfg.rateDuration.Seconds()))
	log, bodies, err := r.prepare(ctx, n)
	if err != nil {
		return nil, err
	}
	r.p.printf("sending %d messages at %.0f/s (open loop, at most %d in flight) ... ", n, r.cfg.rate, r.cfg.inFlight)
	cpu := startCPUMeter(r.targets...)
	var fail failureCounts
	sendOpenLoop(ctx, r.sender(bodies), len(bodies), r.cfg.rate, r.cfg.inFlight, log, &fail)
	res := r.collect(ctx, log, cpu, &fail)
	res.offered = r.cfg.rate
	r.p.printf("%s: %d of %d messages accepted; offered %.0f/s, achieved %.0f/s\n",
		r.phase2, res.accepted, res.sent, res.offered, res.rate)
	r.report(res)
	return res, nil
}

// collect waits for the deliveries still in flight and computes a phase's
// figures from its log.
func (r *loadRun) collect(ctx context.Context, log *deliveryLog, cpu *cpuMeter, fail *failureCounts) *loadResult {
	n := len(log.sentAt)
	res := &loadResult{sent: n}
	res.serverCPU, res.benchCPU = cpu.used()
	res.serverCores, res.benchCores = cpu.cores()
	first, last := int64(-1), int64(0)
	postLat := make([]time.Duration, 0, n)
	lag := make([]time.Duration, 0, n)
	for i := range n {
		if log.startedAt[i] == 0 {
			if log.timed { // the duration ended first
				res.sent--
			} else { // ctx ended first
				res.failed++
			}
			continue
		}
		if s := log.sentAt[i].Load(); first < 0 || s < first {
			first = s
		}
		if !log.accepted[i] {
			res.failed++
			continue
		}
		res.accepted++
		last = max(last, log.answeredAt[i])
		postLat = append(postLat, time.Duration(log.answeredAt[i]-log.sentAt[i].Load()))
		lag = append(lag, time.Duration(log.startedAt[i]-log.sentAt[i].Load()))
	}
	res.wall = time.Duration(last - first)
	if res.wall > 0 {
		res.rate = float64(res.accepted) / res.wall.Seconds()
	}
	r.p.printf("%s\n", fmtDuration(res.wall))
	if len(fail.m) > 0 {
		r.p.printf("  refused: %s\n", fmtCounts(fail.m))
	}

	// Wait for the deliveries still in flight (normally none).
	deadline := time.Now().Add(deliveryGrace)
	for int(log.delivered.Load()) < res.accepted && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	deliveryLat := make([]time.Duration, 0, res.accepted)
	for i := range n {
		k := log.deliveries[i].Load()
		switch {
		case k == 0 && log.accepted[i]:
			res.missing++
		case k > 1:
			res.duplicates += int(k - 1)
		}
		if k > 0 {
			deliveryLat = append(deliveryLat, time.Duration(log.latency[i].Load()))
		}
	}
	res.delivered = int(log.delivered.Load())
	res.unexpected = int(log.unexpected.Load())
	res.outOfOrder = int(log.outOfOrder.Load())
	res.post = summarize(postLat)
	res.delivery = summarize(deliveryLat)
	res.lag = summarize(lag)
	return res
}

// report prints a phase's latencies, CPU and delivery check.
func (r *loadRun) report(res *loadResult) {
	from := ""
	if res.offered > 0 {
		from = "  (from the scheduled send time)"
	}
	r.p.printf("  POST latency      p50 %s  p99 %s  max %s%s\n", fmtDuration(res.post.p50), fmtDuration(res.post.p99), fmtDuration(res.post.max), from)
	r.p.printf("  delivery latency  p50 %s  p99 %s  max %s%s\n", fmtDuration(res.delivery.p50), fmtDuration(res.delivery.p99), fmtDuration(res.delivery.max), from)
	if res.offered > 0 {
		r.p.printf("  sends began after their scheduled time by p50 %s  p99 %s  max %s\n",
			fmtDuration(res.lag.p50), fmtDuration(res.lag.p99), fmtDuration(res.lag.max))
	}
	switch {
	case res.serverCores > 0 && len(r.targets) > 1:
		r.p.printf("  CPU while sending: %d servers %.2f cores together, bench with NATS %.2f cores (of %d)\n", len(r.targets), res.serverCores, res.benchCores, runtime.NumCPU())
	case res.serverCores > 0:
		r.p.printf("  CPU while sending: server %.2f cores, bench %.2f cores (of %d)\n", res.serverCores, res.benchCores, runtime.NumCPU())
	}
	r.p.printf("  delivered %d events on %d streams: %d missing, %d duplicates, %d out of order, %d unexpected\n",
		res.delivered, len(r.streams), res.missing, res.duplicates, res.outOfOrder, res.unexpected)
}

// cpuMeter measures the CPU the server and the bench use over a span.
type cpuMeter struct {
	ts                 []*benchTarget
	start              time.Time
	server, self       time.Duration
	serverErr, selfErr error
}

func startCPUMeter(ts ...*benchTarget) *cpuMeter {
	m := &cpuMeter{ts: ts, start: time.Now()}
	m.server, m.serverErr = serversCPUTime(ts)
	m.self, m.selfErr = processCPUTime(os.Getpid())
	return m
}

// cores is the CPU each used since start, in cores; 0 when unknown.
func (m *cpuMeter) cores() (server, self float64) {
	wall := time.Since(m.start).Seconds()
	if wall <= 0 {
		return 0, 0
	}
	s, b := m.used()
	return s.Seconds() / wall, b.Seconds() / wall
}

// used is the CPU time each used since start; 0 when unknown.
func (m *cpuMeter) used() (server, self time.Duration) {
	if s, err := serversCPUTime(m.ts); err == nil && m.serverErr == nil {
		server = s - m.server
	}
	if s, err := processCPUTime(os.Getpid()); err == nil && m.selfErr == nil {
		self = s - m.self
	}
	return server, self
}

// serversCPUTime is the CPU time the servers have used, together.
func serversCPUTime(ts []*benchTarget) (time.Duration, error) {
	var sum time.Duration
	for _, t := range ts {
		d, err := t.cpuTime()
		if err != nil {
			return 0, err
		}
		sum += d
	}
	return sum, nil
}

// fmtCounts prints a reason -> count map, most frequent first.
func fmtCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(a, b int) bool { return m[keys[a]] > m[keys[b]] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d × %s", m[k], k)
	}
	return strings.Join(parts, ", ")
}
