package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
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
)

// throughputResult is what phase 1 measured.
type throughputResult struct {
	accepted, failed int
	wall             time.Duration // first POST to last 201
	rate             float64       // accepted / wall
	post, delivery   latencies
	delivered        int // message events read from the streams
	missing          int // accepted, never delivered
	duplicates       int // delivered more than once
	outOfOrder       int // an event whose seq did not follow the stream's last
	unexpected       int // an event that is none of this run's messages
	// CPU used while sending, in cores (CPU time / wall time); the server's
	// is 0 for a --target.
	serverCores, benchCores float64
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
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range min(registerWorkers, len(handles)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(handles) || ctx.Err() != nil {
					return
				}
				id, err := client.NewIdentity("ed25519")
				if err == nil {
					users[i].user, err = c.Register(ctx, id, handles[i])
					users[i].id = id
				}
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("registering %s: %w", handles[i], err); cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return users, ctx.Err()
}

// handles returns n handles tag-kind-0 ... tag-kind-(n-1).
func handles(tag, kind string, n int) []string {
	hs := make([]string, n)
	for i := range hs {
		hs[i] = tag + "-" + kind + strconv.Itoa(i)
	}
	return hs
}

// messageID is the id of this run's message i; deliveries are matched by it.
func messageID(tag string, i int) string { return tag + "." + strconv.Itoa(i) }

// messageIndex is the i of messageID(tag, i), or -1.
func messageIndex(tag, id string) int {
	rest, ok := strings.CutPrefix(id, tag+".")
	if !ok {
		return -1
	}
	i, err := strconv.Atoi(rest)
	if err != nil {
		return -1
	}
	return i
}

// buildMessages signs and encrypts every message before the timed phase,
// on all cores, so client crypto does not compete with the server while it
// is measured. Message i goes from sender i mod len(senders) to recipient
// i mod len(recipients); the result is each request body, ready to POST.
func buildMessages(ctx context.Context, tag string, senders, recipients []benchUser, n, size int, ts time.Time) ([][]byte, error) {
	bodies := make([][]byte, n)
	text := strings.Repeat("benchmark ", size/10+1)[:size]
	var next atomic.Int64
	errs := make(chan error, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				from, to := senders[i%len(senders)], recipients[i%len(recipients)]
				doc, err := client.NewMessageAt(from.id, to.user, messageID(tag, i), text, ts)
				if err == nil {
					bodies[i], err = marshalSigned(doc)
				}
				if err != nil {
					errs <- fmt.Errorf("message %d: %w", i, err)
					next.Store(int64(n)) // stop every worker
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return bodies, ctx.Err()
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

// deliveryLog records, per message, when it was sent and when (and how
// often) a stream delivered it. Times are nanoseconds since base on the
// monotonic clock; senders and stream readers touch disjoint or atomic
// fields, so there is no lock on the hot path.
type deliveryLog struct {
	tag        string
	base       time.Time
	sentAt     []atomic.Int64 // before the POST
	answeredAt []int64        // the 201, written by the one sender of i
	accepted   []bool         // written by the one sender of i
	deliveries []atomic.Int32
	latency    []atomic.Int64 // of the first delivery
	delivered  atomic.Int64
	unexpected atomic.Int64
	outOfOrder atomic.Int64
}

func newDeliveryLog(tag string, n int) *deliveryLog {
	return &deliveryLog{
		tag:        tag,
		base:       time.Now(),
		sentAt:     make([]atomic.Int64, n),
		answeredAt: make([]int64, n),
		accepted:   make([]bool, n),
		deliveries: make([]atomic.Int32, n),
		latency:    make([]atomic.Int64, n),
	}
}

func (l *deliveryLog) now() int64 { return int64(time.Since(l.base)) }

// deliver records that a stream delivered the message with id.
func (l *deliveryLog) deliver(id string) {
	i := messageIndex(l.tag, id)
	if i < 0 || i >= len(l.deliveries) {
		l.unexpected.Add(1)
		return
	}
	now := l.now()
	l.delivered.Add(1)
	if l.deliveries[i].Add(1) == 1 {
		l.latency[i].Store(now - l.sentAt[i].Load())
	}
}

// sendAll posts every body from cfg.senders goroutines, in index order
// across them, recording each send time and answer.
func sendAll(ctx context.Context, hc *http.Client, base string, bodies [][]byte, senders int, log *deliveryLog) (failures map[string]int) {
	var next atomic.Int64
	var mu sync.Mutex
	failures = map[string]int{}
	fail := func(why string) {
		mu.Lock()
		failures[why]++
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(bodies) {
					return
				}
				if ctx.Err() != nil {
					fail(ctx.Err().Error())
					continue
				}
				log.sentAt[i].Store(log.now())
				status, why := post(ctx, hc, base+"/v1/messages", bodies[i])
				log.answeredAt[i] = log.now()
				if status == http.StatusCreated {
					log.accepted[i] = true
				} else {
					fail(why)
				}
			}
		})
	}
	wg.Wait()
	return failures
}

// post sends one message body and returns the status, and for a refusal a
// short reason (the error code, or the transport error).
func post(ctx context.Context, hc *http.Client, u string, body []byte) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10)) // read to the end, so the connection is reused
	if resp.StatusCode == http.StatusCreated {
		return resp.StatusCode, ""
	}
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	_ = json.Unmarshal(data, &e)
	return resp.StatusCode, fmt.Sprintf("%d %s", resp.StatusCode, e.Error.Code)
}

