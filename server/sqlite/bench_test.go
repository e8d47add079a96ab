package sqlite

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"kez.lat/chat/server"
)

// BenchmarkAppendMessageParallel measures durable appends of 200-byte
// messages to a few inboxes from many concurrent callers, as an HTTP server
// would make them.
func BenchmarkAppendMessageParallel(b *testing.B) {
	db := openTest(b)
	recipients := []string{"r0", "r1", "r2", "r3"}
	mustCreate(b, db, append([]string{"alice"}, recipients...)...)
	msg := []byte(strings.Repeat("m", 200))
	var next atomic.Uint64
	commits := db.commits.Load()
	b.SetParallelism(64) // callers per GOMAXPROCS
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			n := next.Add(1)
			e := envelope(recipients[n%uint64(len(recipients))], "alice", fmt.Sprint(n), "")
			e.Message = msg
			if _, err := db.AppendMessage(ctx, e, server.InboxLimits{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
	if c := db.commits.Load() - commits; c > 0 {
		b.ReportMetric(float64(b.N)/float64(c), "appends/commit")
	}
}

// BenchmarkAppendMessageManyInboxes measures durable appends as the chat
// server makes them: 8 senders, messages of 700 bytes (the size of a
// signed, encrypted 100-byte text) with random 16-byte ids, each to one of
// 1,000 inboxes picked at random. Spread over many inboxes, every append
// dirties pages of its own, which a benchmark with a few inboxes hides.
// With 64 concurrent callers the writer commits large batches, as at the
// server's maximum throughput; with 4, small ones, as at a rate the server
// keeps up with. Besides appends/s it reports the bytes written to the
// database and its WAL per append (Linux only), the store's write
// amplification. Run it with -benchtime=50000x to match kezchat-bench.
func BenchmarkAppendMessageManyInboxes(b *testing.B) {
	for _, callers := range []int{64, 4} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) { benchmarkAppendMany(b, callers) })
	}
}

func benchmarkAppendMany(b *testing.B, callers int) {
	db := openTest(b)
	const inboxes, senders = 1000, 8
	recipients := make([]string, inboxes)
	for i := range recipients {
		recipients[i] = fmt.Sprintf("recipient%04d", i)
	}
	from := make([]string, senders)
	for i := range from {
		from[i] = fmt.Sprintf("sender%d", i)
	}
	mustCreate(b, db, append(from, recipients...)...)
	msg := make([]byte, 700)
	rand.Read(msg)
	commits := db.commits.Load()
	written, wErr := bytesWritten()
	b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0))) // callers goroutines
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		var id [16]byte
		for pb.Next() {
			rand.Read(id[:])
			e := &server.Envelope{
				Recipient: recipients[mrand.IntN(inboxes)],
				Sender:    from[mrand.IntN(senders)],
				ID:        base64.RawURLEncoding.EncodeToString(id[:]),
				Message:   msg,
			}
			if _, err := db.AppendMessage(ctx, e, server.InboxLimits{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
	if c := db.commits.Load() - commits; c > 0 {
		b.ReportMetric(float64(b.N)/float64(c), "appends/commit")
	}
	if after, err := bytesWritten(); err == nil && wErr == nil {
		b.ReportMetric(float64(after-written)/float64(b.N), "B-written/append")
	}
}

// bytesWritten is what this process has passed to write calls so far
// (wchar in /proc/self/io): the store's writes to its WAL and, at
// checkpoints, to the database file.
func bytesWritten() (int64, error) {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "wchar:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("no wchar in /proc/self/io")
}
