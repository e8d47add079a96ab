package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// anchorConfig holds the settings of `kezchat-bench anchor`.
type anchorConfig struct {
	kezchat, centrifugo string
	streams             int
	senders             sendersFlag
	duration            time.Duration
	rounds              int
	msgSize             int
	messages            int // prepared per timed phase; 0 sizes them from the warm-up
	historySize         int
	historyTTL          time.Duration
	timeout             time.Duration
	serverMemoryLimit   string
}

const anchorSynopsis = `kezchat-bench anchor: kezchat against Centrifugo (the anchor) under the same
load and the same client, side by side. In each round the bench runs its own
kezchat server (SQLite, as the other phases do), then Centrifugo (--centrifugo;
memory engine, history on, uni_sse, HTTP API; make centrifugo builds it), each
with --streams SSE streams, one recipient (inbox, or channel inbox:<i>) each,
and for each --senders count a closed loop for --duration. Every message is
prepared before its timed phase: kezchat's signed and encrypted as the other
phases do, Centrifugo's publish requests carrying the same signed document
under another id. Both streams' deliveries are recognised the same cheap way
(the id found in the data line, no JSON decoding). Per server: messages/s,
delivery p50/p99 (from just before the POST to the event parsed), server and
bench CPU per message, the server's RSS with the streams open, and whether
every message was delivered exactly once and in order.`

// anchorWarmPerStream is how many messages each stream receives in the
// warm-up before each timed phase, whose rate sizes that phase.
const anchorWarmPerStream = 2

// anchorPrepareMargin is how many times the warm-up's rate over --duration
// the bench prepares for a timed phase: the warm-up is short, and its
// server still cold, so it mostly runs slower than what follows.
const anchorPrepareMargin = 2.5

// anchorMaxPrepared bounds the messages prepared for one timed phase (about
// 1 KiB each in memory).
const anchorMaxPrepared = 1_500_000

// sendersFlag is a comma-separated list of sender counts.
type sendersFlag []int

func (f *sendersFlag) String() string {
	parts := make([]string, len(*f))
	for i, n := range *f {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ",")
}

func (f *sendersFlag) Set(v string) error {
	var ns []int
	for part := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil || n < 1 {
			return fmt.Errorf("%q is not a number of senders", part)
		}
		ns = append(ns, n)
	}
	*f = ns
	return nil
}

// anchorResult is one server's timed phase with one sender count.
type anchorResult struct {
	senders  int
	warm     *loadResult // the warm-up before it
	res      *loadResult
	prepared int
	// ranOut is set when every prepared message was sent before the
	// duration ended: the rate then holds over a shorter time.
	ranOut bool
	// The server's RSS with the streams open, before the warm-up and
	// after the timed phase, in KiB.
	rssBefore, rssAfter int64
}

// cpuPerMessage is CPU time per accepted message, in microseconds.
func cpuPerMessage(cpu time.Duration, r *loadResult) float64 {
	if r.accepted == 0 {
		return 0
	}
	return float64(cpu.Microseconds()) / float64(r.accepted)
}

// anchorRound is what one round measured: each server with each sender
// count, in the order of --senders.
type anchorRound struct {
	n                   int
	docBytes            int // the signed document each message carries
	kezchat, centrifugo []*anchorResult
}

// preparer prepares n messages with fresh ids for the next phase, makes
// their log the one the streams record in, and returns it with the bodies.
type preparer func(ctx context.Context, n int) (*deliveryLog, [][]byte, error)

