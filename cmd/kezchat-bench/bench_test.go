package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kez.lat/chat/server/push"
	"kez.lat/chat/server/push/pushtest"
	"kez.lat/chat/server/testutil"
)

func TestSummarizeUsesNearestRank(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	got := summarize(ds)
	if got.n != 100 || got.p50 != 50*time.Millisecond || got.p99 != 99*time.Millisecond || got.max != 100*time.Millisecond {
		t.Fatalf("summarize(1..100 ms) = %+v", got)
	}
	if one := summarize([]time.Duration{7}); one.p50 != 7 || one.p99 != 7 || one.max != 7 {
		t.Fatalf("summarize of one = %+v", one)
	}
	if none := summarize(nil); none.n != 0 {
		t.Fatalf("summarize(nil) = %+v", none)
	}
}

func TestRemoteTargetAcceptsOnlyLoopbackHTTP(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:6969", "http://localhost:8080/", "http://[::1]:80", "http://127.1.2.3"} {
		if _, err := remoteTarget(ok); err != nil {
			t.Errorf("remoteTarget(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"http://example.com:80", "http://10.0.0.1:6969", "https://127.0.0.1:6969",
		"http://127.0.0.1:6969/chat", "127.0.0.1:6969", "http://0.0.0.0:6969", "http://u:p@127.0.0.1:1"} {
		if _, err := remoteTarget(bad); err == nil {
			t.Errorf("remoteTarget(%q) accepted", bad)
		}
	}
}

func TestFollowCountsEachDeliveryAndChecksOrder(t *testing.T) {
	long := strings.Repeat("A", 300) // longer than the reader's buffer below
	event := func(seq, id string) string {
		return "event: message\nid: " + seq + "\ndata: {\"seq\":" + seq +
			",\"received_at\":1,\"message\":{\"payload\":{\"ct\":\"" + long + "\",\"id\":\"" + id + "\"},\"signature\":{}}}\n\n"
	}
	stream := ": keep-alive\n\n" +
		event("1", "id0") +
		event("2", "id1") +
		event("3", "id1") + // a duplicate delivery
		event("2", "id2") + // seq going back
		event("4", "other") + // not this phase's
		"event: ping\ndata: {}\n\n" // not a message: ignored
	log := newDeliveryLog([]string{"id0", "id1", "id2"})
	var cur atomic.Pointer[deliveryLog]
	cur.Store(log)
	st := &rawStream{lines: bufio.NewReaderSize(strings.NewReader(stream), 64), parse: kezchatDelivery}
	st.follow(&cur)
	checkDeliveryLog(t, log, 4, []int32{1, 2, 1}, 1, 1)
}

// checkDeliveryLog checks what a stream's follow counted: deliveries in
// all, per prepared message, out of order and unexpected.
func checkDeliveryLog(t *testing.T, log *deliveryLog, delivered int64, perMessage []int32, outOfOrder, unexpected int64) {
	t.Helper()
	if got := log.delivered.Load(); got != delivered {
		t.Errorf("delivered %d, want %d", got, delivered)
	}
	for i, want := range perMessage {
		if got := log.deliveries[i].Load(); got != want {
			t.Errorf("message %d delivered %d times, want %d", i, got, want)
		}
	}
	if o, u := log.outOfOrder.Load(), log.unexpected.Load(); o != outOfOrder || u != unexpected {
		t.Errorf("out of order %d, unexpected %d; want %d and %d", o, u, outOfOrder, unexpected)
	}
}

// TestKezchatDeliveryReadsTheIDWithoutDecoding: the parser takes the seq
// from the event's id, checks the envelope repeats it, and finds the
// payload's id; anything else is ignored or counted as unexpected.
func TestKezchatDeliveryReadsTheIDWithoutDecoding(t *testing.T) {
	doc := `{"payload":{"ct":"QUJD","from":"s1","id":"m-1:bob","server":"x","to":"bob","ts":1,"type":"message"},"signature":{"alg":"ed25519","key":"k","sig":"s"}}`
	for _, c := range []struct {
		event, id, data string
		mid             string
		seq             uint64
		kind            eventKind
	}{
		{"message", "17", `{"seq":17,"received_at":5,"message":` + doc + `}`, "m-1:bob", 17, delivery},
		{"typing", "", `{"from":"alice","ct":"QUJD"}`, "", 0, notDelivery},
		{"message", "17", `{"seq":171,"received_at":5,"message":` + doc + `}`, "", 0, malformedDelivery}, // seqs disagree
		{"message", "1x", `{"seq":1x,"message":` + doc + `}`, "", 0, malformedDelivery},
		{"message", "", `{"seq":,"message":` + doc + `}`, "", 0, malformedDelivery},
		{"message", "3", `{"seq":3,"message":{"payload":{}}}`, "", 0, malformedDelivery}, // no id
		{"message", "3", `{"seq":3,"message":{"payload":{"id":""}}}`, "", 0, malformedDelivery},
	} {
		mid, seq, kind := kezchatDelivery([]byte(c.event), []byte(c.id), []byte(c.data))
		if string(mid) != c.mid || seq != c.seq || kind != c.kind {
			t.Errorf("kezchatDelivery(%q, %q, %q) = %q, %d, %d; want %q, %d, %d", c.event, c.id, c.data, mid, seq, kind, c.mid, c.seq, c.kind)
		}
	}
}

// TestOpenLoopKeepsToItsScheduleAndCountsTheWait sends on a schedule
// faster than a slow sender can follow: every send still gets its own due
// time, 2 ms apart, and a latency measured from it includes the wait for a
// free sender (no coordinated omission).
func TestOpenLoopKeepsToItsScheduleAndCountsTheWait(t *testing.T) {
	const n, rate, inFlight = 20, 500.0, 2 // due every 2 ms
	base := time.Now()
	clock := func() int64 { return int64(time.Since(base)) }
	var mu sync.Mutex
	due := make([]int64, n)
	answered := make([]int64, n)
	busy, most := 0, 0
	unsent := openLoop(context.Background(), n, rate, inFlight, clock, func(i int, d int64) {
		mu.Lock()
		busy++
		most = max(most, busy)
		mu.Unlock()
		time.Sleep(10 * time.Millisecond) // a slow server: 200 answers/s at most
		mu.Lock()
		busy--
		due[i], answered[i] = d, clock()
		mu.Unlock()
	})
	if unsent != 0 {
		t.Fatalf("%d not sent", unsent)
	}
	if most > inFlight {
		t.Fatalf("%d sends at once, want at most %d", most, inFlight)
	}
	for i := 1; i < n; i++ {
		if got := time.Duration(due[i] - due[i-1]); got < 1900*time.Microsecond || got > 2100*time.Microsecond {
			t.Fatalf("due times %d and %d are %s apart, want 2ms", i-1, i, got)
		}
	}
	// The last send was due 38 ms in but could start only once 18 earlier
	// ones had taken 10 ms each on 2 senders: about 100 ms, so its latency
	// is about 62 ms, not the 10 ms the send itself took.
	if lat := time.Duration(answered[n-1] - due[n-1]); lat < 55*time.Millisecond {
		t.Fatalf("latency of the last send = %s, want the wait counted (about 62ms)", lat)
	}
}

func TestOpenLoopStopsWhenTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var sent atomic.Int64
	unsent := openLoop(ctx, 1000, 1000, 4, func() int64 { return time.Now().UnixNano() }, func(int, int64) {
		if sent.Add(1) == 10 {
			cancel()
		}
	})
	if got := int(sent.Load()) + unsent; got != 1000 || unsent == 0 {
		t.Fatalf("sent %d, unsent %d; want them to add up to 1000 with some unsent", sent.Load(), unsent)
	}
}

