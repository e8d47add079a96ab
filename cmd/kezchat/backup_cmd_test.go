package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"kez.lat/chat/server"
	"kez.lat/chat/server/backup/s3test"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/sqlite"
	"kez.lat/chat/server/testutil"
)

func TestBackupAndRestoreRefuseBadFlagsClearly(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "id")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	ok := []string{"--part", "server", "--id", "b1", "--s3-endpoint", "https://s3.example.net", "--s3-bucket", "kez", "--db", "/nonexistent/kez-chat.db"}
	with := func(args ...string) []string { return append(append([]string{}, ok...), args...) }
	without := func(flag string) []string {
		var out []string
		for i := 0; i < len(ok); i += 2 {
			if ok[i] != flag {
				out = append(out, ok[i], ok[i+1])
			}
		}
		return out
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no bucket", without("--s3-bucket"), "--s3-bucket is required"},
		{"no endpoint", without("--s3-endpoint"), "--s3-endpoint is required"},
		{"plain http", with("--s3-endpoint", "http://minio.local:9000"), "pass --s3-insecure-http to allow it"},
		{"an endpoint with a path", with("--s3-endpoint", "https://s3.example.net/kez"), "want only scheme, host and port"},
		{"an endpoint without scheme", with("--s3-endpoint", "s3.example.net"), "want https://host[:port]"},
		{"no part", without("--part"), "--part is required"},
		{"a bad part", with("--part", "nats"), `--part "nats": want server or sigserver`},
		{"no id", without("--id"), "--id is required"},
		{"an id with a slash", with("--id", "a/b"), `--id "a/b"`},
		{"no db", without("--db"), "--part server needs --db"},
		{"jetstream without nats", append(without("--db"), "--store", "jetstream"), "--store jetstream needs --nats-url"},
		{"jetstream for the sig-server", with("--part", "sigserver", "--store", "jetstream", "--nats-url", "nats://n:4222"), "--part sigserver is the sig-server's SQLite key log"},
		{"a prefix with ..", with("--s3-prefix", "a/../b"), "--s3-prefix"},
		{"a CA file for http", with("--s3-endpoint", "http://m:9000", "--s3-insecure-http", "--s3-ca-file", "/ca.pem"), "--s3-ca-file is for an https endpoint"},
	}
	for _, cmd := range []string{"backup", "restore"} {
		for _, tt := range tests {
			t.Run(cmd+"/"+tt.name, func(t *testing.T) {
				var stdout, stderr bytes.Buffer
				args := append([]string{cmd, "--result-file", filepath.Join(t.TempDir(), "result")}, tt.args...)
				if cmd == "restore" {
					args = append([]string{cmd}, tt.args...)
				}
				if code := run(context.Background(), args, &stdout, &stderr); code != 1 {
					t.Fatalf("exit %d, want 1; stderr: %s", code, stderr.String())
				}
				if !strings.Contains(stderr.String(), tt.want) || strings.Count(strings.TrimSpace(stderr.String()), "\n") > 0 {
					t.Errorf("stderr %q: want one line saying %q", stderr.String(), tt.want)
				}
				if stdout.Len() > 0 {
					t.Errorf("stdout: %s", stdout.String())
				}
			})
		}
	}
	t.Run("restore/no wait", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		args := append([]string{"restore"}, with("--wait-timeout", "0s")...)
		if code := run(context.Background(), args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "--wait-timeout 0s: want a positive duration") {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), append([]string{"backup"}, ok...), &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") {
			t.Errorf("exit %d, stderr %q", code, stderr.String())
		}
	})
}

