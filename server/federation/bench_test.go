package federation_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server/app"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// BenchmarkDelivery sends messages to one reader whose stream is open, on
// one server (local) and from one server to another (federated, through
// the outbox and the courier), on SQLite and on JetStream (each server its
// own NATS, fsyncing every write as the operator configures one), as fast
// as they are answered and at a fixed rate (docs/benchmarks.md,
// "Federation").
func BenchmarkDelivery(b *testing.B) {
	for _, jetStream := range []bool{false, true} {
		for _, federated := range []bool{false, true} {
			for _, rate := range []int{0, 200} {
				name := "local"
				if federated {
					name = "federated"
				}
				if jetStream {
					name += "-jetstream"
				}
				if rate == 0 {
					name += "/closed-loop"
				} else {
					name += fmt.Sprintf("/%d-per-s", rate)
				}
				b.Run(name, func(b *testing.B) { benchDelivery(b, jetStream, federated, rate) })
			}
		}
	}
}

// benchDelivery sends b.N messages from 16 senders, as fast as answers
// come (rate 0) or at rate messages a second in all, and reports the
// messages a second and the latency from each send's start to its frame
// on the reader's stream.
func benchDelivery(b *testing.B, jetStream, federated bool, rate int) {
	startServer := func() *testutil.Server {
		o := testutil.Options{Federation: &app.Federation{}}
		if jetStream {
			o.NATS, o.JetStream = testutil.StartNATS(b, testutil.NATSOptions{SyncAlways: true}), true
		}
		return testutil.StartServer(b, o)
	}
	one := startServer()
	two := one
	if federated {
		two = startServer()
	}
	bob := newPerson(b, two, "bob")
	senders := make([]*person, 16)
	for i := range senders {
		senders[i] = newPerson(b, one, fmt.Sprintf("alice%02d", i))
	}
	arrived := make(chan string, b.N)
	stream(b, bob, arrived)

	sent := make(map[string]time.Time, b.N)
	var mu sync.Mutex
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w, s := range senders {
		wg.Go(func() {
			for i := w; i < b.N; i += len(senders) {
				if rate > 0 {
					time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
				}
				id := fmt.Sprintf("m%d", i)
				doc := s.message(b, bob, id)
				mu.Lock()
				sent[id] = time.Now()
				mu.Unlock()
				if r := s.send(b, doc); r.status >= 300 {
					b.Errorf("send %s: %d %s", id, r.status, r.body)
					return
				}
			}
		})
	}
	var lat []time.Duration
	deadline := time.After(2 * time.Minute)
	for len(lat) < b.N {
		select {
		case id := <-arrived:
			now := time.Now()
			mu.Lock()
			at := sent[id]
			mu.Unlock()
			lat = append(lat, now.Sub(at))
		case <-deadline:
			b.Fatalf("%d of %d delivered", len(lat), b.N)
		}
	}
	elapsed := time.Since(start)
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// stream follows p's inbox and sends each envelope's id to arrived.
func stream(b *testing.B, p *person, arrived chan<- string) {
	path := "/v1/inbox/" + p.handle + "/stream"
	auth, err := signing.SignRequest(p.signer, domainOf(p.srv), http.MethodGet, path, time.Now().Unix())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.srv.URL+path+"?auth="+auth, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("opening the stream: %v", err)
	}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev struct {
				Message signing.Signed `json:"message"`
			}
			var pl struct{ ID string }
			if json.Unmarshal([]byte(data), &ev) == nil && json.Unmarshal(ev.Message.Payload, &pl) == nil && pl.ID != "" {
				arrived <- pl.ID
			}
		}
	}()
}