// TestLoadPhasesAgainstARealServer runs phases 1 and 2 in miniature against
// a test server: every message must be accepted and delivered exactly once.
func TestLoadPhasesAgainstARealServer(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	target, err := remoteTarget(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := benchConfig{streams: 5, messages: 60, senders: 4, rate: 200, rateDuration: 300 * time.Millisecond, inFlight: 8, msgSize: 20}
	hc := benchHTTPClient(max(cfg.senders, cfg.inFlight))
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	closed, open, err := runLoad(ctx, cfg, target, hc, "btest", &benchPrinter{w: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		name string
		r    *loadResult
		n    int
	}{{"closed loop", closed, cfg.messages}, {"open loop", open, 60}} {
		if r.r.sent != r.n || r.r.accepted != r.n || r.r.failed != 0 || r.r.delivered != r.n || !r.r.exactlyOnce() {
			t.Fatalf("%s: result %+v", r.name, r.r)
		}
		if r.r.rate <= 0 || r.r.post.n != r.n || r.r.delivery.n != r.n {
			t.Fatalf("%s: no figures: %+v", r.name, r.r)
		}
	}
	// 60 messages at 200/s take about 295 ms from the first due time.
	if open.offered != cfg.rate || open.wall < 290*time.Millisecond {
		t.Fatalf("open loop: offered %.0f/s over %s, want 200/s over about 300ms", open.offered, open.wall)
	}
}

func TestParseNoticeAcceptsOnlyTheMetadataNotice(t *testing.T) {
	if seq, ok := parseNotice([]byte(`{"type":"message","to":"bob","seq":42}`), "bob"); !ok || seq != 42 {
		t.Fatalf("the notice itself: %d, %v", seq, ok)
	}
	for _, bad := range []string{
		`{"type":"message","to":"carol","seq":42}`,                 // another recipient's
		`{"type":"message","to":"bob","seq":42,"ct":"AAAA"}`,       // more than metadata
		`{"type":"message","to":"bob","seq":0}`,                    // no seq
		`{"type":"reaction","to":"bob","seq":42}`,                  // another type
		`{"to":"bob","type":"message","seq":42}`,                   // not as the server encodes it
		`{"type":"message","to":"bob","seq":42} `,                  // trailing bytes
		`{"type":"message","to":"bob","seq":42}{"type":"message"}`, // two documents
		`hello`,
	} {
		if _, ok := parseNotice([]byte(bad), "bob"); ok {
			t.Errorf("accepted %s", bad)
		}
	}
}

// TestPushPhaseAgainstARealServer runs phase 4 in miniature against a test
// server with Web Push on and a local push service: every message must
// bring exactly one push that the service verified and decrypted.
func TestPushPhaseAgainstARealServer(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	subject, err := push.NormalizeSubject(benchVAPIDSubject)
	if err != nil {
		t.Fatal(err)
	}
	svc := pushtest.New(t, subject, &key.PublicKey)
	srv := testutil.StartServer(t, testutil.Options{
		Push:           &push.Config{Key: key, Subject: benchVAPIDSubject},
		AllowEndpoints: []string{svc.Origin()},
	})
	target, err := remoteTarget(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	target.push, target.vapidKey = svc, push.PublicKey(key)
	cfg := benchConfig{senders: 4, msgSize: 20, pushRecipients: 5, pushMessages: 200}
	hc := benchHTTPClient(cfg.senders)
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := runPush(ctx, cfg, target, hc, "btest", &benchPrinter{w: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if !res.ok() || res.pushed != cfg.pushMessages || res.accepted != cfg.pushMessages || res.refused != 0 {
		t.Fatalf("result %+v", res)
	}
	if res.rate <= 0 || res.wall <= 0 || res.recipients != cfg.pushRecipients {
		t.Fatalf("no figures: %+v", res)
	}
}

// TestBenchWithItsOwnServerRunsThePushPhase runs kezchat-bench end to end
// with tiny numbers: its own server processes, the push one started with
// --vapid-subject, --vapid-key-path and --push-allow-endpoint.
func TestBenchWithItsOwnServerRunsThePushPhase(t *testing.T) {
	bin := testutil.KezchatBinary(t)
	var stdout, stderr strings.Builder
	err := runBench(t.Context(), []string{"--kezchat", bin, "--streams", "4", "--messages", "40", "--senders", "4", "--rate", "0",
		"--skip-idle", "--push-recipients", "6", "--push-messages", "300", "--timeout", "1m"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("bench: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "phase 4, Web Push: 300 of 300 messages pushed, each push VAPID-verified and decrypted") {
		t.Fatalf("no push phase result in:\n%s", out)
	}
	var rate float64
	var n int
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "  Web Push, verified and decrypted (6 recipients)") {
			fields := strings.Fields(line[len("  Web Push, verified and decrypted (6 recipients)"):])
			rate, _ = strconv.ParseFloat(fields[0], 64)
			n, _ = strconv.Atoi(strings.TrimPrefix(fields[2], "("))
		}
		if rest, ok := strings.CutPrefix(line, "    pushes missing / duplicate or wrong / refused"); ok {
			if f := strings.Fields(rest); len(f) < 5 || strings.Join(f[:5], " ") != "0 / 0 / 0" || f[len(f)-1] != "yes" {
				t.Fatalf("bad pushes: %s", line)
			}
		}
	}
	if rate <= 0 || n != 300 {
		t.Fatalf("push figure %v pushes/s over %d pushes, want positive over 300, in:\n%s", rate, n, out)
	}

	// With --target the phase is skipped, with a note.
	srv := testutil.StartServer(t, testutil.Options{})
	stdout.Reset()
	err = runBench(t.Context(), []string{"--target", srv.URL, "--streams", "2", "--messages", "10", "--senders", "2",
		"--rate", "0", "--skip-idle"}, &stdout, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "phase 4, Web Push: skipped: the bench cannot make a --target server push") {
		t.Fatalf("no skip note in:\n%s", stdout.String())
	}
}

// TestBenchComparesReplicasOnJetStream runs kezchat-bench --replicas 2 end
// to end with tiny numbers: one SQLite server, then two replicas on an
// embedded NATS JetStream (each sync setting), streams and POSTs spread
// over both. Each must deliver everything exactly once, with seqs that
// increase per stream (with gaps on JetStream).
func TestBenchComparesReplicasOnJetStream(t *testing.T) {
	bin := testutil.KezchatBinary(t)
	var stdout, stderr strings.Builder
	err := runBench(t.Context(), []string{"--kezchat", bin, "--streams", "6", "--messages", "60", "--senders", "4",
		"--rate", "100", "--rate-duration", "300ms", "--in-flight", "8",
		// The whole run's deadline, not a speed check: on a loaded machine
		// the fsync-always phase alone took 17 s, and a 1m deadline cut the
		// last phase short.
		"--skip-idle", "--skip-push", "--replicas", "2", "--replica-sync", "all", "--timeout", "4m"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("bench: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"phase 5, maximum throughput, 2 replicas on JetStream (sync_interval: always): 60 of 60 messages accepted",
		"phase 5, maximum throughput, 2 replicas on JetStream (sync_interval default (2 min)): 60 of 60 messages accepted",
		"phase 5, maximum throughput, 2 replicas on JetStream (3 NATS servers, 3 stream replicas): 60 of 60 messages accepted",
		"phase 5, latency at a fixed rate, 2 replicas on JetStream (sync_interval: always): 30 of 30 messages accepted",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("no %q in:\n%s", want, out)
		}
	}
	rows := 0
	for line := range strings.Lines(out) {
		for _, name := range []string{"1 replica, SQLite", "2 replicas, JetStream, sync_interval: always",
			"2 replicas, JetStream, sync_interval default (2 min)", "2 replicas, JetStream, 3 NATS servers, 3 stream replicas"} {
			rest, ok := strings.CutPrefix(line, "  "+name+"  ")
			if !ok {
				continue
			}
			rows++
			f := strings.Fields(rest)
			if rate, _ := strconv.ParseFloat(f[0], 64); rate <= 0 {
				t.Fatalf("no throughput: %s", line)
			}
			if !strings.Contains(rest, " 0 / 0 / 0 ") {
				t.Fatalf("missing, duplicate or out-of-order deliveries: %s", line)
			}
		}
	}
	if rows != 4 {
		t.Fatalf("%d of 4 comparison rows in:\n%s", rows, out)
	}
}
