package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"kez.lat/chat/server/push"
	"kez.lat/chat/server/push/pushtest"
)

// benchDomain is the server name of the bench's own server.
const benchDomain = "bench.local"

// benchVAPIDSubject is the VAPID contact of the bench's own server when it
// sends Web Push (phase 4).
const benchVAPIDSubject = "mailto:bench@example.org"

// benchTarget is the server under measurement: the bench's own child
// process, or a --target.
type benchTarget struct {
	url  string // http://host:port
	addr string // host:port, for raw stream connections

	// Only for the bench's own server.
	cmd     *exec.Cmd
	exited  chan struct{} // closed once the child is reaped
	waitErr error
	dir     string // the temporary database's directory

	// Only for the bench's own server with Web Push on: the local push
	// service it may push to, and the VAPID public key it must use.
	push     *pushtest.Service
	vapidKey string
}

func (t *benchTarget) local() bool { return t.cmd != nil }

func (t *benchTarget) describe() string {
	if t.local() {
		d := fmt.Sprintf("own server %s (pid %d, temporary database)", t.url, t.cmd.Process.Pid)
		for _, kv := range t.cmd.Env {
			if v, ok := strings.CutPrefix(kv, "GOMEMLIMIT="); ok {
				d += ", GOMEMLIMIT " + v
			}
		}
		if t.push != nil {
			d += fmt.Sprintf(", Web Push on to a local push service at %s", t.push.Origin())
		}
		return d
	}
	return "target " + t.url
}

// startBenchServer runs cfg.kezchat as `kezchat server` on a free loopback
// port with a temporary database, every rate limit and quota off and room for all the
// bench's streams, and waits until it is ready. withPush turns Web Push on:
// the bench writes a VAPID key into the temporary directory, starts a local
// push service (pushtest) that accepts only pushes signed with that key
// under benchVAPIDSubject, and lets the server push to it.
func startBenchServer(ctx context.Context, cfg benchConfig, stderr io.Writer, withPush bool) (*benchTarget, error) {
	return startBenchServerWith(ctx, cfg, stderr, withPush, nil)
}

// startBenchServerWith is startBenchServer with extra server flags (the
// replica phase's --store jetstream and --nats-url).
func startBenchServerWith(ctx context.Context, cfg benchConfig, stderr io.Writer, withPush bool, extra []string) (*benchTarget, error) {
	exe, err := exec.LookPath(cfg.kezchat)
	if err != nil {
		return nil, fmt.Errorf("--kezchat: %w", err)
	}
	dir, err := os.MkdirTemp("", "kezchat-bench-")
	if err != nil {
		return nil, err
	}
	t := &benchTarget{exited: make(chan struct{}), dir: dir}
	streams := max(cfg.streams, cfg.idleStreams)
	maxConns := max(16384, streams+max(cfg.senders, cfg.inFlight)+registerWorkers+256)
	args := []string{"server",
		// Port 0: the kernel picks a free port and the server logs it, so
		// there is no race between choosing a port and binding it.
		"--bind", "127.0.0.1:0",
		"--db", filepath.Join(dir, "bench.db"),
		"--domain", benchDomain,
		"--metrics-bind", "",
		"--log-format", "json",
		"--register-rate", "0",
		"--send-rate", "0",
		"--handle-send-rate", "0",
		"--failed-auth-rate", "0",
		"--max-streams-per-handle", "1000000",
		"--max-pending", strconv.Itoa(max(10000, 2*(cfg.messages+int(cfg.rate*cfg.rateDuration.Seconds())+cfg.pushMessages))),
		"--max-connections", strconv.Itoa(maxConns),
		"--shutdown-timeout", "5s",
	}
	if cfg.limitsOn {
		// Every client of the bench is one loopback address: the caps are
		// set where they count every byte and connection but refuse none.
		args = append(args,
			"--sender-quota-bytes", "1099511627776",
			"--address-quota-bytes", "1099511627776",
			"--max-pending-bytes", "1099511627776",
			"--max-connections-per-address", strconv.Itoa(maxConns),
			"--max-streams-per-address", "1000000")
	} else {
		args = append(args,
			"--sender-quota-bytes", "0",
			"--address-quota-bytes", "0",
			"--max-pending-bytes", "0",
			"--max-connections-per-address", "0",
			"--max-streams-per-address", "0")
	}
	if withPush {
		pushArgs, err := t.startPushService(dir)
		if err != nil {
			t.cleanup()
			return nil, err
		}
		args = append(args, pushArgs...)
	}
	args = append(args, extra...)
	cmd := exec.Command(exe, args...)
	// Without KEZ_ variables, which would set server flags the bench did
	// not choose, and with the bench's memory limit, not the shell's.
	cmd.Env = envWithout("KEZ_", "GOMEMLIMIT=")
	if cfg.serverMemoryLimit != "" {
		cmd.Env = append(cmd.Env, "GOMEMLIMIT="+cfg.serverMemoryLimit)
	}
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.cleanup()
		return nil, err
	}
	setChildDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		t.cleanup()
		return nil, fmt.Errorf("starting the server: %w", err)
	}
	t.cmd = cmd
	bound := make(chan string, 1)
	go func() {
		scanServerLog(pipe, bound, stderr)
		// Wait only after the last read of the pipe (os/exec's rule).
		t.waitErr = cmd.Wait()
		close(t.exited)
	}()

	select {
	case t.addr = <-bound:
	case <-t.exited:
		t.cleanup()
		return nil, fmt.Errorf("the server exited at start: %v", t.waitErr)
	case <-time.After(15 * time.Second):
		t.stop(stderr)
		return nil, errors.New("the server did not start listening within 15s")
	case <-ctx.Done():
		t.stop(stderr)
		return nil, ctx.Err()
	}
	t.url = "http://" + t.addr
	if err := waitReady(ctx, t.url, 15*time.Second); err != nil {
		t.stop(stderr)
		return nil, err
	}
	return t, nil
}

