package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server/testutil"
)

func TestServerRefusesToStartWithABadVAPIDSubject(t *testing.T) {
	for _, subject := range []string{"ops", "http://chat.example", "mailto:ops@localhost", "https://localhost/contact", "ftp://x"} {
		t.Run(subject, func(t *testing.T) {
			dir := t.TempDir()
			var stderr bytes.Buffer
			code := run(context.Background(), []string{"server", "--db", filepath.Join(dir, "db"), "--bind", "127.0.0.1:0",
				"--metrics-bind", "", "--vapid-key-path", filepath.Join(dir, "vapid.pem"), "--vapid-subject", subject}, &stderr, &stderr)
			if code != 1 || !strings.Contains(stderr.String(), "--vapid-subject") {
				t.Fatalf("exit %d, stderr %q: want 1 and a message naming --vapid-subject", code, stderr.String())
			}
			if _, err := os.Stat(filepath.Join(dir, "vapid.pem")); !os.IsNotExist(err) {
				t.Fatal("a VAPID key was generated for a server that refused to start")
			}
		})
	}
}

func TestServerHelpNamesTheEnvironmentVariableOfEveryFlag(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"server", "--help"}, &out, &out); code != 0 {
		t.Fatalf("--help exited %d", code)
	}
	for _, env := range []string{"KEZ_BIND", "KEZ_DB", "KEZ_DOMAIN", "KEZ_SERVER", "KEZ_RETENTION", "KEZ_MAX_PENDING", "KEZ_VAPID_SUBJECT", "KEZ_VAPID_KEY_PATH", "KEZ_PUSH_ALLOW_ENDPOINT", "KEZ_LOG_FORMAT"} {
		if !strings.Contains(out.String(), env) {
			t.Errorf("server --help does not mention %s", env)
		}
	}
}

func TestFlagsComeFromTheEnvironmentUnlessGiven(t *testing.T) {
	t.Setenv("KEZ_MAX_PENDING", "7")
	t.Setenv("KEZ_SERVER", "env.example")
	fs := newFlagSet("server", "server", &bytes.Buffer{})
	pending := fs.Int("max-pending", 1, "")
	server := fs.String("server", "localhost", "")
	if err := parseWithEnv(fs, []string{"--server", "flag.example"}); err != nil {
		t.Fatal(err)
	}
	if *pending != 7 || *server != "flag.example" {
		t.Fatalf("max-pending %d (want 7 from env), server %q (want the flag's)", *pending, *server)
	}
	t.Setenv("KEZ_MAX_PENDING", "many")
	fs = newFlagSet("server", "server", &bytes.Buffer{})
	fs.Int("max-pending", 1, "")
	if err := parseWithEnv(fs, nil); err == nil || !strings.Contains(err.Error(), "KEZ_MAX_PENDING") {
		t.Fatalf("bad env value: %v", err)
	}
}

func TestServerRefusesAnUnknownStoreOrJetStreamWithoutNATS(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"unknown store", map[string]string{"KEZ_STORE": "postgres"}, `--store "postgres"`},
		{"jetstream without nats", map[string]string{"KEZ_STORE": "jetstream"}, "--store jetstream needs --nats-url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			t.Setenv("KEZ_NATS_URL", "")
			var stderr bytes.Buffer
			code := run(context.Background(), []string{"server", "--db", filepath.Join(t.TempDir(), "db"), "--bind", "127.0.0.1:0", "--metrics-bind", ""}, &stderr, &stderr)
			if code != 1 || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("exit %d, stderr %q: want 1 and %q", code, stderr.String(), tt.want)
			}
		})
	}
}

func TestTheDeprecatedServerFlagStillNamesTheDomain(t *testing.T) {
	db := filepath.Join(t.TempDir(), "db")
	for _, tt := range []struct {
		name string
		args []string
		env  string
	}{
		{"flag", []string{"--server", "old.example"}, ""},
		{"environment", nil, "old.example"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("KEZ_SERVER", tt.env)
			if tt.env == "" {
				os.Unsetenv("KEZ_SERVER")
			}
			ctx, cancel := context.WithCancel(context.Background())
			var log testutil.LockedBuffer
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, append([]string{"server", "--db", db, "--bind", "127.0.0.1:0", "--metrics-bind", ""}, tt.args...), &log, &log)
			}()
			testutil.Eventually(t, 10*time.Second, "the server to serve", func() bool { return strings.Contains(log.String(), "msg=serving") })
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("exit %d: %s", code, log.String())
			}
			if !strings.Contains(log.String(), "domain=old.example") || !strings.Contains(log.String(), "deprecated: use --domain") {
				t.Fatalf("want the domain from --server and a deprecation warning in:\n%s", log.String())
			}
		})
	}
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"server", "--db", db, "--bind", "127.0.0.1:0", "--metrics-bind", "",
		"--server", "old.example", "--domain", "new.example"}, &stderr, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "give only --domain") {
		t.Fatalf("--server and --domain that differ: exit %d, %q", code, stderr.String())
	}
}
