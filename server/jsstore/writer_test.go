package jsstore_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/testutil"
)

// stored is what one AppendMessage answered.
type stored struct {
	to        string
	seq, prev uint64
	dup       bool
	err       error
}

// appendAll runs the appends from 64 goroutines at once, alternating
// between stores, and returns their answers in the order given.
func appendAll(stores []*jsstore.Store, envs []*server.Envelope) []stored {
	out := make([]stored, len(envs))
	var wg sync.WaitGroup
	next := make(chan int)
	for range 64 {
		wg.Go(func() {
			for i := range next {
				dup, err := stores[i%len(stores)].AppendMessage(context.Background(), envs[i], server.InboxLimits{})
				out[i] = stored{to: envs[i].Recipient, seq: envs[i].Seq, prev: envs[i].Prev, dup: dup, err: err}
			}
		})
	}
	for i := range envs {
		next <- i
	}
	close(next)
	wg.Wait()
	return out
}

func TestConcurrentAppendsThroughTwoReplicasAreWrittenByOneAndEachPrevIsTheRecipientsPreviousSeq(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := open(t, n, 0), open(t, n, 0)
	recipients := []string{"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"}
	mustCreate(t, a, append([]string{"alice"}, recipients...)...)
	var envs []*server.Envelope
	for i := range 512 {
		envs = append(envs, &server.Envelope{Recipient: recipients[i%len(recipients)], Sender: "alice",
			ID: fmt.Sprintf("m%d", i), Message: fmt.Appendf(nil, `{"n":%d}`, i)})
	}
	out := appendAll([]*jsstore.Store{a, b}, envs)

	byRecipient := map[string][]stored{}
	for i, s := range out {
		if s.err != nil || s.dup {
			t.Fatalf("append %d: dup %v, %v", i, s.dup, s.err)
		}
		byRecipient[s.to] = append(byRecipient[s.to], s)
	}
	for to, got := range byRecipient {
		slices.SortFunc(got, func(x, y stored) int { return int(x.seq) - int(y.seq) })
		inbox, err := a.Messages(context.Background(), to, 0, 1000, 0)
		if err != nil {
			t.Fatal(err)
		}
		if want := seqs(inbox); !slices.Equal(want, func() []uint64 {
			s := make([]uint64, len(got))
			for i := range got {
				s[i] = got[i].seq
			}
			return s
		}()) {
			t.Fatalf("%s's inbox holds %v, the appends answered %v", to, want, got)
		}
		// The writer knows each recipient from its first envelope on.
		for i, s := range got {
			want := uint64(0)
			if i > 0 {
				want = got[i-1].seq
			}
			if s.prev != want {
				t.Fatalf("%s's envelope %d (seq %d): prev %d, want %d", to, i, s.seq, s.prev, want)
			}
		}
	}
	_, ae := a.WriterStats()
	_, be := b.WriterStats()
	if ae+be != 512 {
		t.Fatalf("writers committed %d envelopes; want 512", ae+be)
	}
	if (ae == 0) == (be == 0) {
		t.Fatalf("envelopes committed by a %d, by b %d; want one writer", ae, be)
	}
}

func TestRacingRetriesOfOneMessageIDAreStoredOnce(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := open(t, n, 0), open(t, n, 0)
	mustCreate(t, a, "alice", "bob")
	var envs []*server.Envelope
	for range 16 {
		envs = append(envs, &server.Envelope{Recipient: "bob", Sender: "alice", ID: "same", Message: []byte(`{"n":1}`)})
	}
	out := appendAll([]*jsstore.Store{a, b}, envs)
	firsts := 0
	for i, s := range out {
		if s.err != nil || s.seq != out[0].seq {
			t.Fatalf("append %d: seq %d, %v; want %d", i, s.seq, s.err, out[0].seq)
		}
		if !s.dup {
			firsts++
		}
	}
	if firsts != 1 {
		t.Fatalf("%d appends answered as the first; want 1", firsts)
	}
	conflict := &server.Envelope{Recipient: "bob", Sender: "alice", ID: "same", Message: []byte(`{"n":2}`)}
	if _, err := b.AppendMessage(context.Background(), conflict, server.InboxLimits{}); server.ErrorCode(err) != server.CodeMessageIDConflict {
		t.Fatalf("same id, other message: %v; want %s", err, server.CodeMessageIDConflict)
	}
	if inbox, err := a.Messages(context.Background(), "bob", 0, 100, 0); err != nil || len(inbox) != 1 {
		t.Fatalf("bob's inbox %v, %v; want one envelope", seqs(inbox), err)
	}
}