// TestBackupCommandPrintsAndWritesItsResult runs `kezchat backup` and
// `kezchat restore` against a real S3 server, as the operator's Jobs do.
func TestBackupCommandPrintsAndWritesItsResult(t *testing.T) {
	ctx := context.Background()
	s3 := s3test.Start(t)
	for _, kv := range s3.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "kez-chat.db")
	db, err := sqlite.Open(ctx, dbPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.CreateUser(ctx, &server.User{Handle: "alice", Server: "chat.test", PrimaryID: strings.Repeat("a", 40),
		Alg: "ed25519", Key: []byte("k"), EncKey: []byte("e"), CreatedAt: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	store := []string{"--s3-endpoint", s3.Endpoint, "--s3-insecure-http", "--s3-bucket", s3.Bucket, "--s3-prefix", "ns/chat"}

	resultFile := filepath.Join(dir, "result")
	var stdout, stderr bytes.Buffer
	args := append([]string{"backup", "--part", "server", "--id", "b1", "--db", dbPath, "--result-file", resultFile, "--keep-count", "3"}, store...)
	if code := run(ctx, args, &stdout, &stderr); code != 0 {
		t.Fatalf("backup: exit %d: %s", code, stderr.String())
	}
	var res struct {
		ID, Part, Version      string
		Bytes                  int64
		Objects                int
		StartedAt, CompletedAt time.Time
		Deleted                []string
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("stdout %q: %v", stdout.String(), err)
	}
	if res.ID != "b1" || res.Part != "server" || res.Bytes <= 0 || res.Objects != 3 || res.Version != version || res.Deleted == nil || res.StartedAt.IsZero() {
		t.Errorf("result %+v", res)
	}
	if f, _ := os.ReadFile(resultFile); !bytes.Equal(f, stdout.Bytes()) {
		t.Errorf("result file %q, stdout %q", f, stdout.String())
	}
	if _, err := os.Stat(filepath.Join(s3.Dir, s3.Bucket, "ns/chat/b1/server/manifest.json")); err != nil {
		t.Errorf("the manifest is not where docs/backups.md says: %v", err)
	}
	if strings.Contains(stderr.String(), s3.SecretAccessKey) {
		t.Errorf("the log shows the secret key")
	}

	// The same id again fails, and says why in the result file.
	stdout.Reset()
	stderr.Reset()
	if code := run(ctx, args, &stdout, &stderr); code != 1 {
		t.Fatalf("second backup b1: exit %d", code)
	}
	var failed map[string]string
	if f, _ := os.ReadFile(resultFile); json.Unmarshal(f, &failed) != nil || !strings.Contains(failed["error"], "exists already") {
		t.Errorf("result file after a failure: %q", f)
	}

	restored := filepath.Join(dir, "restored.db")
	restoreArgs := append([]string{"restore", "--part", "server", "--id", "b1", "--db", restored}, store...)
	stderr.Reset()
	if code := run(ctx, restoreArgs, &stdout, &stderr); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr.String())
	}
	rdb, err := sqlite.Open(ctx, restored, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rdb.UserByHandle(ctx, "alice"); err != nil {
		t.Errorf("restored database: %v", err)
	}
	rdb.Close()
	// Again, onto the database now there: nothing happens, exit 0.
	stderr.Reset()
	if code := run(ctx, restoreArgs, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "restore skipped") {
		t.Errorf("restore onto an existing database: exit %d: %s", code, stderr.String())
	}
}

// TestBackupAndRestoreOfTheJetStreamStore runs both commands with --store
// jetstream against real nats-servers, authenticating with the chat
// server's user and password file.
func TestBackupAndRestoreOfTheJetStreamStore(t *testing.T) {
	ctx := context.Background()
	bucket := s3test.Start(t)
	for _, kv := range bucket.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	password := filepath.Join(dir, "nats-password")
	if err := os.WriteFile(password, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := testutil.StartNATS(t, testutil.NATSOptions{User: "kezchat", Password: "s3cret", CalloutIssuer: calloutIssuer(t)})
	store, err := jsstore.Open(ctx, jsstore.Config{NATS: natsbus.Config{URL: src.URL, User: "kezchat", Password: "s3cret"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	alice := &server.User{Handle: "alice", Server: "chat.test", PrimaryID: strings.Repeat("a", 40), Alg: "ed25519", Key: []byte("k"), EncKey: []byte("e"), CreatedAt: time.Unix(1, 0)}
	if err := store.CreateUser(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if _, err := store.AppendMessage(ctx, &server.Envelope{Recipient: "alice", Sender: "alice", ID: "m1", Message: []byte(`{"payload":{}}`)}, server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	s3flags := []string{"--s3-endpoint", bucket.Endpoint, "--s3-insecure-http", "--s3-bucket", bucket.Bucket}
	nats := func(url string) []string {
		return []string{"--store", "jetstream", "--nats-url", url, "--nats-user", "kezchat", "--nats-password-file", password}
	}
	// NATS callbacks may still log after run returns: a buffer the test
	// can read meanwhile.
	var stdout bytes.Buffer
	stderr := &testutil.LockedBuffer{}
	args := append(append([]string{"backup", "--part", "server", "--id", "js1", "--result-file", filepath.Join(dir, "result")}, s3flags...), nats(src.URL)...)
	if code := run(ctx, args, &stdout, stderr); code != 0 {
		t.Fatalf("backup: exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), `"objects":27`) {
		t.Errorf("result %s: want 13 streams (the envelopes, the outbox, 10 buckets, the blobs) of 2 objects and the manifest", stdout.String())
	}

	dst := testutil.StartNATS(t, testutil.NATSOptions{User: "kezchat", Password: "s3cret", CalloutIssuer: calloutIssuer(t)})
	stderr = &testutil.LockedBuffer{}
	args = append(append([]string{"restore", "--part", "server", "--id", "js1"}, s3flags...), nats(dst.URL)...)
	if code := run(ctx, args, &stdout, stderr); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr.String())
	}
	restored, err := jsstore.Open(ctx, jsstore.Config{NATS: natsbus.Config{URL: dst.URL, User: "kezchat", Password: "s3cret"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if _, err := restored.UserByHandle(ctx, "alice"); err != nil {
		t.Errorf("restored user: %v", err)
	}
	if msgs, err := restored.Messages(ctx, "alice", 0, 10, 0); err != nil || len(msgs) != 1 || msgs[0].ID != "m1" {
		t.Errorf("restored messages %v, %v", msgs, err)
	}
	// The next start of a chat server replica finds the marker.
	stderr = &testutil.LockedBuffer{}
	if code := run(ctx, args, &stdout, stderr); code != 0 || !strings.Contains(stderr.String(), "backup js1 was restored by") {
		t.Errorf("restore after the restore: exit %d: %s", code, stderr.String())
	}
}

func calloutIssuer(t *testing.T) string {
	t.Helper()
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return pub
}
