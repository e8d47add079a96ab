package server_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/testutil"
)

// TestReadyHandsOverWhatCameMeanwhileAndNeverWaits: a stream's writer puts
// every event already there into one write; Ready never waits and never
// reads the store, and skips what was delivered already.
func TestReadyHandsOverWhatCameMeanwhileAndNeverWaits(t *testing.T) {
	srv := testutil.StartServer(t, testutil.Options{})
	ctx := context.Background()
	c := client.New(srv.URL, nil)
	ids := map[string]*client.Identity{}
	for _, h := range []string{"alice", "bob"} {
		id, err := client.NewIdentity("ed25519")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Register(ctx, id, h); err != nil {
			t.Fatal(err)
		}
		ids[h] = id
	}
	send := func(n int) {
		for i := range n {
			if _, err := c.Send(ctx, ids["alice"], "bob", strconv.Itoa(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	st, err := srv.Service.OpenStream(ctx, "bob", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, _, ok := st.Ready(); ok {
		t.Fatal("Ready handed over an event before the stream read the store")
	}
	// Stored before the first read (and published to the subscription too).
	send(5)
	var seqs []uint64
	e, _, err := st.NextEvent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seqs = append(seqs, e.Seq)
	seqs = append(seqs, readySeqs(st)...)
	if len(seqs) != 5 || seqs[0] != 1 || seqs[4] != 5 {
		t.Fatalf("NextEvent then Ready delivered seqs %v, want 1 to 5 once each", seqs)
	}
	// Live ones, published before Send answered.
	send(3)
	if seqs = readySeqs(st); len(seqs) != 3 || seqs[0] != 6 || seqs[2] != 8 {
		t.Fatalf("Ready delivered live seqs %v, want 6 to 8", seqs)
	}
	// Nothing left: NextEventBefore gives up when its idle channel fires.
	idle := time.NewTimer(20 * time.Millisecond)
	defer idle.Stop()
	if _, _, err := st.NextEventBefore(ctx, idle.C); !errors.Is(err, server.ErrIdle) {
		t.Fatalf("NextEventBefore with nothing to deliver: %v, want ErrIdle", err)
	}
}

// readySeqs takes every envelope Ready hands over, and returns their seqs.
func readySeqs(st *server.Stream) []uint64 {
	var seqs []uint64
	for {
		e, _, ok := st.Ready()
		if !ok {
			return seqs
		}
		seqs = append(seqs, e.Seq)
	}
}
