// Package hostile_test attacks the kezchat server as a stranger on the
// internet would: the built binary, run as its own process on loopback
// with its default settings, a real SQLite file on disk, and its own
// /metrics read for what the attacks cost it. Each test is an attack the
// server once failed; each asserts a bound in bytes, connections or
// status codes. KEZCHAT_BIN runs them against another build.
package hostile_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// domain is what the attacked server answers for.
const domain = "hostile.test"

// target is a kezchat server process under attack.
type target struct {
	url, addr, metrics string
	dir                string
	cmd                *exec.Cmd
	log                *testutil.LockedBuffer
}

// binary is the kezchat under attack: KEZCHAT_BIN, or a build of this tree.
func binary(t *testing.T) string {
	if bin := os.Getenv("KEZCHAT_BIN"); bin != "" {
		return bin
	}
	return testutil.KezchatBinary(t)
}

// start runs `kezchat server` with its defaults but for the addresses, the
// database's directory and args, and waits until it is ready.
func start(t *testing.T, args ...string) *target {
	t.Helper()
	return startIn(t, t.TempDir(), args...)
}

// startIn is start with the database in dir.
func startIn(t *testing.T, dir string, args ...string) *target {
	t.Helper()
	tg := &target{addr: testutil.FreeAddr(t), metrics: testutil.FreeAddr(t), dir: dir, log: &testutil.LockedBuffer{}}
	tg.url = "http://" + tg.addr
	all := append([]string{"server", "--bind", tg.addr, "--metrics-bind", tg.metrics, "--domain", domain,
		"--db", filepath.Join(tg.dir, "kez-chat.db"), "--log-format", "json"}, args...)
	tg.cmd = exec.Command(binary(t), all...)
	// The memory tests bound what the server holds: a low GC target, the
	// same on every machine (under a memory limit the server would pick
	// 400), keeps the heap they sample close to what is live.
	tg.cmd.Env = append(withoutKEZ(os.Environ()), "GOGC=50")
	tg.cmd.Stdout, tg.cmd.Stderr = tg.log, tg.log
	if err := tg.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tg.cmd.Process.Kill()
		tg.cmd.Wait()
		if t.Failed() {
			t.Logf("server log:\n%s", tg.log.String())
		}
	})
	testutil.Eventually(t, 20*time.Second, "the server to be ready", func() bool {
		res, err := http.Get(tg.url + "/v1/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return tg
}

func withoutKEZ(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "KEZ_") {
			out = append(out, kv)
		}
	}
	return out
}

// metric reads one sample of the server's /metrics.
func (tg *target) metric(t *testing.T, name string) float64 {
	t.Helper()
	res, err := http.Get("http://" + tg.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// heap is the server's heap in use, in bytes.
func (tg *target) heap(t *testing.T) float64 { return tg.metric(t, "go_memstats_heap_inuse_bytes") }

// peakHeapOver samples the server's heap for d and returns the largest.
func (tg *target) peakHeapOver(t *testing.T, d time.Duration) float64 {
	peak := 0.0
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		peak = max(peak, tg.heap(t))
	}
	return peak
}

// client is a Go client of the target that knows its domain.
func (tg *target) client() *client.Client {
	c := client.New(tg.url, &http.Client{Timeout: 30 * time.Second})
	c.SetDomain(domain)
	return c
}

// register makes a fresh ed25519 identity for handle.
func (tg *target) register(t *testing.T, handle string) (*client.Identity, *client.User) {
	t.Helper()
	id, err := client.NewIdentity("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	u, err := tg.client().Register(context.Background(), id, handle)
	if err != nil {
		t.Fatalf("registering %s: %v", handle, err)
	}
	return id, u
}

// bigText is a plaintext whose ciphertext is close to the protocol's 64 KiB.
var bigText = strings.Repeat("A", 64<<10-512)

// send posts n messages of bigText from id to u and returns the statuses'
// error codes by count ("" for 201).
func (tg *target) send(t *testing.T, id *client.Identity, u *client.User, n int) map[string]int {
	t.Helper()
	c := tg.client()
	codes := map[string]int{}
	for range n {
		doc, err := client.NewMessage(id, u, client.NewMessageID(), bigText)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = c.Post(context.Background(), doc)
		codes[client.ErrorCode(err)]++
	}
	return codes
}

// auth is an X-KEZ-Auth value for id's request, signed now.
func auth(t *testing.T, id *client.Identity, method, path string, bindings ...string) string {
	t.Helper()
	return authAt(t, id, time.Now().Unix(), method, path, bindings...)
}

func authAt(t *testing.T, id *client.Identity, ts int64, method, path string, bindings ...string) string {
	t.Helper()
	v, err := signing.SignRequest(id.Signer, domain, method, path, ts, bindings...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// streamAuth is the auth of a stream of id's: the server accepts each once,
// so each gets a ts of its own.
func streamAuth(t *testing.T, id *client.Identity) string {
	t.Helper()
	for {
		last := lastStreamTS.Load()
		ts := max(time.Now().Unix(), last+1)
		if lastStreamTS.CompareAndSwap(last, ts) {
			return authAt(t, id, ts, "GET", "/v1/inbox/"+id.Handle+"/stream")
		}
	}
}

var lastStreamTS atomic.Int64

// rawRequest opens a connection, sends one request and never reads: the
// client that costs the server the most.
func (tg *target) rawRequest(t *testing.T, req string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", tg.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// A small receive buffer, so the server's writes stall at once.
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetReadBuffer(4 << 10)
	}
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	return conn
}

// get is the text of a GET request for path with headers.
func get(path string, headers ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\n", path, domain)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

const mib = 1 << 20

// post sends one bigText message from id to u and returns the status, the
// error code, Retry-After and the body's size.
func (tg *target) post(t *testing.T, id *client.Identity, u *client.User) (int, string, time.Duration, int) {
	t.Helper()
	doc, err := client.NewMessage(id, u, client.NewMessageID(), bigText)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, tg.url+"/v1/messages", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	status, code, retry := answer(t, req)
	return status, code, retry, len(body)
}

// fill posts messages from id to u until the server refuses one for a
// reason other than rate_limited (whose Retry-After it waits out), or
// most were stored, and returns how many were stored, the size of each,
// and the refusal.
func (tg *target) fill(t *testing.T, id *client.Identity, u *client.User, most int) (stored, size int, code string, retry time.Duration) {
	t.Helper()
	for stored < most {
		var status int
		status, code, retry, size = tg.post(t, id, u)
		switch {
		case status == http.StatusCreated:
			stored++
		case code == server.CodeRateLimited:
			waitRetry(retry)
		default:
			return stored, size, code, retry
		}
	}
	return stored, size, "", 0
}

// answer sends req and returns the status, the error code and Retry-After.
func answer(t *testing.T, req *http.Request) (int, string, time.Duration) {
	t.Helper()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	json.NewDecoder(res.Body).Decode(&e)
	retry, _ := strconv.Atoi(res.Header.Get("Retry-After"))
	return res.StatusCode, e.Error.Code, time.Duration(retry) * time.Second
}

// waitRetry waits as a client told to retry after d would, at most 2 s.
func waitRetry(d time.Duration) { time.Sleep(min(max(d, 50*time.Millisecond), 2*time.Second)) }
