package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Centrifugo, the anchor of `kezchat-bench anchor`: a real-time server
// (github.com/centrifugal/centrifugo/v6, built by `make centrifugo` from
// hack/tools/centrifugo) run as a child process with the memory engine,
// history on for the inbox namespace, the unidirectional SSE transport and
// the HTTP API. Each recipient's stream is a uni_sse connection whose
// connection token (an HS256 JWT the bench signs) subscribes it, on the
// server's side, to its own channel inbox:<i>; message i is published to
// recipient i mod R's channel through POST /api/publish.

// centrifugoNamespace holds the recipients' channels.
const centrifugoNamespace = "inbox"

// centrifugoChannel is recipient i's channel.
func centrifugoChannel(i int) string {
	return centrifugoNamespace + ":" + strconv.Itoa(i)
}

// centrifugoSettings is what the bench chooses of a Centrifugo's config.
type centrifugoSettings struct {
	port        int    // on 127.0.0.1
	hmacSecret  string // verifies the connection tokens
	apiKey      string // of the HTTP API
	historySize int    // publications kept per channel
	historyTTL  time.Duration
}

// centrifugoConfig is the config file (JSON) of the bench's Centrifugo:
// loopback only, the memory engine, history on for the inbox namespace,
// uni_sse on, the HTTP API behind a key, connection tokens by HMAC, logs
// at warn and up, no usage statistics sent anywhere.
func centrifugoConfig(s centrifugoSettings) ([]byte, error) {
	type obj = map[string]any
	return json.MarshalIndent(obj{
		"http_server": obj{"address": "127.0.0.1", "port": s.port},
		"log":         obj{"level": "warn"},
		"engine":      obj{"type": "memory"},
		"client":      obj{"token": obj{"hmac_secret_key": s.hmacSecret}},
		"http_api":    obj{"key": s.apiKey},
		"uni_sse":     obj{"enabled": true},
		"health":      obj{"enabled": true},
		"usage_stats": obj{"disabled": true},
		"channel": obj{"namespaces": []obj{{
			"name":         centrifugoNamespace,
			"history_size": s.historySize,
			"history_ttl":  s.historyTTL.String(),
		}}},
	}, "", "  ")
}

// b64url is unpadded base64url, as JWTs are encoded.
var b64url = base64.RawURLEncoding

// connectToken is an HS256 JWT that Centrifugo accepts as the connection
// token of user sub, subscribing the connection on the server's side to
// channel (the channels claim). It has no exp: it outlives any run.
func connectToken(secret, sub, channel string) string {
	claims, _ := json.Marshal(struct {
		Sub      string   `json:"sub"`
		Channels []string `json:"channels"`
	}{sub, []string{channel}}) // cannot fail
	signed := b64url.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + b64url.EncodeToString(claims)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signed))
	return signed + "." + b64url.EncodeToString(mac.Sum(nil))
}

// centrifugoDelivery recognises a publication on a uni_sse stream: a data
// line {"channel":"inbox:N","pub":{"data":<the signed message document>,
// "offset":S,...}}, with the channel's offset as its order. The connect
// reply and pings ({}) are not deliveries; any other push on the channel
// counts as unexpected.
func centrifugoDelivery(_, _, data []byte) ([]byte, uint64, eventKind) {
	rest, ok := bytes.CutPrefix(data, []byte(`{"channel":"`))
	if !ok {
		return nil, 0, notDelivery
	}
	q := bytes.IndexByte(rest, '"')
	if q < 0 {
		return nil, 0, malformedDelivery
	}
	rest, ok = bytes.CutPrefix(rest[q+1:], []byte(`,"pub":{`))
	if !ok {
		return nil, 0, malformedDelivery
	}
	mid := messageID(rest)
	// The document holds no "offset" member: the last one is the pub's.
	k := bytes.LastIndex(rest, []byte(`"offset":`))
	if mid == nil || k < 0 {
		return nil, 0, malformedDelivery
	}
	digits := rest[k+len(`"offset":`):]
	end := 0
	for end < len(digits) && digits[end] >= '0' && digits[end] <= '9' {
		end++
	}
	seq, ok := parseSeq(digits[:end])
	if !ok {
		return nil, 0, malformedDelivery
	}
	return mid, seq, delivery
}

// centrifugoPublishBody is the body of POST /api/publish that publishes
// doc, a signed message document, to channel with its payload's id
// replaced by id: the same bytes kezchat is sent, under another id.
// Centrifugo verifies no signature, and no reader here does.
func centrifugoPublishBody(doc []byte, channel, id string) ([]byte, error) {
	i := bytes.Index(doc, idKey)
	if i < 0 {
		return nil, errors.New("the document has no id")
	}
	i += len(idKey)
	j := bytes.IndexByte(doc[i:], '"')
	if j < 0 {
		return nil, errors.New("the document's id has no end")
	}
	const open, data = `{"channel":"`, `","data":`
	b := make([]byte, 0, len(open)+len(channel)+len(data)+len(doc)-j+len(id)+1)
	b = append(b, open...)
	b = append(b, channel...)
	b = append(b, data...)
	b = append(b, doc[:i]...)
	b = append(b, id...)
	b = append(b, doc[i+j:]...)
	return append(b, '}'), nil
}

// centrifugoLoad is the bench's Centrifugo as a loadServer.
type centrifugoLoad struct {
	addr       string // host:port
	publishURL string
	apiKey     string
	hmacSecret string
}

