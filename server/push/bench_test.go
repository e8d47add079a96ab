package push

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkSend measures encrypted pushes per second through the real
// sender to the local push service over loopback, which authenticates and
// decrypts each one, so both ends' crypto share the CPUs:
//
//	go test -run '^$' -bench BenchmarkSend -cpu 2 ./server/push/
func BenchmarkSend(b *testing.B) {
	const recipients = 100
	h := newHarness(b, Config{QueueSize: max(b.N, 1), Workers: 16}, true)
	handles := make([]string, recipients)
	for i := range handles {
		handles[i] = fmt.Sprintf("user%03d", i)
		h.store.add(b, handles[i], h.svc.Subscribe())
	}

	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		h.sender.Notify(handles[i%recipients], uint64(i+1))
	}
	for range b.N {
		h.next(b)
	}
	elapsed := time.Since(start)
	b.StopTimer()

	if dropped := h.outcomes(b, outcomeDropped); dropped != 0 {
		b.Fatalf("%v notices dropped", dropped)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "pushes/s")
}
