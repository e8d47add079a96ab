package sqlite

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
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
			if _, err := db.AppendMessage(ctx, e, 0); err != nil {
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
