package jsstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/testutil"
)

// holderAndOther opens two replicas on n and tells which holds the writer
// lease: the other forwards what it stores.
func holderAndOther(t *testing.T, n *testutil.NATS, maxPending int) (holder, other *jsstore.Store) {
	t.Helper()
	a, b := open(t, n, maxPending), open(t, n, maxPending)
	testutil.Eventually(t, 5*time.Second, "a replica holding the writer lease", func() bool {
		return a.HoldsWriterLease() || b.HoldsWriterLease()
	})
	if b.HoldsWriterLease() {
		return b, a
	}
	return a, b
}

// group is one envelope from alice to each recipient, ids "<id>:<to>".
func group(id, msg string, recipients ...string) []*server.Envelope {
	envs := make([]*server.Envelope, len(recipients))
	for i, to := range recipients {
		envs[i] = &server.Envelope{Recipient: to, Sender: "alice", ID: id + ":" + to, Message: []byte(msg)}
	}
	return envs
}

func inboxLen(t *testing.T, s *jsstore.Store, handle string) int {
	t.Helper()
	envs, err := s.Messages(context.Background(), handle, 0, 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	return len(envs)
}

func TestGroupSendsAreStoredInOneBatchEachAmongConcurrentSingleSends(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	holder, other := holderAndOther(t, n, 0)
	recipients := []string{"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"}
	mustCreate(t, holder, append([]string{"alice"}, recipients...)...)
	var singles []*server.Envelope
	for i := range 256 {
		singles = append(singles, &server.Envelope{Recipient: recipients[i%len(recipients)], Sender: "alice",
			ID: fmt.Sprintf("s%d", i), Message: []byte("{}")})
	}
	var wg sync.WaitGroup
	wg.Go(func() { appendAll([]*jsstore.Store{holder, other}, singles) })
	groups := make([][]*server.Envelope, 32)
	errs := make([]error, len(groups))
	for g := range groups {
		groups[g] = group(fmt.Sprint("g", g), "{}", recipients...)
		store := []*jsstore.Store{holder, other}[g%2]
		wg.Go(func() {
			dups, err := store.AppendMessages(context.Background(), groups[g], server.InboxLimits{})
			if err == nil && len(dups) != len(recipients) {
				err = fmt.Errorf("%d answers", len(dups))
			}
			errs[g] = err
		})
	}
	wg.Wait()
	for g, envs := range groups {
		if errs[g] != nil {
			t.Fatalf("group %d: %v", g, errs[g])
		}
		// One batch takes consecutive seqs: nothing was stored between
		// the envelopes of a group.
		for i, e := range envs {
			if e.Seq != envs[0].Seq+uint64(i) {
				t.Fatalf("group %d: seqs %d and %d of envelopes 0 and %d are not of one batch", g, envs[0].Seq, e.Seq, i)
			}
		}
	}
	for _, r := range recipients {
		if k := inboxLen(t, holder, r); k != 32+256/len(recipients) {
			t.Fatalf("inbox of %s holds %d envelopes, want %d", r, k, 32+256/len(recipients))
		}
	}
}

func TestAGroupSendWithOneFullInboxStoresNothingAnywhere(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	holder, other := holderAndOther(t, n, 2)
	mustCreate(t, holder, "alice", "bob", "carol", "dave")
	mustAppend(t, holder, "carol", "bob", "c1", "{}")
	mustAppend(t, holder, "carol", "bob", "c2", "{}") // carol holds 2 of 2
	for name, s := range map[string]*jsstore.Store{"the lease holder": holder, "a forwarding replica": other} {
		t.Run(name, func(t *testing.T) {
			_, err := s.AppendMessages(context.Background(), group("g-"+strings.ReplaceAll(name, " ", "-"), "{}", "bob", "carol", "dave", "alice"), server.InboxLimits{})
			var e *server.Error
			if !errors.As(err, &e) || e.Code != server.CodeInboxFull || e.Index == nil || *e.Index != 1 {
				t.Fatalf("AppendMessages: %v; want inbox_full about envelope 1", err)
			}
			for _, h := range []string{"bob", "dave", "alice"} {
				if k := inboxLen(t, holder, h); k != 0 {
					t.Fatalf("%s's inbox holds %d envelopes of a refused group", h, k)
				}
			}
		})
	}
}

func TestARetriedGroupSendIsAnsweredWithTheOriginalSeqsAndStoresOnlyWhatIsNew(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	holder, other := holderAndOther(t, n, 0)
	mustCreate(t, holder, "alice", "bob", "carol", "dave")
	for name, s := range map[string]*jsstore.Store{"the lease holder": holder, "a forwarding replica": other} {
		t.Run(name, func(t *testing.T) {
			id := strings.ReplaceAll(name, " ", "-")
			// An earlier attempt stored bob's envelope only.
			first := group(id, `{"m":1}`, "bob")
			if _, err := s.AppendMessages(context.Background(), first, server.InboxLimits{}); err != nil {
				t.Fatal(err)
			}
			retry := group(id, `{"m":1}`, "bob", "carol", "dave")
			dups, err := s.AppendMessages(context.Background(), retry, server.InboxLimits{})
			if err != nil {
				t.Fatal(err)
			}
			if !dups[0] || dups[1] || dups[2] || retry[0].Seq != first[0].Seq || retry[2].Seq != retry[1].Seq+1 {
				t.Fatalf("retry: dups %v seqs %d %d %d; want [true false false], bob's %d, then two of one batch",
					dups, retry[0].Seq, retry[1].Seq, retry[2].Seq, first[0].Seq)
			}
			again := group(id, `{"m":1}`, "bob", "carol", "dave")
			dups, err = s.AppendMessages(context.Background(), again, server.InboxLimits{})
			if err != nil || !dups[0] || !dups[1] || !dups[2] {
				t.Fatalf("second retry: %v, %v; want every envelope a duplicate", dups, err)
			}
			for i := range again {
				if again[i].Seq != retry[i].Seq {
					t.Fatalf("second retry: envelope %d seq %d, want %d", i, again[i].Seq, retry[i].Seq)
				}
			}
			// Another message under a used id refuses the whole group.
			conflict := append(group(id+"-new", "{}", "bob"), group(id, `{"m":2}`, "carol")...)
			_, err = s.AppendMessages(context.Background(), conflict, server.InboxLimits{})
			var e *server.Error
			if !errors.As(err, &e) || e.Code != server.CodeMessageIDConflict || e.Index == nil || *e.Index != 1 {
				t.Fatalf("a reused id: %v; want message_id_conflict about envelope 1", err)
			}
		})
	}
	if k := inboxLen(t, holder, "bob"); k != 2 {
		t.Fatalf("bob's inbox holds %d envelopes, want 2 (one per subtest; the conflicting group stored none)", k)
	}
}

func TestALargeGroupSendIsForwardedInPartsAndStoredWhole(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	holder, other := holderAndOther(t, n, 0)
	var recipients []string
	for i := range server.MaxBatchDocuments {
		recipients = append(recipients, fmt.Sprint("r", i))
	}
	mustCreate(t, holder, append([]string{"alice"}, recipients...)...)
	// 256 messages of 16 KiB: 4 MiB, eight times half of NATS's
	// max_payload (1 MiB).
	envs := group("big", strings.Repeat("x", 16<<10), recipients...)
	dups, err := other.AppendMessages(context.Background(), envs, server.InboxLimits{})
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range envs {
		if dups[i] || e.Seq != envs[0].Seq+uint64(i) {
			t.Fatalf("envelope %d: seq %d dup %v; want %d, stored now", i, e.Seq, dups[i], envs[0].Seq+uint64(i))
		}
	}
	if k := inboxLen(t, holder, "r255"); k != 1 {
		t.Fatalf("r255's inbox holds %d envelopes", k)
	}
}

func TestAckDeletesOnlyWhatEveryDeviceAcknowledged(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := open(t, n, 0), open(t, n, 0)
	mustCreate(t, a, "alice", "bob")
	var seq []uint64
	for i := range 4 {
		seq = append(seq, mustAppend(t, a, "bob", "alice", fmt.Sprint(i), "{}"))
	}
	both := []string{"laptop", "phone"}
	ack := func(s *jsstore.Store, device string, upto uint64, devices []string) int {
		t.Helper()
		k, err := s.Ack(ctx, "bob", device, upto, devices)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	if k := ack(a, "phone", 0, both); k != 0 {
		t.Fatalf("upto=0 deleted %d", k)
	}
	if k := ack(b, "laptop", seq[2], both); k != 0 {
		t.Fatalf("the laptop's ack deleted %d while the phone holds the inbox at 0", k)
	}
	if k := ack(a, "phone", seq[1], both); k != 2 {
		t.Fatalf("the phone's ack to the second deleted %d, want 2", k)
	}
	if k := ack(b, "laptop", seq[0], both); k != 0 {
		t.Fatalf("an ack behind the laptop's point deleted %d", k)
	}
	if k := ack(a, "phone", seq[3], both); k != 1 {
		t.Fatalf("the phone's ack to the last deleted %d, want 1 (the laptop's point did not move back)", k)
	}
	if k := ack(a, "phone", seq[3], []string{"phone"}); k != 1 {
		t.Fatalf("after the laptop's revocation the phone's ack deleted %d, want 1", k)
	}
	if k := inboxLen(t, a, "bob"); k != 0 {
		t.Fatalf("%d envelopes left", k)
	}
	if k, err := a.Ack(ctx, "nobody", "phone", 3, nil); err != nil || k != 0 {
		t.Fatalf("Ack of an unknown inbox: %d, %v", k, err)
	}
}

func TestConcurrentAcksOfTwoDevicesLoseNeitherPoint(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := open(t, n, 0), open(t, n, 0)
	mustCreate(t, a, "alice", "bob")
	var last uint64
	for i := range 20 {
		last = mustAppend(t, a, "bob", "alice", fmt.Sprint(i), "{}")
	}
	devices := []string{"laptop", "phone"}
	var wg sync.WaitGroup
	for _, d := range devices {
		s := map[string]*jsstore.Store{"laptop": a, "phone": b}[d]
		wg.Go(func() {
			for range 10 {
				if _, err := s.Ack(ctx, "bob", d, last-10, devices); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	// Both points are at last-10: the phone moving to the end deletes
	// down to the laptop's point only.
	if _, err := b.Ack(ctx, "bob", "phone", last, devices); err != nil {
		t.Fatal(err)
	}
	if k := inboxLen(t, a, "bob"); k != 10 {
		t.Fatalf("bob's inbox holds %d, want 10 (the laptop's point lost?)", k)
	}
}

func TestAnAckBehindTheDevicesPointDeletesUpToThePoint(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob")
	var seq []uint64
	for i := range 6 {
		seq = append(seq, mustAppend(t, s, "bob", "alice", fmt.Sprint(i), "{}"))
	}
	both := []string{"laptop", "phone"}
	for _, a := range []struct {
		device      string
		upto        uint64
		devices     []string
		wantDeleted int
	}{
		{"laptop", 0, both, 0},
		{"phone", seq[4], both, 0},
		{"laptop", seq[1], both, 2},
		// The laptop is revoked; the phone acknowledges behind its point,
		// which stays and now alone holds the inbox.
		{"phone", seq[3], []string{"phone"}, 3},
		{"phone", seq[5], []string{"phone"}, 1},
	} {
		k, err := s.Ack(ctx, "bob", a.device, a.upto, a.devices)
		if err != nil || k != a.wantDeleted {
			t.Fatalf("%s acknowledging %d: deleted %d, %v; want %d", a.device, a.upto, k, err, a.wantDeleted)
		}
	}
}
