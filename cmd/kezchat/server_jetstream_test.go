package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server/testutil"
)

// metric is the value of the sample named name on the metrics page at
// url, or "" when there is none.
func metric(t *testing.T, url, name string) string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			return v
		}
	}
	return ""
}

func TestAServerOnJetStreamHoldsTheWriterLeaseAndCountsItsWrites(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	bind, metricsBind := testutil.FreeAddr(t), testutil.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"server", "--store", "jetstream", "--nats-url", n.URL, "--bind", bind,
			"--metrics-bind", metricsBind, "--domain", "js.test"}, io.Discard, io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("the server did not stop")
		}
	})
	metrics := "http://" + metricsBind + "/metrics"
	testutil.Eventually(t, 20*time.Second, "the writer lease", func() bool {
		return metric(t, metrics, "kezchat_jetstream_writer_lease") == "1"
	})

	c := client.New("http://"+bind, nil)
	alice, _ := client.NewIdentity("ed25519")
	bob, _ := client.NewIdentity("ed25519")
	for id, h := range map[*client.Identity]string{alice: "alice", bob: "bob"} {
		if _, err := c.Register(t.Context(), id, h); err != nil {
			t.Fatal(err)
		}
	}
	bobUser, err := c.Lookup(t.Context(), "bob")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := client.NewMessage(alice, bobUser, client.NewMessageID(), "hello")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Post(t.Context(), doc); err != nil {
		t.Fatal(err)
	}
	if got := metric(t, metrics, "kezchat_jetstream_envelopes_written_total"); got != "1" {
		t.Fatalf("kezchat_jetstream_envelopes_written_total %q after one message; want 1", got)
	}
	if got := metric(t, metrics, "kezchat_jetstream_writes_total"); got != "1" {
		t.Fatalf("kezchat_jetstream_writes_total %q after one message; want 1", got)
	}
}
