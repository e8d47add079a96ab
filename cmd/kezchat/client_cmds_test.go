package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
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

// runCmd runs a command with its output captured.
func runCmd(t *testing.T, ctx context.Context, cmd command, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = cmd(ctx, args, &o, &e)
	return o.String(), e.String(), err
}

func TestKeygenWritesPrivateFileAndRefusesOverwrite(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "conf", "identity.json")

	out, _, err := runCmd(t, ctx, runKeygen, "--identity", path)
	if err != nil {
		t.Fatal(err)
	}
	id, err := client.LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if id.Signer.Alg() != "ed25519" || !strings.Contains(out, id.PrimaryID()) {
		t.Fatalf("alg %s, output %q", id.Signer.Alg(), out)
	}
	if st, _ := os.Stat(path); runtime.GOOS != "windows" && st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}

	_, _, err = runCmd(t, ctx, runKeygen, "--identity", path, "--alg", "bip340")
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second keygen: %v", err)
	}
	if again, _ := client.LoadIdentity(path); again.PrimaryID() != id.PrimaryID() {
		t.Fatal("keygen replaced the identity without --force")
	}

	if _, _, err := runCmd(t, ctx, runKeygen, "--identity", path, "--alg", "bip340", "--force"); err != nil {
		t.Fatal(err)
	}
	if again, _ := client.LoadIdentity(path); again.PrimaryID() == id.PrimaryID() || again.Signer.Alg() != "bip340" {
		t.Fatal("keygen --force did not replace the identity")
	}

	if _, _, err := runCmd(t, ctx, runKeygen, "--identity", filepath.Join(t.TempDir(), "x.json"), "--alg", "rsa"); err == nil {
		t.Fatal("keygen --alg rsa succeeded")
	}
	if _, _, err := runCmd(t, ctx, runKeygen, "--identity", filepath.Join(t.TempDir(), "x.json"), "extra"); err == nil {
		t.Fatal("keygen took a positional argument")
	}
}

func TestClientCommandsNeedIdentity(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.json")
	for name, cmd := range map[string]command{"register": runRegister, "send": runSend, "inbox": runInbox, "listen": runListen} {
		args := []string{"--identity", missing, "--url", "http://127.0.0.1:1"}
		switch name {
		case "register":
			args = append(args, "alice")
		case "send":
			args = append(args, "bob", "hi")
		}
		if _, _, err := runCmd(t, ctx, cmd, args...); err == nil || !strings.Contains(err.Error(), "keygen") {
			t.Errorf("%s without identity: %v", name, err)
		}
	}
	unregistered := filepath.Join(dir, "new.json")
	if _, _, err := runCmd(t, ctx, runKeygen, "--identity", unregistered); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCmd(t, ctx, runSend, "--identity", unregistered, "--url", "http://127.0.0.1:1", "bob", "hi"); err == nil || !strings.Contains(err.Error(), "register") {
		t.Errorf("send unregistered: %v", err)
	}
	if _, _, err := runCmd(t, ctx, runRegister, "--identity", unregistered); err == nil {
		t.Error("register without a handle succeeded")
	}
}

func TestDefaultIdentityPath(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", "/xdg")
	if got := defaultIdentityPath(); got != filepath.Join("/xdg", "kezchat", "identity.json") {
		t.Errorf("with XDG_CONFIG_HOME: %s", got)
	}
	t.Setenv("XDG_CONFIG_HOME", "relative")
	t.Setenv("HOME", "/home/u")
	if got := defaultIdentityPath(); runtime.GOOS == "linux" && got != "/home/u/.config/kezchat/identity.json" {
		t.Errorf("without XDG_CONFIG_HOME: %s", got)
	}
	t.Setenv("KEZ_IDENTITY", "/from/env.json")
	var o, e bytes.Buffer
	err := runSend(context.Background(), []string{"--url", "http://127.0.0.1:1", "bob", "hi"}, &o, &e)
	if err == nil || !strings.Contains(err.Error(), "/from/env.json") {
		t.Errorf("KEZ_IDENTITY not used: %v", err)
	}
}

func TestSafeText(t *testing.T) {
	for in, want := range map[string]string{
		"hello":                   "hello",
		"a\nb\tc":                 "a\nb\tc",
		"\x1b[31mred":             `\u001b[31mred`,
		"bell\a":                  `bell\u0007`,
		"rtl\u202eevil":           `rtl\u202eevil`,
		"é 😀 <&>":                 "é 😀 <&>",
		"nul\x00":                 `nul\u0000`,
		"c1\u0085":                `c1\u0085`,
		string([]byte{0xff, 'x'}): "\uFFFDx",
	} {
		if got := safeText(in); got != want {
			t.Errorf("safeText(%q) = %q, want %q", in, got, want)
		}
	}
	if got := indent("hi\n[2] bob: fake"); got != "hi\n    [2] bob: fake" {
		t.Errorf("indent: %q", got)
	}
}

