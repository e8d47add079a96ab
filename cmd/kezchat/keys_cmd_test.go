package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/testutil"
)

func TestKeysCommandsAddADeviceThatSendsUntilRevoked(t *testing.T) {
	ctx := context.Background()
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	srv := testutil.StartServer(t, testutil.Options{SigServerURL: sig.URL})
	dir := t.TempDir()
	alice, phone, bob := filepath.Join(dir, "alice.json"), filepath.Join(dir, "phone.json"), filepath.Join(dir, "bob.json")
	for _, who := range []struct{ path, handle string }{{alice, "alice"}, {bob, "bob"}} {
		if _, _, err := runCmd(t, ctx, runKeygen, "--identity", who.path); err != nil {
			t.Fatal(err)
		}
		if _, _, err := runCmd(t, ctx, runRegister, "--url", srv.URL, "--identity", who.path, who.handle); err != nil {
			t.Fatal(err)
		}
	}
	keysAs := func(identity, sub string, args ...string) (string, error) {
		t.Helper()
		out, _, err := runCmd(t, ctx, runKeys, append([]string{sub, "--sig-url", sig.URL, "--identity", identity}, args...)...)
		return out, err
	}
	keys := func(sub string, args ...string) (string, error) { return keysAs(alice, sub, args...) }

	if out, err := keys("publish"); err != nil || !strings.Contains(out, "published version 1") {
		t.Fatalf("keys publish: %q, %v", out, err)
	}
	if out, err := keys("add-device", "--out", phone, "--label", "phone"); err != nil || !strings.Contains(out, "version 2") {
		t.Fatalf("keys add-device: %q, %v", out, err)
	}
	dev, err := client.LoadIdentity(phone)
	if err != nil || !dev.IsDevice() || dev.Handle != "alice" {
		t.Fatalf("device identity: %+v, %v", dev, err)
	}
	if _, _, err := runCmd(t, ctx, runSend, "--url", srv.URL, "--identity", phone, "bob", "from my phone"); err != nil {
		t.Fatalf("sending from the device: %v", err)
	}
	out, _, err := runCmd(t, ctx, runInbox, "--url", srv.URL, "--identity", bob)
	if err != nil || !strings.Contains(out, "alice: from my phone") {
		t.Fatalf("bob's inbox: %q, %v", out, err)
	}
	if out, err := keys("show"); err != nil || !strings.Contains(out, "version 2 (chain verified)") || !strings.Contains(out, "phone") {
		t.Fatalf("keys show: %q, %v", out, err)
	}
	if _, err := keys("revoke", "primary"); err == nil || !strings.Contains(err.Error(), "primary key") {
		t.Errorf("revoking the primary key: %v, want a refusal", err)
	}
	if _, err := keys("revoke", "tablet"); err == nil {
		t.Error("revoking a key nobody has succeeded")
	}
	if out, err := keys("revoke", "phone"); err != nil || !strings.Contains(out, "revoked phone in version 3") {
		t.Fatalf("keys revoke: %q, %v", out, err)
	}
	_, _, err = runCmd(t, ctx, runSend, "--url", srv.URL, "--identity", phone, "bob", "still here?")
	if client.ErrorCode(err) != server.CodeKeyNotAuthorized {
		t.Errorf("sending from the revoked device: %v, want %s", err, server.CodeKeyNotAuthorized)
	}
	if _, err := keysAs(phone, "publish"); err == nil || !strings.Contains(err.Error(), "device identity") {
		t.Errorf("keys publish with a device identity: %v, want a refusal", err)
	}
}

func TestSigServerHelpNamesTheOperatorsFlags(t *testing.T) {
	var out strings.Builder
	if code := run(context.Background(), []string{"sig-server", "--help"}, &out, &out); code != 0 {
		t.Fatalf("--help exited %d", code)
	}
	for _, flag := range []string{"-bind", "-metrics-bind", "-db", "-log-format", "KEZ_BIND", "KEZ_DB"} {
		if !strings.Contains(out.String(), flag) {
			t.Errorf("sig-server --help does not mention %s", flag)
		}
	}
	out.Reset()
	run(context.Background(), []string{"server", "--help"}, &out, &out)
	if !strings.Contains(out.String(), "KEZ_SIG_SERVER_URL") {
		t.Error("server --help does not mention KEZ_SIG_SERVER_URL")
	}
}
