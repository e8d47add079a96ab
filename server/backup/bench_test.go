package backup_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/backup"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/sqlite"
	"kez.lat/chat/server/testutil"
)

// BenchmarkBackupRestore100k measures what docs/benchmarks.md reports for
// backups (make bench-backup): a chat database holding 100,000 undelivered
// messages to 1,000 recipients, each message the size of a signed, encrypted
// 100-byte text (516 bytes of JSON, its ciphertext base64); the time
// and size of a backup to versitygw on loopback, the time of a restore, and
// the store's write throughput (64 concurrent senders, as the store's own
// benchmarks) with no backup running and with backups running back to back,
// in three interleaved pairs of 5 s windows (KEZ_BENCH_WINDOW changes their
// length), reported as medians.
func BenchmarkBackupRestore100k(b *testing.B) {
	ctx := context.Background()
	const messages, recipients, senders = 100_000, 1_000, 64
	const pairs = 3
	window := 5 * time.Second
	if d, err := time.ParseDuration(os.Getenv("KEZ_BENCH_WINDOW")); err == nil {
		window = d
	}
	bk := newBucket(b)
	path := tempPath(b, "kez-chat.db")
	chat := openChat(b, path)
	for i := range recipients {
		if err := chat.CreateUser(ctx, user(fmt.Sprintf("user%04d", i))); err != nil {
			b.Fatal(err)
		}
	}
	fill := time.Now()
	appendLoad(b, chat, senders, recipients, func(n int64) bool { return n < messages }, "fill")
	b.Logf("filled %d messages in %s", messages, time.Since(fill).Round(time.Millisecond))
	src := backup.SQLiteSource{Path: path, DB: sqlite.ChatDatabase}
	fi, _ := os.Stat(path)

	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		res := take(b, bk, src, fmt.Sprintf("bench-%d", i), backup.PartServer)
		backupTook := time.Since(start)

		dst := tempPath(b, "restored.db")
		start = time.Now()
		if _, err := restore(bk, backup.SQLiteTarget{Path: dst, DB: sqlite.ChatDatabase}, res.ID, backup.PartServer); err != nil {
			b.Fatal(err)
		}
		restoreTook := time.Since(start)

		// Throughput without, then with, backups running back to back, in
		// interleaved pairs of windows: the machine's speed drifts.
		var idle, busy []float64
		var backups atomic.Int64
		for p := range pairs {
			deadline := time.Now().Add(window)
			n := appendLoad(b, chat, senders, recipients, func(int64) bool { return time.Now().Before(deadline) }, fmt.Sprintf("idle-%d-%d", i, p))
			idle = append(idle, float64(n)/window.Seconds())
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for j := 0; ; j++ {
					select {
					case <-stop:
						return
					default:
					}
					take(b, bk, src, fmt.Sprintf("load-%d-%d-%d", i, p, j), backup.PartServer)
					backups.Add(1)
				}
			}()
			deadline = time.Now().Add(window)
			n = appendLoad(b, chat, senders, recipients, func(int64) bool { return time.Now().Before(deadline) }, fmt.Sprintf("busy-%d-%d", i, p))
			busy = append(busy, float64(n)/window.Seconds())
			close(stop)
			<-done
		}
		b.Logf("writes/s without a backup %.0f, with backups running %.0f (pairs in order)", idle, busy)

		b.ReportMetric(backupTook.Seconds(), "backup-s")
		b.ReportMetric(float64(res.Bytes)/(1<<20), "backup-MiB")
		b.ReportMetric(float64(fi.Size())/(1<<20), "db-MiB")
		b.ReportMetric(restoreTook.Seconds(), "restore-s")
		b.ReportMetric(median(idle), "writes/s-idle")
		b.ReportMetric(median(busy), "writes/s-during-backup")
		b.ReportMetric(float64(backups.Load())/pairs, "backups-per-window")
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// appendLoad appends messages from senders goroutines while more says so,
// and returns how many were stored.
func appendLoad(b *testing.B, chat server.Store, senders, recipients int, more func(n int64) bool, tag string) int64 {
	ctx := context.Background()
	var n atomic.Int64
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			ct := make([]byte, 148)
			for i := 0; ; i++ {
				if !more(n.Add(1) - 1) {
					n.Add(-1)
					return
				}
				rand.Read(ct)
				to := fmt.Sprintf("user%04d", (s*7919+i)%recipients)
				from := fmt.Sprintf("user%04d", s)
				id := fmt.Sprintf("%s-%d-%d", tag, s, i)
				msg := fmt.Sprintf(`{"payload":{"ciphertext":%q,"from":"%s@chat.test","id":%q,"to":"%s@chat.test","ts":1764000000,"type":"kez.msg/v1"},"signature":{"alg":"ed25519","key":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","sig":%q}}`,
					base64.RawURLEncoding.EncodeToString(ct), from, id, to, base64.RawURLEncoding.EncodeToString(ct[:64]))
				e := &server.Envelope{Recipient: to, Sender: from, ID: id, Message: []byte(msg)}
				if _, err := chat.AppendMessage(ctx, e, server.InboxLimits{}); err != nil {
					b.Errorf("append: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	return n.Load()
}

// BenchmarkJetStreamBackupRestore100k: the same 100,000 messages in the
// JetStream store (one nats-server in process, file storage), backed up
// through JetStream's snapshot API and restored into a second nats-server.
func BenchmarkJetStreamBackupRestore100k(b *testing.B) {
	ctx := context.Background()
	const messages, recipients, senders = 100_000, 1_000, 64
	bk := newBucket(b)
	src := testutil.StartNATS(b, testutil.NATSOptions{})
	store := openJetStream(b, src)
	for i := range recipients {
		if err := store.CreateUser(ctx, user(fmt.Sprintf("user%04d", i))); err != nil {
			b.Fatal(err)
		}
	}
	fill := time.Now()
	appendLoad(b, store, senders, recipients, func(n int64) bool { return n < messages }, "fill")
	b.Logf("filled %d messages in %s", messages, time.Since(fill).Round(time.Millisecond))

	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		res := take(b, bk, backup.JetStreamSource{NC: connect(b, src), TempDir: b.TempDir()}, fmt.Sprintf("js-%d", i), backup.PartServer)
		backupTook := time.Since(start)
		dst := testutil.StartNATS(b, testutil.NATSOptions{})
		start = time.Now()
		if _, err := restore(bk, backup.JetStreamTarget{NC: connect(b, dst), TempDir: b.TempDir()}, res.ID, backup.PartServer); err != nil {
			b.Fatal(err)
		}
		restoreTook := time.Since(start)
		_, msgs, err := jsstore.StreamMessages(ctx, connect(b, dst), jsstore.StreamName)
		if err != nil || msgs != messages {
			b.Fatalf("restored %d messages (%v), want %d", msgs, err, messages)
		}
		b.ReportMetric(backupTook.Seconds(), "backup-s")
		b.ReportMetric(float64(res.Bytes)/(1<<20), "backup-MiB")
		b.ReportMetric(restoreTook.Seconds(), "restore-s")
	}
}