// startPushService writes a VAPID key into dir and starts the local push
// service that accepts pushes signed with it, and returns the server flags
// that turn Web Push on with that key and let the server reach the service.
// The key is made with the function the server itself uses
// (push.LoadOrCreateKey), which the server then finds and loads, as it would
// a key an operator made with openssl; the push phase checks that the server
// serves its public half.
func (t *benchTarget) startPushService(dir string) ([]string, error) {
	subject, err := push.NormalizeSubject(benchVAPIDSubject)
	if err != nil {
		return nil, err
	}
	keyPath := filepath.Join(dir, "vapid.pem")
	key, _, err := push.LoadOrCreateKey(keyPath)
	if err != nil {
		return nil, err
	}
	if t.push, err = pushtest.NewServer(subject, &key.PublicKey); err != nil {
		return nil, err
	}
	t.vapidKey = push.PublicKey(key)
	return []string{
		"--vapid-subject", benchVAPIDSubject,
		"--vapid-key-path", keyPath,
		"--push-allow-endpoint", t.push.Origin(),
	}, nil
}

// envWithout is this process's environment less the variables whose names
// start with one of prefixes.
func envWithout(prefixes ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(kv, p) }) {
			env = append(env, kv)
		}
	}
	return env
}

// serverLogMu serializes what the scanners of several servers' logs write.
var serverLogMu sync.Mutex

// scanServerLog reads the server's JSON log: it reports the address the
// server bound and passes warnings, errors and anything that is not a log
// record (a panic) on to stderr. It reads to the end, so the server never
// blocks on a full pipe.
func scanServerLog(r io.Reader, bound chan<- string, stderr io.Writer) {
	pass := func(line []byte) {
		// The replicas' scanners share stderr.
		serverLogMu.Lock()
		defer serverLogMu.Unlock()
		fmt.Fprintf(stderr, "server: %s\n", line)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Bind  string `json:"bind"`
		}
		line := sc.Bytes()
		if json.Unmarshal(line, &rec) != nil {
			pass(line)
			continue
		}
		switch {
		case rec.Msg == "serving" && rec.Bind != "":
			select {
			case bound <- rec.Bind:
			default:
			}
		case rec.Level == "WARN" || rec.Level == "ERROR":
			pass(line)
		}
	}
	io.Copy(io.Discard, r) // a line over the scanner's limit: keep draining
}

// waitReady polls the server's /v1/readyz until it answers 200.
func waitReady(ctx context.Context, base string, within time.Duration) error {
	return waitOK(ctx, base+"/v1/readyz", within, nil)
}

// waitOK polls u until it answers 200, for at most within, and gives up at
// once when exited (the server's process; nil for none) closes.
func waitOK(ctx context.Context, u string, within time.Duration, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("the server exited before %s answered", u)
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer 200 within %s", u, within)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop ends the bench's own server with SIGTERM (its clean shutdown), kills
// it if it lingers, and removes the temporary database. A --target is left
// alone. Calling stop again does nothing.
func (t *benchTarget) stop(stderr io.Writer) {
	if !t.local() || t.dir == "" {
		return
	}
	// Pushes still queued in the server go out while it shuts down; take
	// them, or the push service would hold each request until Close.
	defer t.drainPushes()()
	select {
	case <-t.exited:
	default:
		_ = t.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-t.exited:
		case <-time.After(15 * time.Second):
			fmt.Fprintln(stderr, "kezchat-bench: the server did not stop within 15s of SIGTERM; killing it")
			_ = t.cmd.Process.Kill()
			<-t.exited
		}
		if t.waitErr != nil {
			fmt.Fprintf(stderr, "kezchat-bench: the server exited with %v\n", t.waitErr)
		}
	}
	t.cleanup()
}

// cleanup closes the push service and removes the temporary directory.
func (t *benchTarget) cleanup() {
	if t.push != nil {
		t.push.Close()
	}
	if t.dir != "" {
		os.RemoveAll(t.dir)
		t.dir = ""
	}
}

// drainPushes discards what the push service receives until the returned
// function is called.
func (t *benchTarget) drainPushes() (stop func()) {
	if t.push == nil {
		return func() {}
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-t.push.Received():
			case <-quit:
				return
			}
		}
	}()
	return func() { close(quit); <-done }
}

// cpuTime is the CPU time the bench's own server has used.
func (t *benchTarget) cpuTime() (time.Duration, error) {
	if !t.local() {
		return 0, errors.New("the CPU time of a --target server cannot be read")
	}
	return processCPUTime(t.cmd.Process.Pid)
}

// rssKiB is the resident memory of the bench's own server.
func (t *benchTarget) rssKiB() (int64, error) {
	if !t.local() {
		return 0, errors.New("the memory of a --target server cannot be read")
	}
	return processRSSKiB(t.cmd.Process.Pid)
}

// defaultServerMemoryLimit is the memory limit the bench's server runs
// under, as a pod with a 1 GiB limit does (the server takes 90% of its
// container's limit): the server paces its collector by the limit
// (serverGCPercent in cmd/kezchat), so a server measured without one
// would not be the one deployed.
const defaultServerMemoryLimit = "900MiB"

const serverMemoryLimitUsage = "GOMEMLIMIT of the kezchat server the bench runs, as the server sets it from a pod's memory limit (90% of it); empty runs it without a limit, and with Go's default GC pacing"