// TestChatBetweenTwoTerminals runs the client commands against a real
// server, as two people in two terminals would.
func TestChatBetweenTwoTerminals(t *testing.T) {
	ctx := context.Background()
	srv := testutil.StartServer(t, testutil.Options{})
	dir := t.TempDir()
	// Runs before the server's cleanup: a connection the transport dialed
	// but never used would hold up the server's graceful shutdown.
	t.Cleanup(http.DefaultTransport.(*http.Transport).CloseIdleConnections)
	alice, bob := filepath.Join(dir, "alice.json"), filepath.Join(dir, "bob.json")
	as := func(path string, cmd command, args ...string) (string, string) {
		t.Helper()
		out, errOut, err := runCmd(t, ctx, cmd, append([]string{"--identity", path, "--url", srv.URL}, args...)...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, errOut)
		}
		return out, errOut
	}
	for _, p := range []string{alice, bob} {
		if _, _, err := runCmd(t, ctx, runKeygen, "--identity", p); err != nil {
			t.Fatal(err)
		}
	}
	if out, _ := as(alice, runRegister, "alice"); !strings.Contains(out, "alice@"+testutil.Domain) {
		t.Fatalf("register: %q", out)
	}
	as(bob, runRegister, "bob")
	if id, _ := client.LoadIdentity(alice); id.Handle != "alice" || id.Server != testutil.Domain {
		t.Fatalf("identity after register: %q %q", id.Handle, id.Server)
	}

	out, _, err := runCmd(t, ctx, runLookup, "--url", srv.URL, "bob")
	if err != nil || !strings.Contains(out, "bob@"+testutil.Domain) || !strings.Contains(out, "primary_id:") {
		t.Fatalf("lookup: %q %v", out, err)
	}

	as(alice, runSend, "bob", "hello", "bob")
	stdin = strings.NewReader("from stdin\nline two\n")
	t.Cleanup(func() { stdin = os.Stdin })
	as(alice, runSend, "bob")

	out, _ = as(bob, runInbox)
	if want := "[1] alice: hello bob\n[2] alice: from stdin\n    line two\n"; out != want {
		t.Fatalf("inbox:\n%s\nwant:\n%s", out, want)
	}
	out, _ = as(bob, runInbox, "--since", "1", "--ack")
	if want := "[2] alice: from stdin\n    line two\n"; out != want {
		t.Fatalf("inbox --since 1:\n%s", out)
	}
	if out, errOut := as(bob, runInbox); out != "" || !strings.Contains(errOut, "no messages") {
		t.Fatalf("inbox after ack: %q %q", out, errOut)
	}

	// listen prints and acknowledges live messages until interrupted.
	lctx, cancel := context.WithCancel(ctx)
	var lout testutil.LockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- runListen(lctx, []string{"--identity", bob, "--url", srv.URL}, &lout, &bytes.Buffer{})
	}()
	as(alice, runSend, "bob", "live \x1b[2J")
	testutil.Eventually(t, 10*time.Second, "listen to print the message", func() bool {
		return strings.Contains(lout.String(), `[3] alice: live \u001b[2J`)
	})
	testutil.Eventually(t, 10*time.Second, "listen to acknowledge the message", func() bool {
		out, _, _ := runCmd(t, ctx, runInbox, "--identity", bob, "--url", srv.URL)
		return out == ""
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("listen: %v", err)
	}
}

// TestTheCLIRefusesASwappedKeyAndSaysHowToAcceptIt: a server that answers
// its own key for bob gets nothing from alice's CLI, which says how to
// compare safety numbers and accept the key; once trusted, send works.
func TestTheCLIRefusesASwappedKeyAndSaysHowToAcceptIt(t *testing.T) {
	ctx := context.Background()
	srv := testutil.StartServer(t, testutil.Options{})
	var swap atomic.Pointer[[]byte] // the record answered for bob, when set
	real, _ := url.Parse(srv.URL)
	proxy := httputil.NewSingleHostReverseProxy(real)
	proxy.ModifyResponse = func(res *http.Response) error {
		if b := swap.Load(); b != nil && res.Request.URL.Path == "/v1/u/bob" {
			res.Body, res.ContentLength = io.NopCloser(bytes.NewReader(*b)), int64(len(*b))
			res.Header.Set("Content-Length", strconv.Itoa(len(*b)))
		}
		return nil
	}
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)
	dir := t.TempDir()
	alice, bob := filepath.Join(dir, "alice.json"), filepath.Join(dir, "bob.json")
	for h, path := range map[string]string{"alice": alice, "bob": bob} {
		if _, _, err := runCmd(t, ctx, runKeygen, "--identity", path); err != nil {
			t.Fatal(err)
		}
		if _, _, err := runCmd(t, ctx, runRegister, "--identity", path, "--url", front.URL, h); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := runCmd(t, ctx, runSend, "--identity", alice, "--url", front.URL, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	first, _, err := runCmd(t, ctx, runSafetyNumber, "--identity", alice, "--url", front.URL, "bob")
	if err != nil {
		t.Fatal(err)
	}
	theirs, _, err := runCmd(t, ctx, runSafetyNumber, "--identity", bob, "--url", front.URL, "alice")
	if err != nil {
		t.Fatal(err)
	}
	digits := func(out string) string { return strings.TrimSpace(out[strings.Index(out, "\n"):]) }
	if digits(first) != digits(theirs) {
		t.Fatalf("alice sees %q, bob sees %q: want one safety number", digits(first), digits(theirs))
	}

	mallory, _ := client.NewIdentity("ed25519")
	rec := server.PublicUser{Handle: "bob", Server: testutil.Domain, PrimaryID: mallory.PrimaryID(), Alg: "ed25519",
		Key: signing.EncodeB64(mallory.Signer.PublicKey()), EncKey: signing.EncodeB64(mallory.EncPublicKey()), CreatedAt: 1}
	b, _ := json.Marshal(rec)
	swap.Store(&b)
	_, _, err = runCmd(t, ctx, runSend, "--identity", alice, "--url", front.URL, "bob", "for bob only")
	if err == nil || !strings.Contains(err.Error(), "kezchat trust bob") || !strings.Contains(err.Error(), "kezchat safety-number bob") {
		t.Fatalf("sending to a swapped key: %v; want a refusal that says how to check and accept", err)
	}
	if _, _, err := runCmd(t, ctx, runTrust, "--identity", alice, "--url", front.URL, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCmd(t, ctx, runSend, "--identity", alice, "--url", front.URL, "bob", "now to the trusted key"); err != nil {
		t.Fatalf("sending after trust: %v", err)
	}
}