// runThroughput is phase 1: register, pre-build, open the streams, send
// everything, wait for the deliveries, and check each arrived exactly once.
func runThroughput(ctx context.Context, cfg benchConfig, t *benchTarget, hc *http.Client, tag string, p *benchPrinter) (*throughputResult, error) {
	c := client.New(t.url, hc)
	domain, err := c.Domain(ctx)
	if err != nil {
		return nil, err
	}
	var senders, recipients []benchUser
	err = p.step(fmt.Sprintf("registering %d recipients and %d senders", cfg.streams, benchSenderIDs), func() error {
		var err error
		if recipients, err = registerUsers(ctx, c, handles(tag, "r", cfg.streams)); err != nil {
			return err
		}
		senders, err = registerUsers(ctx, c, handles(tag, "s", benchSenderIDs))
		return err
	})
	if err != nil {
		return nil, err
	}

	var bodies [][]byte
	signedAt := time.Now()
	err = p.step(fmt.Sprintf("signing and encrypting %d messages of %d bytes", cfg.messages, cfg.msgSize), func() error {
		var err error
		bodies, err = buildMessages(ctx, tag, senders, recipients, cfg.messages, cfg.msgSize, signedAt)
		return err
	})
	if err != nil {
		return nil, err
	}

	log := newDeliveryLog(tag, cfg.messages)
	var streams []*rawStream
	err = p.step(fmt.Sprintf("opening %d streams", cfg.streams), func() error {
		var err error
		streams, err = openStreams(ctx, t, domain, recipients, 4<<10)
		return err
	})
	if err != nil {
		return nil, err
	}
	var readers sync.WaitGroup
	for _, st := range streams {
		readers.Go(func() { st.follow(log) })
	}
	defer func() {
		for _, st := range streams {
			st.close()
		}
		readers.Wait()
	}()

	if age := time.Since(signedAt); age > maxMessageAge {
		return nil, fmt.Errorf("the messages were signed %s ago, too close to the server's 5 minute window; send fewer (--messages)", age.Round(time.Second))
	}
	p.printf("sending %d messages from %d concurrent senders ... ", cfg.messages, cfg.senders)
	// Both processes share the machine's cores: record what each used.
	cpu := startCPUMeter(t)
	failures := sendAll(ctx, hc, t.url, bodies, cfg.senders, log)
	r := &throughputResult{}
	r.serverCores, r.benchCores = cpu.cores()
	first, last := int64(-1), int64(0)
	postLat := make([]time.Duration, 0, cfg.messages)
	for i := range cfg.messages {
		if s := log.sentAt[i].Load(); first < 0 || s < first {
			first = s
		}
		if !log.accepted[i] {
			r.failed++
			continue
		}
		r.accepted++
		last = max(last, log.answeredAt[i])
		postLat = append(postLat, time.Duration(log.answeredAt[i]-log.sentAt[i].Load()))
	}
	r.wall = time.Duration(last - first)
	if r.wall > 0 {
		r.rate = float64(r.accepted) / r.wall.Seconds()
	}
	p.printf("%s\n", fmtDuration(r.wall))
	if len(failures) > 0 {
		p.printf("  refused: %s\n", fmtCounts(failures))
	}

	// Wait for the deliveries still in flight (normally none).
	deadline := time.Now().Add(deliveryGrace)
	for int(log.delivered.Load()) < r.accepted && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	deliveryLat := make([]time.Duration, 0, r.accepted)
	for i := range cfg.messages {
		n := log.deliveries[i].Load()
		switch {
		case n == 0 && log.accepted[i]:
			r.missing++
		case n > 1:
			r.duplicates += int(n - 1)
		}
		if n > 0 {
			deliveryLat = append(deliveryLat, time.Duration(log.latency[i].Load()))
		}
	}
	r.delivered = int(log.delivered.Load())
	r.unexpected = int(log.unexpected.Load())
	r.outOfOrder = int(log.outOfOrder.Load())
	r.post = summarize(postLat)
	r.delivery = summarize(deliveryLat)

	p.printf("phase 1, throughput: %d of %d messages accepted in %s: %.0f messages/s\n", r.accepted, cfg.messages, fmtDuration(r.wall), r.rate)
	p.printf("  POST latency      p50 %s  p99 %s  max %s\n", fmtDuration(r.post.p50), fmtDuration(r.post.p99), fmtDuration(r.post.max))
	p.printf("  delivery latency  p50 %s  p99 %s  max %s\n", fmtDuration(r.delivery.p50), fmtDuration(r.delivery.p99), fmtDuration(r.delivery.max))
	if r.serverCores > 0 {
		p.printf("  CPU while sending: server %.2f cores, bench %.2f cores (of %d)\n", r.serverCores, r.benchCores, runtime.NumCPU())
	}
	p.printf("  delivered %d events on %d streams: %d missing, %d duplicates, %d out of order, %d unexpected\n",
		r.delivered, len(streams), r.missing, r.duplicates, r.outOfOrder, r.unexpected)
	return r, nil
}

// cpuMeter measures the CPU the server and the bench use over a span.
type cpuMeter struct {
	t                  *benchTarget
	start              time.Time
	server, self       time.Duration
	serverErr, selfErr error
}

func startCPUMeter(t *benchTarget) *cpuMeter {
	m := &cpuMeter{t: t, start: time.Now()}
	m.server, m.serverErr = t.cpuTime()
	m.self, m.selfErr = processCPUTime(os.Getpid())
	return m
}

// cores is the CPU each used since start, in cores; 0 when unknown.
func (m *cpuMeter) cores() (server, self float64) {
	wall := time.Since(m.start).Seconds()
	if s, err := m.t.cpuTime(); err == nil && m.serverErr == nil && wall > 0 {
		server = (s - m.server).Seconds() / wall
	}
	if s, err := processCPUTime(os.Getpid()); err == nil && m.selfErr == nil && wall > 0 {
		self = (s - m.self).Seconds() / wall
	}
	return server, self
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
