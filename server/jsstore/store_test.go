package jsstore_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"kez.lat/chat/server"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/testutil"
)

func open(t testing.TB, n *testutil.NATS, maxPending int) *jsstore.Store {
	t.Helper()
	s, err := jsstore.Open(context.Background(), jsstore.Config{
		NATS:       natsbus.Config{URL: n.URL, ReconnectWait: 20 * time.Millisecond},
		MaxPending: maxPending,
	}, testutil.Logger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testUser(handle string) *server.User {
	return &server.User{Handle: handle, Server: "example.test", PrimaryID: "pid-" + handle, Alg: "ed25519",
		Key: []byte("signing-key-of-" + handle), EncKey: []byte("enc-key-of-" + handle), CreatedAt: time.Unix(1_700_000_000, 0)}
}

func mustCreate(t testing.TB, s *jsstore.Store, handles ...string) {
	t.Helper()
	for _, h := range handles {
		if err := s.CreateUser(context.Background(), testUser(h)); err != nil {
			t.Fatalf("CreateUser(%s): %v", h, err)
		}
	}
}

func mustAppend(t testing.TB, s *jsstore.Store, to, from, id, msg string) uint64 {
	t.Helper()
	e := &server.Envelope{Recipient: to, Sender: from, ID: id, Message: []byte(msg)}
	dup, err := s.AppendMessage(context.Background(), e, server.InboxLimits{})
	if err != nil || dup {
		t.Fatalf("AppendMessage(%s→%s %s) = %v, %v", from, to, id, dup, err)
	}
	return e.Seq
}

func seqs(envs []*server.Envelope) []uint64 {
	out := make([]uint64, len(envs))
	for i, e := range envs {
		out[i] = e.Seq
	}
	return out
}

func TestCreatedUserCanBeLookedUpFromAnotherReplica(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := open(t, n, 0), open(t, n, 0)
	want := testUser("bob.smith")
	if err := a.CreateUser(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	got, err := b.UserByHandle(context.Background(), "bob.smith")
	if err != nil {
		t.Fatal(err)
	}
	if got.Handle != want.Handle || got.PrimaryID != want.PrimaryID || string(got.Key) != string(want.Key) ||
		string(got.EncKey) != string(want.EncKey) || !got.CreatedAt.Equal(want.CreatedAt) || got.Server != want.Server {
		t.Fatalf("UserByHandle = %+v, want %+v", got, want)
	}
	if _, err := b.UserByHandle(context.Background(), "nobody"); server.ErrorCode(err) != server.CodeUnknownHandle {
		t.Fatalf("unknown handle: %v", err)
	}
}

func TestCreateUserRefusesTakenHandleOrPrimaryID(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice")
	tests := []struct {
		name string
		user func() *server.User
		code string
	}{
		{"same handle, new primary_id", func() *server.User { u := testUser("alice"); u.PrimaryID = "other"; return u }, server.CodeHandleTaken},
		{"new handle, same primary_id", func() *server.User { u := testUser("alice2"); u.PrimaryID = "pid-alice"; return u }, server.CodePrimaryIDTaken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.CreateUser(context.Background(), tt.user()); server.ErrorCode(err) != tt.code {
				t.Fatalf("err = %v, want %s", err, tt.code)
			}
		})
	}
	// The refused handle's primary_id claim was withdrawn: it may register.
	u := testUser("carol")
	u.PrimaryID = "other"
	if err := s.CreateUser(context.Background(), u); err != nil {
		t.Fatalf("primary_id of a refused registration is still claimed: %v", err)
	}
}

func TestTwoReplicasRacingToRegisterOneHandleHaveExactlyOneWinner(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	replicas := []*jsstore.Store{open(t, n, 0), open(t, n, 0)}
	for round := range 10 {
		handle := fmt.Sprintf("race%d", round)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Go(func() {
				u := testUser(handle)
				u.PrimaryID = fmt.Sprintf("pid-%d-%d", round, i)
				errs[i] = replicas[i%2].CreateUser(context.Background(), u)
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case server.ErrorCode(err) != server.CodeHandleTaken:
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d winners, want 1", round, won)
		}
	}
}

func TestAppendGivesEachInboxIncreasingSeqsAndRetriesTheOriginal(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob", "carol")
	b1 := mustAppend(t, s, "bob", "alice", "m1", `{"n":1}`)
	c1 := mustAppend(t, s, "carol", "alice", "m2", `{"n":2}`)
	b2 := mustAppend(t, s, "bob", "alice", "m3", `{"n":3}`)
	if !(b1 < b2) || c1 == b1 || c1 == b2 {
		t.Fatalf("seqs bob %d, %d carol %d", b1, b2, c1)
	}

	retry := &server.Envelope{Recipient: "bob", Sender: "alice", ID: "m1", Message: []byte(`{"n":1}`)}
	if dup, err := s.AppendMessage(ctx, retry, server.InboxLimits{}); err != nil || !dup || retry.Seq != b1 {
		t.Fatalf("retry = %v, %v, seq %d; want duplicate of %d", dup, err, retry.Seq, b1)
	}
	conflict := &server.Envelope{Recipient: "bob", Sender: "alice", ID: "m1", Message: []byte(`{"n":"other"}`)}
	if _, err := s.AppendMessage(ctx, conflict, server.InboxLimits{}); server.ErrorCode(err) != server.CodeMessageIDConflict {
		t.Fatalf("conflict: %v", err)
	}
	unknown := &server.Envelope{Recipient: "nobody", Sender: "alice", ID: "m9", Message: []byte(`{}`)}
	if _, err := s.AppendMessage(ctx, unknown, server.InboxLimits{}); server.ErrorCode(err) != server.CodeUnknownHandle {
		t.Fatalf("unknown recipient: %v", err)
	}

	envs, err := s.Messages(ctx, "bob", 0, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(envs); len(got) != 2 || got[0] != b1 || got[1] != b2 {
		t.Fatalf("bob's inbox %v, want [%d %d]", got, b1, b2)
	}
	if e := envs[1]; e.Sender != "alice" || e.ID != "m3" || string(e.Message) != `{"n":3}` || e.ReceivedAt.IsZero() {
		t.Fatalf("envelope %+v", e)
	}
	if envs, _ := s.Messages(ctx, "bob", b1, 100, 0); len(envs) != 1 || envs[0].Seq != b2 {
		t.Fatalf("after %d: %v", b1, seqs(envs))
	}
	if envs, _ := s.Messages(ctx, "nobody", 0, 100, 0); len(envs) != 0 {
		t.Fatalf("unknown recipient's inbox: %v", seqs(envs))
	}
}

func TestMessagesPagesBySinceAndLimit(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob", "carol")
	var want []uint64
	for i := range 7 {
		want = append(want, mustAppend(t, s, "bob", "alice", fmt.Sprint("b", i), "{}"))
		mustAppend(t, s, "carol", "alice", fmt.Sprint("c", i), "{}") // gaps in bob's seqs
	}
	var got []uint64
	since := uint64(0)
	for {
		page, err := s.Messages(ctx, "bob", since, 3, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 3 {
			t.Fatalf("page of %d, limit 3", len(page))
		}
		if len(page) == 0 {
			break
		}
		got = append(got, seqs(page)...)
		since = page[len(page)-1].Seq
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("paged %v, want %v", got, want)
	}
}

func TestMessagesStopOnceTheirBytesReachTheBound(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob")
	for i := range 10 {
		mustAppend(t, s, "bob", "alice", fmt.Sprint(i), strings.Repeat("m", 100))
	}
	for _, tt := range []struct {
		maxBytes int
		want     int
	}{{0, 10}, {1, 1}, {100, 1}, {101, 2}, {250, 3}, {300, 3}, {1000, 10}, {5000, 10}} {
		envs, err := s.Messages(context.Background(), "bob", 0, 100, tt.maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(envs) != tt.want {
			t.Errorf("maxBytes %d: %d envelopes, want %d", tt.maxBytes, len(envs), tt.want)
		}
	}
}

func TestAckDeletesUpToSeqAndFullInboxRefusesUntilAcked(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 2)
	mustCreate(t, s, "alice", "bob")
	s1 := mustAppend(t, s, "bob", "alice", "m1", "{}")
	s2 := mustAppend(t, s, "bob", "alice", "m2", "{}")
	full := &server.Envelope{Recipient: "bob", Sender: "alice", ID: "m3", Message: []byte("{}")}
	if _, err := s.AppendMessage(ctx, full, server.InboxLimits{MaxPending: 2}); server.ErrorCode(err) != server.CodeInboxFull {
		t.Fatalf("third message: %v, want inbox_full", err)
	}
	if k, err := s.Ack(ctx, "bob", "dev", s1, []string{"dev"}); err != nil || k != 1 {
		t.Fatalf("Ack(%d) = %d, %v; want 1", s1, k, err)
	}
	s3 := mustAppend(t, s, "bob", "alice", "m3", "{}")
	if s3 <= s2 {
		t.Fatalf("seq %d after ack is not above %d", s3, s2)
	}
	if k, err := s.Ack(ctx, "bob", "dev", s3, []string{"dev"}); err != nil || k != 2 {
		t.Fatalf("Ack(%d) = %d, %v; want 2", s3, k, err)
	}
	if envs, _ := s.Messages(ctx, "bob", 0, 10, 0); len(envs) != 0 {
		t.Fatalf("inbox after acking all: %v", seqs(envs))
	}
	if k, err := s.Ack(ctx, "nobody", "dev", 99, []string{"dev"}); err != nil || k != 0 {
		t.Fatalf("Ack of unknown = %d, %v", k, err)
	}
}

func TestUseOnceRefusesAReplayOnAnyReplica(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := open(t, n, 0), open(t, n, 0)
	exp := time.Now().Add(5 * time.Minute)
	if ok, err := a.UseOnce(context.Background(), []byte("digest-1"), exp, time.Now()); err != nil || !ok {
		t.Fatalf("first use = %v, %v", ok, err)
	}
	if ok, err := b.UseOnce(context.Background(), []byte("digest-1"), exp, time.Now()); err != nil || ok {
		t.Fatalf("replay on another replica = %v, %v; want false", ok, err)
	}
	if ok, err := b.UseOnce(context.Background(), []byte("digest-2"), exp, time.Now()); err != nil || !ok {
		t.Fatalf("another digest = %v, %v", ok, err)
	}
}

func TestPushSubscriptionsUpsertByEndpointAndEvictTheOldest(t *testing.T) {
	ctx := context.Background()
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	at := time.Unix(1_700_000_000, 0)
	sub := func(ep string, d time.Duration) *server.PushSubscription {
		return &server.PushSubscription{Handle: "bob", Endpoint: ep, P256dh: []byte("p"), Auth: []byte("a"), CreatedAt: at.Add(d)}
	}
	for i, ep := range []string{"https://p/1", "https://p/2", "https://p/3"} {
		if err := s.SavePushSubscription(ctx, sub(ep, time.Duration(i)*time.Second), 2); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SavePushSubscription(ctx, sub("https://p/2", 10*time.Second), 2); err != nil { // upsert
		t.Fatal(err)
	}
	subs, err := s.PushSubscriptions(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	var eps []string
	for _, s := range subs {
		eps = append(eps, s.Endpoint)
	}
	if fmt.Sprint(eps) != "[https://p/3 https://p/2]" {
		t.Fatalf("subscriptions %v, want [https://p/3 https://p/2]", eps)
	}
	if ok, err := s.DeletePushSubscription(ctx, "bob", "https://p/3"); err != nil || !ok {
		t.Fatalf("delete = %v, %v", ok, err)
	}
	if ok, err := s.DeletePushSubscription(ctx, "bob", "https://p/3"); err != nil || ok {
		t.Fatalf("second delete = %v, %v", ok, err)
	}
}

// TestAppendSetsPrevToTheRecipientsLastSeqOnEveryReplica checks the Prev
// that lets streams deliver a live envelope without reading the store: the
// recipient's seq stored just before, also when another replica stored it
// (a stale guess is corrected by JetStream) and after an ack purged it.
func TestAppendSetsPrevToTheRecipientsLastSeqOnEveryReplica(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := open(t, n, 0), open(t, n, 0)
	mustCreate(t, a, "alice", "bob", "carol")
	ctx := context.Background()
	appendPrev := func(s *jsstore.Store, to, id string) (seq, prev uint64) {
		t.Helper()
		e := &server.Envelope{Recipient: to, Sender: "alice", ID: id, Message: []byte(`{"m":"` + id + `"}`)}
		if dup, err := s.AppendMessage(ctx, e, server.InboxLimits{}); err != nil || dup {
			t.Fatalf("AppendMessage(%s): %v, %v", id, dup, err)
		}
		return e.Seq, e.Prev
	}
	b1, p := appendPrev(a, "bob", "1")
	if p != 0 {
		t.Fatalf("first envelope of bob: prev %d, want 0", p)
	}
	appendPrev(a, "carol", "2") // a gap in bob's seqs
	b2, p := appendPrev(b, "bob", "3")
	if p != b1 {
		t.Fatalf("bob's second envelope, through the other replica: prev %d, want %d", p, b1)
	}
	b3, p := appendPrev(a, "bob", "4") // a's guess (b1) is stale
	if p != b2 {
		t.Fatalf("bob's third envelope, with a stale guess: prev %d, want %d", p, b2)
	}
	if _, err := a.Ack(ctx, "bob", "dev", b3, []string{"dev"}); err != nil {
		t.Fatal(err)
	}
	// Acknowledged envelopes are gone, and nothing was stored after b3:
	// a stream that delivered b3 may deliver the next one.
	if _, p = appendPrev(b, "bob", "5"); p != b3 {
		t.Fatalf("after bob acked everything: prev %d, want %d", p, b3)
	}
	// A retry is answered with the original seq, as before.
	e := &server.Envelope{Recipient: "bob", Sender: "alice", ID: "3", Message: []byte(`{"m":"3"}`)}
	if dup, err := a.AppendMessage(ctx, e, server.InboxLimits{}); err != nil || !dup || e.Seq != b2 {
		t.Fatalf("retry: dup %v, seq %d, err %v; want the original %d", dup, e.Seq, err, b2)
	}
}

func TestOpenTakesOverAStreamAnEarlierVersionCreated(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	js := jetStreamOf(t, n)
	ctx := context.Background()
	// As the store before the writer made it: per-message publishes, a
	// 2-minute duplicate window, no atomic batches.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: jsstore.StreamName, Subjects: []string{jsstore.SubjectPrefix + ">"},
		Duplicates: 2 * time.Minute, AllowDirect: true, Discard: jetstream.DiscardNew}); err != nil {
		t.Fatal(err)
	}
	old, err := js.Publish(ctx, jsstore.SubjectPrefix+"bob", []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob")
	var envs []*server.Envelope
	for i := range 8 {
		envs = append(envs, &server.Envelope{Recipient: "bob", Sender: "alice", ID: fmt.Sprint(i), Message: []byte("{}")})
	}
	for i, r := range appendAll([]*jsstore.Store{s}, envs) {
		if r.err != nil || r.seq <= old.Sequence {
			t.Fatalf("append %d: seq %d, %v; want one after %d", i, r.seq, r.err, old.Sequence)
		}
	}
	info, err := js.Stream(ctx, jsstore.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := info.CachedInfo().Config; !cfg.AllowAtomicPublish || cfg.Duplicates != 15*time.Minute {
		t.Fatalf("stream config: atomic %v, duplicate window %v; want true, 15m", cfg.AllowAtomicPublish, cfg.Duplicates)
	}
}

func TestAFullStreamRefusesWithStorageFullAndPingSaysSo(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	openLimited := func() *jsstore.Store {
		s, err := jsstore.Open(context.Background(), jsstore.Config{
			NATS:     natsbus.Config{URL: n.URL, ReconnectWait: 20 * time.Millisecond},
			MaxBytes: 1 << 20,
		}, testutil.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := openLimited()
	mustCreate(t, s, "alice", "bob")
	var err error
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping of an empty stream: %v", err)
	}
	msg := strings.Repeat("m", 80_000)
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("100 messages of 80 KB fit a stream of 1 MiB")
		}
		_, err = s.AppendMessage(context.Background(), &server.Envelope{Recipient: "bob", Sender: "alice", ID: fmt.Sprint(i), Message: []byte(msg)}, server.InboxLimits{})
		if err != nil {
			break
		}
	}
	if server.ErrorCode(err) != server.CodeStorageFull {
		t.Fatalf("append to a full stream: %v, want storage_full", err)
	}
	if full, _ := s.WriteFailures(); full == 0 {
		t.Fatal("the refusal was not counted")
	}
	// A fresh store asks JetStream: the other's answer is cached.
	other := openLimited()
	if err := other.Ping(context.Background()); server.ErrorCode(err) != server.CodeStorageFull || other.Writable() {
		t.Fatalf("Ping of a full stream = %v, want storage_full", err)
	}
}

func TestAKeyCheckpointOnlyMovesForwardAcrossReplicas(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := open(t, n, 0), open(t, n, 0)
	ctx := context.Background()
	if doc, err := a.KeyCheckpoint(ctx, "pid"); err != nil || doc != nil {
		t.Fatalf("no checkpoint yet: %q, %v", doc, err)
	}
	for i, c := range []struct {
		version uint64
		doc     string
	}{{2, "v2"}, {1, "v1"}, {3, "v3"}, {2, "v2 late"}} {
		s := []*jsstore.Store{a, b}[i%2]
		if err := s.SaveKeyCheckpoint(ctx, "pid", c.version, []byte(c.doc)); err != nil {
			t.Fatal(err)
		}
	}
	if doc, err := b.KeyCheckpoint(ctx, "pid"); err != nil || string(doc) != "v3" {
		t.Fatalf("checkpoint = %q, %v; want v3", doc, err)
	}
}

// jetStreamOf connects to n as another process would (another replica, or
// someone changing the store behind its back); the connection closes with
// the test.
func jetStreamOf(t *testing.T, n *testutil.NATS) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
