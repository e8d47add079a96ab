package main

import (
	"bufio"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server/testutil"
)

func TestSummarizeUsesNearestRank(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	got := summarize(ds)
	if got.n != 100 || got.p50 != 50*time.Millisecond || got.p99 != 99*time.Millisecond || got.max != 100*time.Millisecond {
		t.Fatalf("summarize(1..100 ms) = %+v", got)
	}
	if one := summarize([]time.Duration{7}); one.p50 != 7 || one.p99 != 7 || one.max != 7 {
		t.Fatalf("summarize of one = %+v", one)
	}
	if none := summarize(nil); none.n != 0 {
		t.Fatalf("summarize(nil) = %+v", none)
	}
}

func TestRemoteTargetAcceptsOnlyLoopbackHTTP(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:6969", "http://localhost:8080/", "http://[::1]:80", "http://127.1.2.3"} {
		if _, err := remoteTarget(ok); err != nil {
			t.Errorf("remoteTarget(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"http://example.com:80", "http://10.0.0.1:6969", "https://127.0.0.1:6969",
		"http://127.0.0.1:6969/chat", "127.0.0.1:6969", "http://0.0.0.0:6969", "http://u:p@127.0.0.1:1"} {
		if _, err := remoteTarget(bad); err == nil {
			t.Errorf("remoteTarget(%q) accepted", bad)
		}
	}
}

func TestFollowCountsEachDeliveryAndChecksOrder(t *testing.T) {
	long := strings.Repeat("A", 300) // longer than the reader's buffer below
	event := func(seq, id string) string {
		return "event: message\nid: " + seq + "\ndata: {\"seq\":" + seq +
			",\"received_at\":1,\"message\":{\"payload\":{\"ct\":\"" + long + "\",\"id\":\"" + id + "\"},\"signature\":{}}}\n\n"
	}
	stream := ": keep-alive\n\n" +
		event("1", "tag.0") +
		event("2", "tag.1") +
		event("3", "tag.1") + // a duplicate delivery
		event("2", "tag.2") + // seq going back
		event("4", "other.0") + // not this run's
		"event: ping\ndata: {}\n\n" // not a message: ignored
	log := newDeliveryLog("tag", 3)
	st := &rawStream{lines: bufio.NewReaderSize(strings.NewReader(stream), 64)}
	st.follow(log)

	if got := log.delivered.Load(); got != 4 {
		t.Errorf("delivered %d, want 4", got)
	}
	for i, want := range []int32{1, 2, 1} {
		if got := log.deliveries[i].Load(); got != want {
			t.Errorf("message %d delivered %d times, want %d", i, got, want)
		}
	}
	if got := log.outOfOrder.Load(); got != 1 {
		t.Errorf("out of order %d, want 1", got)
	}
	if got := log.unexpected.Load(); got != 1 {
		t.Errorf("unexpected %d, want 1", got)
	}
}

// TestThroughputAgainstARealServer runs phase 1 in miniature against a test
// server: every message must be accepted and delivered exactly once.
func TestThroughputAgainstARealServer(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	target, err := remoteTarget(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := benchConfig{streams: 5, messages: 60, senders: 4, msgSize: 20}
	hc := benchHTTPClient(cfg.senders)
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := runThroughput(ctx, cfg, target, hc, "btest", &benchPrinter{w: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if r.accepted != cfg.messages || r.failed != 0 || r.delivered != cfg.messages ||
		r.missing != 0 || r.duplicates != 0 || r.outOfOrder != 0 || r.unexpected != 0 {
		t.Fatalf("result %+v", r)
	}
	if r.rate <= 0 || r.post.n != cfg.messages || r.delivery.n != cfg.messages {
		t.Fatalf("no figures: %+v", r)
	}
}
