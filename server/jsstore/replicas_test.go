package jsstore_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/client/clienttest"
	"kez.lat/chat/server"
	"kez.lat/chat/server/testutil"
)

// replica starts a chat server on the JetStream store and the NATS broker.
func replica(t *testing.T, n *testutil.NATS) *client.Client {
	t.Helper()
	srv := testutil.StartServer(t, testutil.Options{NATS: n, JetStream: true})
	return clienttest.New(t, srv.URL, 20*time.Second)
}

func TestRegisteredOnAThenSentThroughBIsStreamedOnA(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	ca, cb := replica(t, n), replica(t, n)
	bob := clienttest.Register(t, ca, "bob")
	alice := clienttest.Register(t, ca, "alice")
	st, err := ca.Stream(ctx, bob, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var seqs []uint64
	var bodies []string
	for i := range 3 {
		body := fmt.Sprint("via B ", i)
		r, err := cb.Send(ctx, alice, "bob", body)
		if err != nil {
			t.Fatal(err)
		}
		seqs, bodies = append(seqs, r.Seq), append(bodies, body)
	}
	clienttest.ExpectStreamed(t, ca, bob, st, seqs, bodies)
	// Registration is shared too: the handle is taken on B.
	other, _ := client.NewIdentity("ed25519")
	if _, err := cb.Register(ctx, other, "bob"); client.ErrorCode(err) != server.CodeHandleTaken {
		t.Fatalf("registering bob again on B: %v", err)
	}
}

func TestNATSRestartMidLoadLosesNoAcknowledgedMessageAndStreamsResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	ca, cb := replica(t, n), replica(t, n)
	bob := clienttest.Register(t, ca, "bob")
	alice := clienttest.Register(t, ca, "alice")
	bobOnB, err := cb.Lookup(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}

	// bob follows his inbox on A throughout, reconnecting as he must.
	var mu sync.Mutex
	var streamed []uint64
	lctx, stopListen := context.WithCancel(ctx)
	listenDone := make(chan error, 1)
	go func() {
		listenDone <- ca.Listen(lctx, bob, 0, func(env client.Envelope) error {
			mu.Lock()
			streamed = append(streamed, env.Seq)
			mu.Unlock()
			return nil
		})
	}()

	// alice sends through B, retrying each message (same id: idempotent)
	// until it is acknowledged.
	const total = 150
	acked := make(chan uint64, total)
	failures := make(chan struct{}, total*100)
	go func() {
		defer close(acked)
		for i := range total {
			doc, err := client.NewMessage(alice, bobOnB, fmt.Sprintf("msg-%03d", i), fmt.Sprint("message ", i))
			if err != nil {
				t.Error(err)
				return
			}
			for {
				r, _, err := cb.Post(ctx, doc)
				if err == nil {
					acked <- r.Seq
					break
				}
				if ctx.Err() != nil {
					return
				}
				failures <- struct{}{}
				time.Sleep(20 * time.Millisecond) // retry backoff
			}
		}
	}()

	var got []uint64
	for seq := range acked {
		got = append(got, seq)
		if len(got) == total/3 {
			n.Shutdown()
			// Sends fail while NATS is down (at least one before restart).
			select {
			case <-failures:
			case <-ctx.Done():
				t.Fatal("no send failed with NATS down")
			}
			n.Start(t)
		}
	}
	if len(got) != total {
		t.Fatalf("%d of %d messages acknowledged", len(got), total)
	}
	if !slices.IsSorted(got) {
		t.Fatalf("acknowledged seqs not increasing: %v", got)
	}

	testutil.Eventually(t, 30*time.Second, "the stream to deliver every acknowledged message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(streamed) >= total
	})
	stopListen()
	<-listenDone
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(streamed) != fmt.Sprint(got) {
		t.Fatalf("streamed %v\nwant     %v", streamed, got)
	}
	page, err := ca.Poll(ctx, bob, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var polled []uint64
	for _, e := range page.Messages {
		polled = append(polled, e.Seq)
	}
	if fmt.Sprint(polled) != fmt.Sprint(got) {
		t.Fatalf("stored %v\nwant   %v", polled, got)
	}
}
