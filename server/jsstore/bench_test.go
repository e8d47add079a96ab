package jsstore_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	mrand "math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/testutil"
)

// BenchmarkAppendMessageManyInboxes measures durable appends as the chat
// server makes them, like the SQLite store's benchmark of the same name: 8
// senders, 700-byte messages with random ids, each to one of 1,000 inboxes,
// on a NATS server that fsyncs every write (sync_interval: always), from
// 64 or 4 concurrent callers, through 1 replica or 2 (each taking half the
// calls; the one without the writer lease forwards them). Besides
// appends/s it reports the envelopes the writer committed per batch.
func BenchmarkAppendMessageManyInboxes(b *testing.B) {
	for _, replicas := range []int{1, 2} {
		for _, callers := range []int{64, 4} {
			b.Run(fmt.Sprintf("replicas=%d/callers=%d", replicas, callers), func(b *testing.B) {
				benchmarkAppendMany(b, replicas, callers)
			})
		}
	}
}

func benchmarkAppendMany(b *testing.B, replicas, callers int) {
	n := testutil.StartNATS(b, testutil.NATSOptions{SyncAlways: true})
	var stores []*jsstore.Store
	for range replicas {
		stores = append(stores, open(b, n, 0))
	}
	const inboxes, senders = 1000, 8
	recipients := make([]string, inboxes)
	for i := range recipients {
		recipients[i] = fmt.Sprintf("recipient%04d", i)
	}
	from := make([]string, senders)
	for i := range from {
		from[i] = fmt.Sprintf("sender%d", i)
	}
	mustCreate(b, stores[0], append(from, recipients...)...)
	msg := make([]byte, 700)
	rand.Read(msg)
	b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0)))
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
			if _, err := stores[mrand.IntN(len(stores))].AppendMessage(ctx, e, server.InboxLimits{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
	var batches, envelopes uint64
	for _, s := range stores {
		nb, ne := s.WriterStats()
		batches, envelopes = batches+nb, envelopes+ne
	}
	if batches > 0 {
		b.ReportMetric(float64(envelopes)/float64(batches), "envelopes/batch")
	}
}

// BenchmarkEnqueue measures queueing documents for other servers as the
// chat server does (docs/benchmarks.md, "Federation"): 700-byte documents
// from 16 senders, one each per call, on a NATS server that fsyncs every
// write, from 1 caller or 16 at once.
func BenchmarkEnqueue(b *testing.B) {
	for _, callers := range []int{1, 16} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s := open(b, testutil.StartNATS(b, testutil.NATSOptions{SyncAlways: true}), 0)
			const senders = 16
			var next atomic.Int64
			doc := make([]byte, 700)
			b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1)
					d := &server.OutboundDoc{Sender: fmt.Sprintf("sender%02d", i%senders), ID: fmt.Sprintf("m%d", i),
						Domain: "two.example", Recipient: "bob", Message: doc, TS: time.Now()}
					if _, err := s.Enqueue(context.Background(), []*server.OutboundDoc{d}, server.OutboxLimits{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
		})
	}
}