// openStream opens recipient i's uni_sse connection and returns once
// Centrifugo has answered with its connect reply, which it sends once the
// connection is subscribed to inbox:<i>: from then on every publication
// there is delivered on this stream.
func (c *centrifugoLoad) openStream(ctx context.Context, i, bufSize int) (*rawStream, error) {
	channel := centrifugoChannel(i)
	connect := `{"token":"` + connectToken(c.hmacSecret, "r"+strconv.Itoa(i), channel) + `"}`
	st, err := dialStream(ctx, c.addr, "/connection/uni_sse?cf_connect="+url.QueryEscape(connect), bufSize, centrifugoDelivery, func(st *rawStream) error {
		line, err := st.readLine()
		for err == nil && len(line) == 0 { // the body opens with an empty line
			line, err = st.readLine()
		}
		if err != nil {
			return err
		}
		if !bytes.HasPrefix(line, []byte(`data: {"connect":`)) {
			return fmt.Errorf("the first frame is %q, not the connect reply", line)
		}
		if !bytes.Contains(line, []byte(`"subs":{"`+channel+`":`)) {
			return fmt.Errorf("the connect reply %q does not subscribe %s", line, channel)
		}
		for len(line) > 0 { // the rest of the frame, up to its blank line
			if line, err = st.readLine(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stream of %s: %w", channel, err)
	}
	return st, nil
}

// send publishes message i (body, made by centrifugoPublishBody) through
// the HTTP API, which answers 200 with {"result":{...}} or, refusing it,
// {"error":{"code":N,"message":"..."}}.
func (c *centrifugoLoad) send(ctx context.Context, hc *http.Client, _ int, body []byte) (bool, string) {
	status, data, err := postRequest(ctx, hc, c.publishURL, body, "X-API-Key", c.apiKey)
	switch {
	case err != nil:
		return false, err.Error()
	case status == http.StatusOK && bytes.HasPrefix(data, []byte(`{"result":`)):
		return true, ""
	}
	var e struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(data, &e)
	return false, fmt.Sprintf("%d %d %s", status, e.Error.Code, e.Error.Message)
}

// centrifugoVersion is what `centrifugo version` says, e.g. "Centrifugo
// v6.9.1 (Go version: go1.26.8)".
func centrifugoVersion(ctx context.Context, exe string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, exe, "version").Output()
	if err != nil {
		return "Centrifugo (version unknown: " + err.Error() + ")"
	}
	return strings.TrimSpace(string(out))
}

// randomHex is n random bytes in hex: the run's token secret and API key.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// freeLoopbackPort asks the kernel for a free port on 127.0.0.1. Centrifugo
// cannot be told to take port 0 and say which it got, so the bench picks
// the port and hands it over; another process could take it in between,
// and then Centrifugo fails to start and the bench says so.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startCentrifugo runs exe with a config file in a temporary directory (see
// centrifugoConfig) on a free loopback port and waits until its health
// endpoint answers. The returned target stops it like the bench's own
// kezchat server (SIGTERM, then removing the directory), and its CPU time
// and RSS are read the same way.
func startCentrifugo(ctx context.Context, exe string, historySize int, historyTTL time.Duration, stderr io.Writer) (*benchTarget, *centrifugoLoad, error) {
	exe, err := exec.LookPath(exe)
	if err != nil {
		return nil, nil, fmt.Errorf("--centrifugo: %w (make centrifugo builds it: hack/tools/install-k8s-tools.sh centrifugo)", err)
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, nil, err
	}
	s := centrifugoSettings{port: port, hmacSecret: randomHex(32), apiKey: randomHex(16), historySize: historySize, historyTTL: historyTTL}
	conf, err := centrifugoConfig(s)
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "kezchat-bench-centrifugo-")
	if err != nil {
		return nil, nil, err
	}
	t := &benchTarget{exited: make(chan struct{}), dir: dir}
	confPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		t.cleanup()
		return nil, nil, err
	}
	cmd := exec.Command(exe, "--config", confPath)
	cmd.Dir = dir
	cmd.Env = envWithout("KEZ_", "CENTRIFUGO_")
	// Centrifugo logs JSON lines to stdout; a panic goes to stderr.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.cleanup()
		return nil, nil, err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	setChildDeathSignal(cmd)
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		t.cleanup()
		return nil, nil, fmt.Errorf("starting centrifugo: %w", err)
	}
	t.cmd = cmd
	go func() {
		scanCentrifugoLog(pr, stderr)
		pr.Close()
		t.waitErr = cmd.Wait()
		close(t.exited)
	}()
	t.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	t.url = "http://" + t.addr
	if err := waitOK(ctx, t.url+"/health", 15*time.Second, t.exited); err != nil {
		t.stop(stderr)
		return nil, nil, fmt.Errorf("centrifugo: %w", err)
	}
	c := &centrifugoLoad{addr: t.addr, publishURL: t.url + "/api/publish", apiKey: s.apiKey, hmacSecret: s.hmacSecret}
	return t, c, nil
}

// scanCentrifugoLog passes what Centrifugo logs (warnings and up, as
// configured) and anything that is not a log record on to stderr. It reads
// to the end, so Centrifugo never blocks on a full pipe.
func scanCentrifugoLog(r io.Reader, stderr io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		serverLogMu.Lock()
		fmt.Fprintf(stderr, "centrifugo: %s\n", sc.Bytes())
		serverLogMu.Unlock()
	}
	io.Copy(io.Discard, r) // a line over the scanner's limit: keep draining
}