func TestAFullInboxRefusesOnlyItsOwnConcurrentEnvelopes(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 3)
	mustCreate(t, s, "alice", "bob", "carol")
	var envs []*server.Envelope
	for i := range 12 {
		envs = append(envs, &server.Envelope{Recipient: []string{"bob", "carol"}[i%2], Sender: "alice",
			ID: fmt.Sprintf("m%d", i), Message: []byte("{}")})
	}
	out := appendAll([]*jsstore.Store{s}, envs)
	got := map[string]map[string]int{"bob": {}, "carol": {}}
	for _, r := range out {
		got[r.to][server.ErrorCode(r.err)]++
		if r.err == nil {
			got[r.to]["stored"]++
		}
	}
	for _, to := range []string{"bob", "carol"} {
		if got[to]["stored"] != 3 || got[to][server.CodeInboxFull] != 3 {
			t.Fatalf("%s: %v; want 3 stored and 3 %s", to, got[to], server.CodeInboxFull)
		}
	}
}

func TestAnEnvelopeAnotherWriterStoredIsNeverVouchedOver(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob")
	s1 := mustAppend(t, s, "bob", "alice", "m1", "{}")

	// A replica that still thinks it holds the lease writes too.
	js := jetStreamOf(t, n)
	other, err := js.Publish(ctx, jsstore.SubjectPrefix+"bob", []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}

	e := &server.Envelope{Recipient: "bob", Sender: "alice", ID: "m2", Message: []byte("{}")}
	if _, err := s.AppendMessage(ctx, e, server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	if e.Prev != 0 && e.Prev != other.Sequence {
		t.Fatalf("prev %d after another writer stored %d (before it, %d); want 0 or %d", e.Prev, other.Sequence, s1, other.Sequence)
	}
	next := &server.Envelope{Recipient: "bob", Sender: "alice", ID: "m3", Message: []byte("{}")}
	if _, err := s.AppendMessage(ctx, next, server.InboxLimits{}); err != nil || next.Prev != e.Seq {
		t.Fatalf("next prev %d, %v; want %d", next.Prev, err, e.Seq)
	}
}

func TestTheWriterLeaseMovesToAnotherReplicaWhenItsHolderCloses(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := open(t, n, 0), open(t, n, 0)
	mustCreate(t, a, "alice", "bob")
	testutil.Eventually(t, 5*time.Second, "a replica holding the writer lease", func() bool {
		return a.HoldsWriterLease() || b.HoldsWriterLease()
	})
	holder, other := a, b
	if b.HoldsWriterLease() {
		holder, other = b, a
	}
	s1 := mustAppend(t, other, "bob", "alice", "m1", "{}")
	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	// Appended while nobody holds it: waits for the next holder.
	s2 := mustAppend(t, other, "bob", "alice", "m2", "{}")
	if !other.HoldsWriterLease() {
		t.Fatal("the remaining replica does not hold the lease")
	}
	if inbox, err := other.Messages(context.Background(), "bob", 0, 10, 0); err != nil || !slices.Equal(seqs(inbox), []uint64{s1, s2}) {
		t.Fatalf("bob's inbox %v, %v; want [%d %d]", seqs(inbox), err, s1, s2)
	}
}

func TestOnAThreeServerClusterAppendsThroughTwoReplicasAreStoredOnceInOrder(t *testing.T) {
	url := testutil.StartNATSCluster(t, 3)
	openR3 := func() *jsstore.Store {
		s, err := jsstore.Open(context.Background(), jsstore.Config{
			NATS: natsbus.Config{URL: url, ReconnectWait: 20 * time.Millisecond}, Replicas: 3,
		}, testutil.Logger(t))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := openR3(), openR3()
	recipients := []string{"r0", "r1", "r2", "r3"}
	mustCreate(t, a, append([]string{"alice"}, recipients...)...)
	var envs []*server.Envelope
	for i := range 256 {
		envs = append(envs, &server.Envelope{Recipient: recipients[i%len(recipients)], Sender: "alice",
			ID: fmt.Sprintf("m%d", i%200), Message: fmt.Appendf(nil, `{"n":%d}`, i%200)}) // 56 retries
	}
	out := appendAll([]*jsstore.Store{a, b}, envs)
	firsts := map[string]stored{}
	for i, s := range out {
		if s.err != nil {
			t.Fatalf("append %d: %v", i, s.err)
		}
		id := envs[i].ID
		if f, ok := firsts[id]; ok && f.seq != s.seq {
			t.Fatalf("%s stored at %d and %d", id, f.seq, s.seq)
		}
		if !s.dup || firsts[id] == (stored{}) {
			firsts[id] = s
		}
	}
	total := 0
	for _, to := range recipients {
		inbox, err := b.Messages(context.Background(), to, 0, 1000, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.IsSorted(seqs(inbox)) {
			t.Fatalf("%s's inbox out of order: %v", to, seqs(inbox))
		}
		total += len(inbox)
	}
	if total != 200 {
		t.Fatalf("%d envelopes stored; want 200 (256 appends, 56 of them retries)", total)
	}
}

func TestAHolderWhoseLeaseWasTakenStepsDownAndAppendsGoOn(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob")
	testutil.Eventually(t, 5*time.Second, "the writer lease", s.HoldsWriterLease)

	// Another replica's claim, as after a lapse this one did not notice.
	js := jetStreamOf(t, n)
	kv, err := js.KeyValue(context.Background(), jsstore.BucketWriter)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), "holder", []byte("another replica")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 3*time.Second, "the holder stepping down", func() bool { return !s.HoldsWriterLease() })
	// The claim lapses unrenewed; the store takes the lease again.
	mustAppend(t, s, "bob", "alice", "m1", "{}")
	if !s.HoldsWriterLease() {
		t.Fatal("the store appended without taking the lease back")
	}
}

func TestAppendsGoOnWhileAnotherWriterKeepsWritingAndNoPrevSkipsItsEnvelopes(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob", "carol")

	// A replica of an earlier version, during a rolling update, publishes
	// envelopes of its own all along.
	js := jetStreamOf(t, n)
	stop := make(chan struct{})
	rogue := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				rogue <- nil
				return
			default:
			}
			if _, err := js.Publish(context.Background(), jsstore.SubjectPrefix+[]string{"bob", "carol"}[i%2], []byte("{}")); err != nil {
				rogue <- err
				return
			}
		}
	}()
	var envs []*server.Envelope
	for i := range 300 {
		envs = append(envs, &server.Envelope{Recipient: []string{"bob", "carol"}[i%2], Sender: "alice",
			ID: fmt.Sprintf("m%d", i), Message: []byte("{}")})
	}
	out := appendAll([]*jsstore.Store{s}, envs)
	close(stop)
	if err := <-rogue; err != nil {
		t.Fatal(err)
	}
	for i, r := range out {
		if r.err != nil {
			t.Fatalf("append %d while another writer wrote: %v", i, r.err)
		}
	}
	// A Prev vouches that nothing of the recipient lies between it and the
	// envelope: not even the other writer's.
	for _, to := range []string{"bob", "carol"} {
		inbox, err := s.Messages(context.Background(), to, 0, 1000, 0)
		if err != nil {
			t.Fatal(err)
		}
		before := map[uint64]uint64{}
		for i, e := range inbox {
			if i > 0 {
				before[e.Seq] = inbox[i-1].Seq
			} else {
				before[e.Seq] = 0
			}
		}
		for _, r := range out {
			if r.to == to && r.prev != 0 && r.prev != before[r.seq] {
				t.Fatalf("%s's envelope %d has prev %d; the envelope before it is %d", to, r.seq, r.prev, before[r.seq])
			}
		}
	}
}