// runAnchorBench is `kezchat-bench anchor ...`.
func runAnchorBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := anchorConfig{senders: sendersFlag{64, 8}}
	fs := newFlagSet(anchorSynopsis, stderr)
	fs.StringVar(&cfg.kezchat, "kezchat", defaultKezchat(), "the kezchat binary the bench runs its server with")
	fs.StringVar(&cfg.centrifugo, "centrifugo", defaultCentrifugo(), "the centrifugo binary (make centrifugo builds it into the tool cache: hack/tools/install-k8s-tools.sh --print-dir)")
	fs.IntVar(&cfg.streams, "streams", targetStreams, "SSE streams, one recipient each, open during every phase")
	fs.Var(&cfg.senders, "senders", "concurrent senders (HTTP connections) of the closed loop; a comma-separated list runs a timed phase for each")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "how long each timed phase sends")
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds, each running a fresh kezchat and then a fresh Centrifugo")
	fs.IntVar(&cfg.msgSize, "msg-size", 300, "plaintext bytes per message")
	fs.IntVar(&cfg.messages, "messages", 0, "messages prepared for each timed phase; 0 prepares twice what the warm-up's rate sends in --duration")
	fs.IntVar(&cfg.historySize, "history-size", 100, "Centrifugo's history_size: publications kept per channel")
	fs.DurationVar(&cfg.historyTTL, "history-ttl", 5*time.Minute, "Centrifugo's history_ttl")
	fs.DurationVar(&cfg.timeout, "timeout", 30*time.Minute, "give up when the whole run takes longer")
	fs.StringVar(&cfg.serverMemoryLimit, "server-memory-limit", defaultServerMemoryLimit, serverMemoryLimitUsage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := cfg.check(); err != nil {
		return err
	}
	if _, err := exec.LookPath(cfg.kezchat); err != nil {
		return fmt.Errorf("--kezchat: %w", err)
	}
	cfExe, err := exec.LookPath(cfg.centrifugo)
	if err != nil {
		return fmt.Errorf("--centrifugo: %w (make centrifugo builds it: hack/tools/install-k8s-tools.sh centrifugo)", err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	version, _, _ := strings.Cut(centrifugoVersion(ctx, cfExe), " (") // "Centrifugo v6.9.1 (Go version: ...)"
	p := &benchPrinter{w: stdout}
	p.printf("kezchat-bench anchor: kezchat (%s, SQLite) against %s (%s; memory engine, history %d per channel for %s, uni_sse, HTTP API)\n",
		cfg.kezchat, version, cfExe, cfg.historySize, cfg.historyTTL)
	rounds := "rounds"
	if cfg.rounds == 1 {
		rounds = "round"
	}
	p.printf("%d streams, %s senders, %d-byte messages, closed loop for %s, %d %s; %d CPUs, GOMAXPROCS %d, %s\n",
		cfg.streams, strings.ReplaceAll(cfg.senders.String(), ",", " then "), cfg.msgSize, cfg.duration, cfg.rounds, rounds,
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())

	var results []*anchorRound
	for n := 1; n <= cfg.rounds; n++ {
		p.printf("\nround %d of %d\n", n, cfg.rounds)
		rd, err := runAnchorRound(ctx, cfg, n, p, stderr)
		if err != nil {
			return fmt.Errorf("round %d: %w", n, benchErr(ctx, err))
		}
		printAnchorRound(stdout, cfg, rd)
		results = append(results, rd)
	}
	printAnchorSummary(stdout, cfg, version, results)
	var bad []string
	for _, rd := range results {
		for _, side := range []struct {
			name string
			rs   []*anchorResult
		}{{"kezchat", rd.kezchat}, {"centrifugo", rd.centrifugo}} {
			for _, a := range side.rs {
				if r := a.res; !r.exactlyOnce() || r.failed > 0 {
					bad = append(bad, fmt.Sprintf("round %d, %s, %d senders: %d refused, %d missing, %d duplicates, %d out of order, %d unexpected",
						rd.n, side.name, a.senders, r.failed, r.missing, r.duplicates, r.outOfOrder, r.unexpected))
				}
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("not every message was accepted and delivered exactly once and in order: %s", strings.Join(bad, "; "))
	}
	return nil
}

func (cfg anchorConfig) check() error {
	switch {
	case cfg.streams < 1:
		return errors.New("--streams must be at least 1")
	case len(cfg.senders) == 0:
		return errors.New("--senders must name at least one count")
	case cfg.duration <= 0 || cfg.duration > maxRateDuration:
		// kezchat's messages are signed before the phase and must all
		// reach the server within its 5-minute window.
		return fmt.Errorf("--duration must be positive and at most %s", maxRateDuration)
	case cfg.rounds < 1:
		return errors.New("--rounds must be at least 1")
	case cfg.msgSize < 0 || cfg.msgSize > 32<<10:
		return errors.New("--msg-size must be 0 to 32768")
	case cfg.messages < 0 || cfg.messages > anchorMaxPrepared:
		return fmt.Errorf("--messages must be 0 (sized from the warm-up) to %d", anchorMaxPrepared)
	case cfg.historySize < 1:
		// The offsets that order the deliveries come with the history.
		return errors.New("--history-size must be at least 1")
	case cfg.historyTTL < time.Second:
		return errors.New("--history-ttl must be at least 1s")
	case cfg.timeout <= 0:
		return errors.New("--timeout must be positive")
	}
	if limit, ok := openFileLimit(); ok {
		need := uint64(cfg.streams + slices.Max(cfg.senders) + 64)
		if need > limit {
			return fmt.Errorf("%d streams need about %d open files; the limit is %d (raise ulimit -n)", cfg.streams, need, limit)
		}
	}
	return nil
}

// benchConfig is the settings the bench's own kezchat server and the shared
// load code take from the anchor's.
func (cfg anchorConfig) benchConfig() benchConfig {
	most := slices.Max(cfg.senders)
	return benchConfig{
		kezchat:  cfg.kezchat,
		streams:  cfg.streams,
		senders:  most,
		inFlight: most,
		msgSize:  cfg.msgSize,
		// Room in each inbox (--max-pending) for everything the phases
		// may send it.
		messages:          anchorMaxPrepared * len(cfg.senders),
		skipIdle:          true,
		skipPush:          true,
		timeout:           cfg.timeout,
		serverMemoryLimit: cfg.serverMemoryLimit,
	}
}

// defaultCentrifugo is the centrifugo binary beside this one, else the one
// on PATH.
func defaultCentrifugo() string {
	if p := beside("centrifugo"); p != "" {
		return p
	}
	return "centrifugo"
}

// runAnchorRound runs a fresh kezchat server, then a fresh Centrifugo,
// each through a warm-up and a timed phase per sender count.
func runAnchorRound(ctx context.Context, cfg anchorConfig, n int, p *benchPrinter, stderr io.Writer) (*anchorRound, error) {
	rd := &anchorRound{n: n}
	bcfg := cfg.benchConfig()
	tag, err := runTag()
	if err != nil {
		return nil, err
	}
	// Centrifugo's messages carry kezchat's signed documents of this round:
	// the first warm-up's, one or more per recipient.
	var templates [][]byte

	err = func() error {
		t, err := startBenchServer(ctx, bcfg, stderr, false)
		if err != nil {
			return err
		}
		hc := benchHTTPClient(bcfg.senders)
		defer func() {
			hc.CloseIdleConnections()
			t.stop(stderr)
		}()
		p.printf("kezchat: %s\n", t.describe())
		run, err := startLoad(ctx, bcfg, []*benchTarget{t}, hc, tag, p)
		if err != nil {
			return err
		}
		defer run.close()
		prepare := func(ctx context.Context, n int) (*deliveryLog, [][]byte, error) {
			log, bodies, err := run.prepare(ctx, n)
			if err == nil && templates == nil {
				templates = bodies
			}
			return log, bodies, err
		}
		rd.kezchat, err = anchorPhases(ctx, cfg, run, t, "kezchat", prepare)
		return err
	}()
	if err != nil {
		return nil, err
	}
	if len(templates) == 0 {
		return nil, errors.New("kezchat's phase prepared no messages")
	}
	rd.docBytes = len(templates[0])

	err = func() error {
		t, c, err := startCentrifugo(ctx, cfg.centrifugo, cfg.historySize, cfg.historyTTL, stderr)
		if err != nil {
			return err
		}
		hc := benchHTTPClient(bcfg.senders)
		defer func() {
			hc.CloseIdleConnections()
			t.stop(stderr)
		}()
		p.printf("centrifugo: %s (pid %d, config in a temporary directory)\n", t.url, t.cmd.Process.Pid)
		run := &loadRun{cfg: bcfg, t: t, targets: []*benchTarget{t}, srv: c, hc: hc, p: p}
		if err := run.openStreams(ctx, cfg.streams); err != nil {
			return err
		}
		defer run.close()
		// Message j is template j mod m, m a multiple of the streams
		// when there are enough templates, so it names recipient j mod
		// R as its channel does.
		m := len(templates)
		if m >= cfg.streams {
			m -= m % cfg.streams
		}
		prepare := func(ctx context.Context, n int) (*deliveryLog, [][]byte, error) {
			ids := newMessageIDs(n)
			log := newDeliveryLog(ids)
			run.log.Store(log)
			bodies := make([][]byte, n)
			err := p.step(fmt.Sprintf("preparing %d publish requests, each a signed document of kezchat's under a new id", n), func() error {
				return forEachIndex(ctx, n, runtime.GOMAXPROCS(0), func(_ context.Context, j int) error {
					var err error
					bodies[j], err = centrifugoPublishBody(templates[j%m], centrifugoChannel(j%cfg.streams), ids[j])
					return err
				})
			})
			return log, bodies, err
		}
		rd.centrifugo, err = anchorPhases(ctx, cfg, run, t, "centrifugo", prepare)
		return err
	}()
	if err != nil {
		return nil, err
	}
	return rd, nil
}

// anchorPhases runs anchorPhase on one server for each sender count.
func anchorPhases(ctx context.Context, cfg anchorConfig, run *loadRun, t *benchTarget, name string, prepare preparer) ([]*anchorResult, error) {
	var rs []*anchorResult
	for _, s := range cfg.senders {
		a, err := anchorPhase(ctx, cfg, run, t, s, prepare)
		if err != nil {
			return nil, fmt.Errorf("%s, %d senders: %w", name, s, err)
		}
		rs = append(rs, a)
	}
	return rs, nil
}

// anchorPhase runs a warm-up of anchorWarmPerStream messages per stream
// and then the timed phase: a closed loop from senders senders for
// cfg.duration, with messages prepared before it.
func anchorPhase(ctx context.Context, cfg anchorConfig, run *loadRun, t *benchTarget, senders int, prepare preparer) (*anchorResult, error) {
	a := &anchorResult{senders: senders}
	var err error
	if a.rssBefore, err = t.rssKiB(); err != nil {
		return nil, err
	}
	w := anchorWarmPerStream * cfg.streams
	log, bodies, err := prepare(ctx, w)
	if err != nil {
		return nil, err
	}
	run.p.printf("warm-up: sending %d messages from %d senders (closed loop) ... ", w, senders)
	var fail failureCounts
	cpu := startCPUMeter(t)
	sendClosedLoop(ctx, run.sender(bodies), w, senders, 0, log, &fail)
	a.warm = run.collect(ctx, log, cpu, &fail)
	if r := a.warm; !r.exactlyOnce() || r.failed > 0 {
		return nil, fmt.Errorf("warm-up: %d of %d refused, %d missing, %d duplicates, %d out of order, %d unexpected",
			r.failed, r.sent, r.missing, r.duplicates, r.outOfOrder, r.unexpected)
	}
	n := cfg.messages
	if n == 0 {
		rate := max(a.warm.rate, warmRate(log))
		n = int(math.Ceil(rate * cfg.duration.Seconds() * anchorPrepareMargin))
		n = min(anchorMaxPrepared, max(w, n))
	}
	a.prepared = n
	bodies = nil // the warm-up's, before the next are made
	if log, bodies, err = prepare(ctx, n); err != nil {
		return nil, err
	}
	run.p.printf("sending for %s from %d senders (closed loop, %d messages prepared) ... ", cfg.duration, senders, n)
	fail = failureCounts{}
	cpu = startCPUMeter(t)
	sendClosedLoop(ctx, run.sender(bodies), n, senders, log.now()+int64(cfg.duration), log, &fail)
	a.res = run.collect(ctx, log, cpu, &fail)
	a.ranOut = a.res.sent == n
	run.p.printf("%d senders: %d of %d messages accepted in %s: %.0f messages/s\n",
		senders, a.res.accepted, a.res.sent, fmtDuration(a.res.wall), a.res.rate)
	if a.ranOut {
		run.p.printf("  every prepared message was sent before %s were over: the rate holds for %s (--messages prepares more)\n",
			cfg.duration, fmtDuration(a.res.wall))
	}
	run.report(a.res)
	if a.rssAfter, err = t.rssKiB(); err != nil {
		return nil, err
	}
	return a, nil
}

// warmRate is the rate of a warm-up's second half of answers: the first,
// on a cold server, says less of what follows. 0 when it cannot tell.
func warmRate(log *deliveryLog) float64 {
	var ts []int64
	for i, t := range log.answeredAt {
		if log.accepted[i] {
			ts = append(ts, t)
		}
	}
	if len(ts) < 4 {
		return 0
	}
	slices.Sort(ts)
	h := len(ts) / 2
	span := time.Duration(ts[len(ts)-1] - ts[h])
	if span <= 0 {
		return 0
	}
	return float64(len(ts)-1-h) / span.Seconds()
}

// ratio is a / b, or "-" when b is 0.
func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func mib(kib int64) string { return fmt.Sprintf("%.0f MiB", float64(kib)/1024) }

// printAnchorRound prints one round's table per sender count: kezchat and
// Centrifugo side by side.
func printAnchorRound(w io.Writer, cfg anchorConfig, rd *anchorRound) {
	for i, s := range cfg.senders {
		k, c := rd.kezchat[i], rd.centrifugo[i]
		fmt.Fprintf(w, "\nround %d, %d senders, %d streams, closed loop for %s\n", rd.n, s, cfg.streams, cfg.duration)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  \tkezchat\tcentrifugo\tkezchat/centrifugo")
		fmt.Fprintf(tw, "  messages/s\t%.0f%s\t%.0f%s\t%s\n", k.res.rate, ranOutMark(k), c.res.rate, ranOutMark(c), ratio(k.res.rate, c.res.rate))
		fmt.Fprintf(tw, "  delivery p50 / p99\t%s / %s\t%s / %s\t\n",
			fmtDuration(k.res.delivery.p50), fmtDuration(k.res.delivery.p99), fmtDuration(c.res.delivery.p50), fmtDuration(c.res.delivery.p99))
		fmt.Fprintf(tw, "  POST p50 / p99\t%s / %s\t%s / %s\t\n",
			fmtDuration(k.res.post.p50), fmtDuration(k.res.post.p99), fmtDuration(c.res.post.p50), fmtDuration(c.res.post.p99))
		ks, cs := cpuPerMessage(k.res.serverCPU, k.res), cpuPerMessage(c.res.serverCPU, c.res)
		fmt.Fprintf(tw, "  server CPU per message\t%.1f µs (%.2f cores)\t%.1f µs (%.2f cores)\t%s\n", ks, k.res.serverCores, cs, c.res.serverCores, ratio(ks, cs))
		kb, cb := cpuPerMessage(k.res.benchCPU, k.res), cpuPerMessage(c.res.benchCPU, c.res)
		fmt.Fprintf(tw, "  bench CPU per message\t%.1f µs (%.2f cores)\t%.1f µs (%.2f cores)\t%s\n", kb, k.res.benchCores, cb, c.res.benchCores, ratio(kb, cb))
		fmt.Fprintf(tw, "  server RSS, %d streams open: before / after\t%s / %s\t%s / %s\t\n", cfg.streams, mib(k.rssBefore), mib(k.rssAfter), mib(c.rssBefore), mib(c.rssAfter))
		fmt.Fprintf(tw, "  refused / missing / dup / out of order / unexpected\t%s\t%s\t\n", faults(k.res), faults(c.res))
		tw.Flush()
	}
}

// ranOutMark flags a rate measured over less than the duration.
func ranOutMark(a *anchorResult) string {
	if a.ranOut {
		return " (ran out)"
	}
	return ""
}

func faults(r *loadResult) string {
	return fmt.Sprintf("%d / %d / %d / %d / %d", r.failed, r.missing, r.duplicates, r.outOfOrder, r.unexpected)
}

// printAnchorSummary prints every round's figures, a line each, and per
// sender count the median ratio.
func printAnchorSummary(w io.Writer, cfg anchorConfig, version string, rounds []*anchorRound) {
	doc := 0
	if len(rounds) > 0 {
		doc = rounds[0].docBytes
	}
	fmt.Fprintf(w, "\nsummary: kezchat (SQLite) against %s (memory engine, history on), %d streams, %d-byte messages (a %d-byte signed document), closed loop for %s\n",
		version, cfg.streams, cfg.msgSize, doc, cfg.duration)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  senders\tround\tmsg/s kezchat / centrifugo\tkezchat/centrifugo\tdelivery p50 / p99 kezchat\tdelivery p50 / p99 centrifugo\tserver µs/msg k / c\tbench µs/msg k / c\tRSS after k / c\texactly once, in order")
	for i, s := range cfg.senders {
		var ratios []float64
		for _, rd := range rounds {
			k, c := rd.kezchat[i], rd.centrifugo[i]
			if c.res.rate > 0 {
				ratios = append(ratios, k.res.rate/c.res.rate)
			}
			fmt.Fprintf(tw, "  %d\t%d\t%.0f%s / %.0f%s\t%s\t%s / %s\t%s / %s\t%.1f / %.1f\t%.1f / %.1f\t%s / %s\t%s\n",
				s, rd.n, k.res.rate, ranOutMark(k), c.res.rate, ranOutMark(c), ratio(k.res.rate, c.res.rate),
				fmtDuration(k.res.delivery.p50), fmtDuration(k.res.delivery.p99),
				fmtDuration(c.res.delivery.p50), fmtDuration(c.res.delivery.p99),
				cpuPerMessage(k.res.serverCPU, k.res), cpuPerMessage(c.res.serverCPU, c.res),
				cpuPerMessage(k.res.benchCPU, k.res), cpuPerMessage(c.res.benchCPU, c.res),
				mib(k.rssAfter), mib(c.rssAfter),
				yesNo(k.res.exactlyOnce() && k.res.failed == 0 && c.res.exactlyOnce() && c.res.failed == 0))
		}
		if len(ratios) > 1 {
			slices.Sort(ratios)
			fmt.Fprintf(tw, "  %d\tmedian\t\t%.2f (%.2f to %.2f)\t\t\t\t\t\t\n", s, median(ratios), ratios[0], ratios[len(ratios)-1])
		}
	}
	tw.Flush()
}

// median of a sorted, non-empty sample.
func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}
