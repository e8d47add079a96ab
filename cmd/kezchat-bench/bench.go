package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"text/tabwriter"
	"time"

	"kez.lat/chat/client"
)

// Targets the figures in docs/benchmarks.md are held to.
const (
	targetRate          = 5000                  // accepted (stored and delivered) messages per second
	targetDeliveryP99   = 20 * time.Millisecond // POST to stream, 99th percentile, at targetRate
	targetStreams       = 1000                  // open streams while the latency target is measured
	targetIdleStreamKiB = 20                    // server memory per idle open stream
)

// benchConfig holds the settings of kezchat-bench.
type benchConfig struct {
	kezchat      string // the binary of the bench's own servers
	target       string
	streams      int
	messages     int
	senders      int
	rate         float64
	rateDuration time.Duration
	inFlight     int
	idleStreams  int
	msgSize      int
	skipIdle     bool
	timeout      time.Duration
	// The Web Push phase.
	skipPush bool
	limitsOn bool
	// serverMemoryLimit is the GOMEMLIMIT the server runs with ("": none).
	serverMemoryLimit string
	pushRecipients    int
	pushMessages      int
	// The replica phase.
	replicas    int
	replicaSync string
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "group" {
		return runGroupBench(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "anchor" {
		return runAnchorBench(ctx, args[1:], stdout, stderr)
	}
	var cfg benchConfig
	fs := newFlagSet(
		"Measures a chat server in four phases: the maximum message throughput\n"+
			"(closed loop: each sender waits for its answer), then POST and delivery\n"+
			"latency at a fixed rate (open loop: each message is sent at its scheduled\n"+
			"time and its latency runs from that time), both with a stream open per\n"+
			"recipient, then server memory per idle stream, then Web Push notifications\n"+
			"per second to recipients without a stream, each VAPID-verified and\n"+
			"decrypted by a local push service. Without --target it runs its own\n"+
			"server (--kezchat server) on a free loopback port with a temporary database.", stderr)
	fs.StringVar(&cfg.kezchat, "kezchat", defaultKezchat(), "the kezchat binary the bench runs its own servers with")
	fs.StringVar(&cfg.target, "target", "", "URL of a running server to measure (loopback only); empty starts one")
	fs.IntVar(&cfg.streams, "streams", targetStreams, "recipients with an open stream during both load phases")
	fs.IntVar(&cfg.messages, "messages", 50000, "messages sent in the closed-loop throughput phase")
	fs.IntVar(&cfg.senders, "senders", 64, "concurrent senders (HTTP connections) in the closed-loop phase")
	fs.Float64Var(&cfg.rate, "rate", targetRate, "messages per second in the open-loop latency phase; 0 skips it")
	fs.DurationVar(&cfg.rateDuration, "rate-duration", 10*time.Second, "how long the open-loop phase sends")
	fs.IntVar(&cfg.inFlight, "in-flight", 512, "most open-loop requests outstanding at once; a send due while all are busy waits, and its latency counts the wait")
	fs.IntVar(&cfg.idleStreams, "idle-streams", 10000, "idle streams held open to measure server memory")
	fs.IntVar(&cfg.msgSize, "msg-size", 100, "plaintext bytes per message")
	fs.BoolVar(&cfg.skipIdle, "skip-idle", false, "skip the idle-memory phase")
	fs.BoolVar(&cfg.skipPush, "skip-push", false, "skip the Web Push phase")
	fs.StringVar(&cfg.serverMemoryLimit, "server-memory-limit", defaultServerMemoryLimit, serverMemoryLimitUsage)
	fs.BoolVar(&cfg.limitsOn, "limits-on", false, "run the server with its byte quotas and per-address caps on, set above what the load stores or opens: their accounting is measured, nothing is refused")
	fs.IntVar(&cfg.pushRecipients, "push-recipients", 200, "recipients with a push subscription and no stream in the Web Push phase")
	fs.IntVar(&cfg.pushMessages, "push-messages", 20000, "messages sent in the Web Push phase, one push each")
	fs.IntVar(&cfg.replicas, "replicas", 0, "phase 5: run the load phases again on this many replicas (--store jetstream; 1 measures the store alone) sharing a NATS server with JetStream that the bench embeds, streams and senders spread over them, and compare with the one SQLite server of phases 1 and 2; 0 skips it")
	fs.StringVar(&cfg.replicaSync, "replica-sync", syncAlways, "phase 5's JetStream: always (one NATS server fsyncing before each ack, what the operator configures for one), default (one server with nats-server's 2-minute sync interval), cluster (three clustered servers, stream and buckets replicated on all three, as the operator deploys with nats.replicas 3), both (always, then default) or all three")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Minute, "give up when the whole run takes longer")
	// The bench takes no settings from the environment: a KEZ_ variable
	// left in a shell must not change a figure.
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := cfg.check(); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	tag, err := runTag()
	if err != nil {
		return err
	}
	p := &benchPrinter{w: stdout}

	local := cfg.target == ""
	var target *benchTarget
	if local {
		target, err = startBenchServer(ctx, cfg, stderr, false)
	} else {
		target, err = remoteTarget(cfg.target)
	}
	if err != nil {
		return err
	}
	hc := benchHTTPClient(max(cfg.senders, cfg.inFlight))
	defer func() {
		// Idle keep-alive connections would hold up the server's graceful
		// shutdown (net/http waits 5 s for connections that never sent a
		// request): close them first.
		hc.CloseIdleConnections()
		target.stop(stderr)
	}()
	p.printf("kezchat-bench: %s; %d CPUs, GOMAXPROCS %d, %s\n", target.describe(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())

	closed, open, err := runLoad(ctx, cfg, target, hc, tag, p)
	if err != nil {
		return err
	}

	var replicas []*replicaResult
	var replicaNote string
	switch {
	case cfg.replicas == 0:
	case !local:
		replicaNote = "skipped: the replica phase runs its own servers, not a --target"
	default:
		// The single server is done: its streams are closed, and it
		// must not hold the cores the replicas are measured on.
		hc.CloseIdleConnections()
		target.stop(stderr)
		if replicas, err = runReplicas(ctx, cfg, hc, tag+"x", p, stderr); err != nil {
			return fmt.Errorf("replica phase: %w", err)
		}
	}
	if replicaNote != "" {
		p.printf("\nphase 5, replicas: %s\n", replicaNote)
	}

	var idle *idleResult
	var idleNote string
	switch {
	case cfg.skipIdle:
		idleNote = "skipped (--skip-idle)"
	case !local:
		idleNote = "skipped: the RSS of a --target server cannot be read"
	case cfg.idleStreams <= 0:
		idleNote = "skipped (--idle-streams 0)"
	default:
		// A fresh server, so the baseline is not inflated by heap the
		// throughput phase freed but the runtime has not yet returned to the
		// OS: stream memory would reuse it and look cheaper than it is.
		hc.CloseIdleConnections()
		target.stop(stderr)
		fresh, err := startBenchServer(ctx, cfg, stderr, false)
		if err != nil {
			return fmt.Errorf("idle phase: %w", err)
		}
		target = fresh
		p.printf("\nphase 3 on a fresh server: %s\n", target.describe())
		if idle, err = runIdle(ctx, cfg, target, hc, tag, p); err != nil {
			return fmt.Errorf("idle phase: %w", benchErr(ctx, err))
		}
	}
	if idleNote != "" {
		p.printf("\nphase 3, idle memory: %s\n", idleNote)
	}

	var pushRes *pushResult
	var pushNote string
	switch {
	case cfg.skipPush:
		pushNote = "skipped (--skip-push)"
	case !local:
		pushNote = "skipped: the bench cannot make a --target server push to its push service"
	default:
		// A fresh server with Web Push on, so the first phases measure the
		// server as it was, and this one starts from the same state
		// whether or not phase 3 ran.
		hc.CloseIdleConnections()
		target.stop(stderr)
		fresh, err := startBenchServer(ctx, cfg, stderr, true)
		if err != nil {
			return fmt.Errorf("push phase: %w", err)
		}
		target = fresh
		p.printf("\nphase 4 on a fresh server: %s\n", target.describe())
		if pushRes, err = runPush(ctx, cfg, target, hc, tag, p); err != nil {
			return fmt.Errorf("push phase: %w", benchErr(ctx, err))
		}
	}
	if pushNote != "" {
		p.printf("\nphase 4, Web Push: %s\n", pushNote)
	}

	printSummary(stdout, cfg, closed, open, idle, idleNote, pushRes, pushNote)
	printReplicaSummary(stdout, closed, open, replicas)
	if pushRes != nil && !pushRes.ok() {
		return fmt.Errorf("push phase: not every message brought exactly one verified push: %d of %d messages accepted, %d pushed, %d missing, %d duplicates, %d unexpected, %d malformed, %d refused by the push service",
			pushRes.accepted, pushRes.sent, pushRes.pushed, pushRes.missing, pushRes.duplicates, pushRes.unexpected, pushRes.malformed, pushRes.refused)
	}
	phases := []struct {
		name string
		r    *loadResult
	}{{"closed-loop phase", closed}, {"open-loop phase", open}}
	for _, rr := range replicas {
		name := fmt.Sprintf("%s on JetStream (%s)", replicasLabel(rr.replicas), syncLabel(rr.sync))
		phases = append(phases, struct {
			name string
			r    *loadResult
		}{name + ", closed loop", rr.closed}, struct {
			name string
			r    *loadResult
		}{name + ", open loop", rr.open})
	}
	for _, ph := range phases {
		r := ph.r
		if r == nil {
			continue
		}
		if !r.exactlyOnce() {
			return fmt.Errorf("%s: delivery was not exactly once and in order: %d missing, %d duplicates, %d out of order, %d unexpected",
				ph.name, r.missing, r.duplicates, r.outOfOrder, r.unexpected)
		}
		if r.failed > 0 {
			return fmt.Errorf("%s: %d of %d messages were refused", ph.name, r.failed, r.sent)
		}
	}
	return nil
}

// runLoad runs phases 1 and 2 on one server, with the same users and
// streams: the closed loop, then (unless --rate is 0) the open loop.
func runLoad(ctx context.Context, cfg benchConfig, target *benchTarget, hc *http.Client, tag string, p *benchPrinter) (closed, open *loadResult, err error) {
	run, err := startLoad(ctx, cfg, []*benchTarget{target}, hc, tag, p)
	if err != nil {
		return nil, nil, fmt.Errorf("setting up the load phases: %w", benchErr(ctx, err))
	}
	defer run.close()
	if closed, err = run.closedLoop(ctx); err != nil {
		return nil, nil, fmt.Errorf("closed-loop phase: %w", benchErr(ctx, err))
	}
	if cfg.rate > 0 {
		p.printf("\n")
		if open, err = run.openLoop(ctx); err != nil {
			return nil, nil, fmt.Errorf("open-loop phase: %w", benchErr(ctx, err))
		}
	}
	return closed, open, nil
}

func (cfg benchConfig) check() error {
	switch {
	case cfg.streams < 1:
		return errors.New("--streams must be at least 1")
	case cfg.messages < 1:
		return errors.New("--messages must be at least 1")
	case cfg.senders < 1:
		return errors.New("--senders must be at least 1")
	case cfg.rate < 0 || math.IsNaN(cfg.rate) || math.IsInf(cfg.rate, 0):
		return errors.New("--rate must be a number of messages per second, or 0")
	case cfg.rate > 0 && (cfg.rateDuration <= 0 || cfg.rateDuration > maxRateDuration):
		// The messages are signed before the phase, and all of them must
		// reach the server within its 5-minute window (see maxMessageAge).
		return fmt.Errorf("--rate-duration must be positive and at most %s", maxRateDuration)
	case cfg.rate > 0 && cfg.rate*cfg.rateDuration.Seconds() < 1:
		return errors.New("--rate times --rate-duration must be at least one message")
	case cfg.rate*cfg.rateDuration.Seconds() > 10_000_000:
		return errors.New("--rate times --rate-duration must be at most 10,000,000 messages")
	case cfg.inFlight < 1:
		return errors.New("--in-flight must be at least 1")
	case cfg.idleStreams < 0:
		return errors.New("--idle-streams must not be negative")
	case cfg.msgSize < 0 || cfg.msgSize > 32<<10:
		// 32 KiB of plaintext keeps the base64 ciphertext and its envelope
		// well inside the server's 96 KiB body limit.
		return errors.New("--msg-size must be 0 to 32768")
	case cfg.replicas < 0 || cfg.replicas > 16:
		return errors.New("--replicas must be 0 (skip) to 16")
	case cfg.timeout <= 0:
		return errors.New("--timeout must be positive")
	case !cfg.skipPush && cfg.pushRecipients < 1:
		return errors.New("--push-recipients must be at least 1")
	case !cfg.skipPush && (cfg.pushMessages < 1 || cfg.pushMessages > maxPushMessages):
		return fmt.Errorf("--push-messages must be 1 to %d", maxPushMessages)
	}
	// Our side holds one descriptor per stream; leave room for the senders'
	// connections and the runtime.
	if limit, ok := openFileLimit(); ok {
		need := uint64(max(cfg.streams, cfg.idleStreams) + max(cfg.senders, cfg.inFlight) + 64)
		if need > limit {
			return fmt.Errorf("%d streams need about %d open files; the limit is %d (raise ulimit -n)", max(cfg.streams, cfg.idleStreams), need, limit)
		}
	}
	return nil
}

// benchErr names the --timeout when it is what stopped a phase.
func benchErr(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return fmt.Errorf("%w (the --timeout ran out)", err)
	}
	return err
}

// runTag is a random prefix for this run's handles and message ids, so runs
// against the same --target server never collide.
func runTag() (string, error) {
	const letters = "abcdefghijklmnopqrstuvwxyz"
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return "b" + string(b[:]), nil
}

// benchHTTPClient keeps an idle connection for every concurrent sender, so
// the timed phase measures requests, not TCP handshakes.
func benchHTTPClient(senders int) *http.Client {
	conns := max(senders, registerWorkers) + 8
	return &http.Client{
		Timeout: client.DefaultTimeout,
		Transport: &http.Transport{
			Proxy:               nil, // loopback only: never through a proxy
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
}

// remoteTarget checks that a --target URL is plain HTTP on a loopback
// address: the bench sends tens of thousands of requests and must never be
// pointed at someone else's server.
func remoteTarget(raw string) (*benchTarget, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("--target %q: %w", raw, err)
	}
	if u.Scheme != "http" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("--target %q: want http://host:port (streams are read over plain TCP)", raw)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("--target %q: only loopback addresses (127.0.0.0/8, ::1, localhost) may be benchmarked", raw)
	}
	addr := net.JoinHostPort(host, port)
	return &benchTarget{url: "http://" + addr, addr: addr}, nil
}

// benchPrinter writes progress lines as phases finish.
type benchPrinter struct{ w io.Writer }

func (p *benchPrinter) printf(format string, args ...any) { fmt.Fprintf(p.w, format, args...) }

// step prints what is about to happen, runs fn and prints how long it took.
func (p *benchPrinter) step(what string, fn func() error) error {
	p.printf("%s ... ", what)
	start := time.Now()
	err := fn()
	if err != nil {
		p.printf("failed\n")
		return err
	}
	p.printf("%s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// printSummary prints the final table: every figure with its target.
func printSummary(w io.Writer, cfg benchConfig, closed, open *loadResult, idle *idleResult, idleNote string, push *pushResult, pushNote string) {
	fmt.Fprintln(w, "\nsummary")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  metric\tresult\ttarget\tmet")
	fmt.Fprintf(tw, "  max throughput (closed loop, %d senders)\t%.0f msg/s (%d in %s)\t>= %d msg/s\t%s\n",
		cfg.senders, closed.rate, closed.accepted, fmtDuration(closed.wall), targetRate, yesNo(closed.rate >= targetRate && closed.failed == 0))
	fmt.Fprintf(tw, "    POST / delivery p99 at max throughput\t%s / %s\t\t\n", fmtDuration(closed.post.p99), fmtDuration(closed.delivery.p99))
	if open != nil {
		met := "-" // the target is set for targetRate with targetStreams streams
		if cfg.rate >= targetRate && cfg.streams >= targetStreams {
			met = yesNo(open.delivery.n > 0 && open.delivery.p99 <= targetDeliveryP99 && open.failed == 0)
		}
		fmt.Fprintf(tw, "  delivery p50 / p99 / max at %.0f msg/s (open loop)\t%s / %s / %s\tp99 <= %s\t%s\n",
			open.offered, fmtDuration(open.delivery.p50), fmtDuration(open.delivery.p99), fmtDuration(open.delivery.max),
			fmtDuration(targetDeliveryP99), met)
		fmt.Fprintf(tw, "    POST p50 / p99 / max at %.0f msg/s\t%s / %s / %s\t\t\n",
			open.offered, fmtDuration(open.post.p50), fmtDuration(open.post.p99), fmtDuration(open.post.max))
	} else {
		fmt.Fprintf(tw, "  delivery p99 at %d msg/s (open loop)\tskipped (--rate 0)\tp99 <= %s\t-\n", targetRate, fmtDuration(targetDeliveryP99))
	}
	missing, dups := closed.missing, closed.duplicates
	once := closed.exactlyOnce()
	if open != nil {
		missing, dups = missing+open.missing, dups+open.duplicates
		once = once && open.exactlyOnce()
	}
	fmt.Fprintf(tw, "  missing / duplicate deliveries\t%d / %d\t0 / 0\t%s\n", missing, dups, yesNo(once))
	if idle != nil {
		fmt.Fprintf(tw, "  server memory per idle stream\t%.1f KiB (%d streams)\t<= %d KiB\t%s\n",
			idle.perStreamKiB, idle.streams, targetIdleStreamKiB, yesNo(idle.perStreamKiB <= targetIdleStreamKiB))
	} else {
		fmt.Fprintf(tw, "  server memory per idle stream\t%s\t<= %d KiB\t-\n", idleNote, targetIdleStreamKiB)
	}
	if push != nil {
		fmt.Fprintf(tw, "  Web Push, verified and decrypted (%d recipients)\t%.0f pushes/s (%d in %s)\t>= %d pushes/s\t%s\n",
			push.recipients, push.rate, push.pushed, fmtDuration(push.wall), targetPushRate, yesNo(push.rate >= targetPushRate && push.ok()))
		fmt.Fprintf(tw, "    pushes missing / duplicate or wrong / refused\t%d / %d / %d\t0 / 0 / 0\t%s\n",
			push.missing, push.duplicates+push.unexpected+push.malformed, push.refused, yesNo(push.ok()))
	} else {
		fmt.Fprintf(tw, "  Web Push, verified and decrypted\t%s\t>= %d pushes/s\t-\n", pushNote, targetPushRate)
	}
	tw.Flush()
}

// printReplicaSummary compares phase 5 with phases 1 and 2: throughput
// and latency of the replicas on JetStream against the one SQLite server,
// and the share of its throughput they reach against issue 8's target.
func printReplicaSummary(w io.Writer, closed, open *loadResult, replicas []*replicaResult) {
	if len(replicas) == 0 {
		return
	}
	fmt.Fprintln(w, "\nreplicas (phase 5) against one replica on SQLite (phases 1 and 2), on the same cores")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  setup\tmax msg/s (closed loop)\tshare of SQLite's\tdelivery p50 / p99 at max\tdelivery p50 / p99 open loop\tmissing / dup / out of order\ttarget\tmet")
	row := func(name string, c, o *loadResult, share, target, met string) {
		ol := "-"
		if o != nil {
			ol = fmt.Sprintf("%s / %s at %.0f/s", fmtDuration(o.delivery.p50), fmtDuration(o.delivery.p99), o.offered)
		}
		missing, dups, ooo := c.missing, c.duplicates, c.outOfOrder
		if o != nil {
			missing, dups, ooo = missing+o.missing, dups+o.duplicates, ooo+o.outOfOrder
		}
		fmt.Fprintf(tw, "  %s\t%.0f\t%s\t%s / %s\t%s\t%d / %d / %d\t%s\t%s\n", name, c.rate, share,
			fmtDuration(c.delivery.p50), fmtDuration(c.delivery.p99), ol, missing, dups, ooo, target, met)
	}
	row("1 replica, SQLite", closed, open, "100%", "", "")
	for _, rr := range replicas {
		share := 0.0
		if closed.rate > 0 {
			share = rr.closed.rate / closed.rate
		}
		ok := share >= targetReplicaShare && rr.closed.exactlyOnce() && rr.closed.failed == 0
		row(fmt.Sprintf("%s, JetStream, %s", replicasLabel(rr.replicas), syncLabel(rr.sync)), rr.closed, rr.open,
			fmt.Sprintf("%.0f%%", 100*share), fmt.Sprintf(">= %.0f%%", 100*targetReplicaShare), yesNo(ok))
	}
	tw.Flush()
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}
