package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server"
)

// openTest opens a fresh database file in t's temporary directory, closed
// at the end of the test.
func openTest(t testing.TB) *DB {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "chat.db"))
}

func openAt(t testing.TB, path string) *DB {
	t.Helper()
	db, err := Open(context.Background(), path, nil)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return db
}

func testUser(handle string) *server.User {
	return &server.User{
		Handle:    handle,
		Server:    "example.test",
		PrimaryID: "pid-" + handle,
		Alg:       "ed25519",
		Key:       []byte("signing-key-of-" + handle),
		EncKey:    []byte("enc-key-of-" + handle),
		CreatedAt: time.Unix(1_700_000_000, 0),
	}
}

func mustCreate(t testing.TB, db *DB, handles ...string) {
	t.Helper()
	for _, h := range handles {
		if err := db.CreateUser(context.Background(), testUser(h)); err != nil {
			t.Fatalf("CreateUser(%s): %v", h, err)
		}
	}
}

func envelope(to, from, id, msg string) *server.Envelope {
	return &server.Envelope{Recipient: to, Sender: from, ID: id, Message: []byte(msg)}
}

// mustAppend appends and returns the seq given.
func mustAppend(t testing.TB, db *DB, to, from, id, msg string) uint64 {
	t.Helper()
	e := envelope(to, from, id, msg)
	dup, err := db.AppendMessage(context.Background(), e, server.InboxLimits{MaxPending: 100})
	if err != nil {
		t.Fatalf("AppendMessage(%s→%s %s): %v", from, to, id, err)
	}
	if dup {
		t.Fatalf("AppendMessage(%s→%s %s) reported a duplicate", from, to, id)
	}
	return e.Seq
}

func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	if got := server.ErrorCode(err); got != code {
		t.Fatalf("error code = %s (%v), want %s", got, err, code)
	}
}

// count runs a count query on the read pool.
func count(t testing.TB, db *DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.rdb.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func pending(t testing.TB, db *DB, handle string) int {
	t.Helper()
	return count(t, db, "SELECT pending FROM inboxes WHERE handle = ?", handle)
}

func seqs(envs []*server.Envelope) []uint64 {
	s := make([]uint64, len(envs))
	for i, e := range envs {
		s[i] = e.Seq
	}
	return s
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCreatedUserCanBeLookedUp(t *testing.T) {
	db := openTest(t)
	want := testUser("alice")
	if err := db.CreateUser(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	db.users = newUserCache(userCacheBytes) // read it from the file, not the cache
	for range 2 {                           // the second lookup is a cache hit
		got, err := db.UserByHandle(context.Background(), "alice")
		if err != nil {
			t.Fatal(err)
		}
		if got.Handle != want.Handle || got.Server != want.Server || got.PrimaryID != want.PrimaryID ||
			got.Alg != want.Alg || string(got.Key) != string(want.Key) || string(got.EncKey) != string(want.EncKey) ||
			!got.CreatedAt.Equal(want.CreatedAt) {
			t.Fatalf("UserByHandle = %+v, want %+v", got, want)
		}
		got.Key[0] ^= 0xff // callers own what they get
	}
}

func TestUnknownHandleLookupIsUnknownHandle(t *testing.T) {
	db := openTest(t)
	_, err := db.UserByHandle(context.Background(), "nobody")
	wantCode(t, err, server.CodeUnknownHandle)
}

func TestCreateUserRefusesTakenHandleOrPrimaryID(t *testing.T) {
	tests := []struct {
		name      string
		handle    string
		primaryID string
		code      string
	}{
		{"same handle", "alice", "pid-other", server.CodeHandleTaken},
		{"same primary_id", "alice2", "pid-alice", server.CodePrimaryIDTaken},
		{"both taken reports the handle", "alice", "pid-alice", server.CodeHandleTaken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTest(t)
			mustCreate(t, db, "alice")
			u := testUser(tt.handle)
			u.PrimaryID = tt.primaryID
			wantCode(t, db.CreateUser(context.Background(), u), tt.code)
			if n := count(t, db, "SELECT count(*) FROM users"); n != 1 {
				t.Fatalf("%d users stored, want 1", n)
			}
		})
	}
}

func TestUniqueViolationNamesTheColumn(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice")
	// Bypass the writer's check, as another process sharing the file could.
	err := db.submit(context.Background(), func(w *writer) error {
		_, err := w.conn.ExecContext(context.Background(), "INSERT INTO users (handle, primary_id, server, alg, key, enc_key, created_at) VALUES ('bob', 'pid-alice', '', '', x'', x'', 0)")
		return err
	})
	col, ok := uniqueViolation(err)
	if !ok || col != "users.primary_id" {
		t.Fatalf("uniqueViolation(%v) = %q, %v; want users.primary_id, true", err, col, ok)
	}
}

func TestConcurrentRegistrationsOfOneHandleHaveExactlyOneWinner(t *testing.T) {
	db := openTest(t)
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			u := testUser("alice")
			u.PrimaryID = fmt.Sprintf("pid-%d", i)
			<-start
			errs[i] = db.CreateUser(context.Background(), u)
		})
	}
	close(start)
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch server.ErrorCode(err) {
		case server.CodeInternal:
			if err != nil {
				t.Fatalf("CreateUser: %v", err)
			}
			won++
		case server.CodeHandleTaken:
		default:
			t.Fatalf("CreateUser: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d registrations succeeded, want exactly 1", won)
	}
}

func TestAppendNumbersEachInboxFromOne(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob", "carol")
	got := map[string][]uint64{}
	for i, to := range []string{"bob", "carol", "bob", "bob", "carol"} {
		got[to] = append(got[to], mustAppend(t, db, to, "alice", fmt.Sprintf("m%d", i), "hello"))
	}
	if !equal(got["bob"], []uint64{1, 2, 3}) || !equal(got["carol"], []uint64{1, 2}) {
		t.Fatalf("seqs = %v, want bob [1 2 3], carol [1 2]", got)
	}
}

func TestAppendSetsReceivedAtToNow(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	before := time.Now().Truncate(time.Second)
	e := envelope("bob", "alice", "m1", "hi")
	if _, err := db.AppendMessage(context.Background(), e, server.InboxLimits{MaxPending: 10}); err != nil {
		t.Fatal(err)
	}
	if e.ReceivedAt.Before(before) || e.ReceivedAt.After(time.Now()) {
		t.Fatalf("ReceivedAt = %v, want about now", e.ReceivedAt)
	}
	envs, err := db.Messages(context.Background(), "bob", 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(envs) != 1 || !envs[0].ReceivedAt.Equal(e.ReceivedAt) || envs[0].Sender != "alice" || envs[0].ID != "m1" || string(envs[0].Message) != "hi" {
		t.Fatalf("stored %+v, want the appended envelope", envs)
	}
}

func TestAppendRetryOfSameMessageAnswersOriginalSeqAndStoresOnce(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	mustAppend(t, db, "bob", "alice", "m0", "first")
	seq := mustAppend(t, db, "bob", "alice", "m1", "hello")
	for _, ackFirst := range []bool{false, true} {
		if ackFirst { // the key outlives the envelope
			if _, err := db.Ack(context.Background(), "bob", "dev", seq, []string{"dev"}); err != nil {
				t.Fatal(err)
			}
		}
		e := envelope("bob", "alice", "m1", "hello")
		dup, err := db.AppendMessage(context.Background(), e, server.InboxLimits{MaxPending: 100})
		if err != nil {
			t.Fatal(err)
		}
		if !dup || e.Seq != seq {
			t.Fatalf("retry (after ack: %v) = seq %d, duplicate %v; want seq %d, duplicate", ackFirst, e.Seq, dup, seq)
		}
	}
	if n := count(t, db, "SELECT count(*) FROM sent_ids"); n != 2 {
		t.Fatalf("%d message ids stored, want 2", n)
	}
	if next := mustAppend(t, db, "bob", "alice", "m2", "later"); next != seq+1 {
		t.Fatalf("next seq = %d, want %d: a retry must not use a seq", next, seq+1)
	}
}

func TestAppendSameIDWithDifferentMessageIsConflict(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	mustAppend(t, db, "bob", "alice", "m1", "hello")
	_, err := db.AppendMessage(context.Background(), envelope("bob", "alice", "m1", "changed"), server.InboxLimits{MaxPending: 100})
	wantCode(t, err, server.CodeMessageIDConflict)
	if p := pending(t, db, "bob"); p != 1 {
		t.Fatalf("pending = %d, want 1", p)
	}
}

func TestAppendToUnknownRecipientIsUnknownHandle(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice")
	_, err := db.AppendMessage(context.Background(), envelope("nobody", "alice", "m1", "hi"), server.InboxLimits{MaxPending: 100})
	wantCode(t, err, server.CodeUnknownHandle)
	if n := count(t, db, "SELECT count(*) FROM sent_ids"); n != 0 {
		t.Fatalf("a refused message left %d message ids", n)
	}
}

func TestFullInboxRefusesUntilAcked(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	const maxPending = 3
	for i := range maxPending {
		if _, err := db.AppendMessage(context.Background(), envelope("bob", "alice", fmt.Sprint(i), "x"), server.InboxLimits{MaxPending: maxPending}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := db.AppendMessage(context.Background(), envelope("bob", "alice", "over", "x"), server.InboxLimits{MaxPending: maxPending})
	wantCode(t, err, server.CodeInboxFull)
	if n, err := db.Ack(context.Background(), "bob", "dev", 1, []string{"dev"}); err != nil || n != 1 {
		t.Fatalf("Ack = %d, %v; want 1", n, err)
	}
	e := envelope("bob", "alice", "over", "x")
	if _, err := db.AppendMessage(context.Background(), e, server.InboxLimits{MaxPending: maxPending}); err != nil {
		t.Fatalf("after an ack: %v", err)
	}
	if e.Seq != maxPending+1 {
		t.Fatalf("seq = %d, want %d", e.Seq, maxPending+1)
	}
}

func TestAnInboxRefusesPastItsBytesAndAcksAndExpiryFreeThem(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	limits := server.InboxLimits{MaxPendingBytes: 250}
	msg := strings.Repeat("m", 100)
	for i := range 2 {
		if _, err := db.AppendMessage(context.Background(), envelope("bob", "alice", fmt.Sprint(i), msg), limits); err != nil {
			t.Fatal(err)
		}
	}
	_, err := db.AppendMessage(context.Background(), envelope("bob", "alice", "over", msg), limits)
	wantCode(t, err, server.CodeInboxFull)
	if b := count(t, db, "SELECT pending_bytes FROM inboxes WHERE handle = 'bob'"); b != 200 {
		t.Fatalf("pending_bytes = %d, want 200", b)
	}
	if _, err := db.AppendMessage(context.Background(), envelope("bob", "alice", "small", "s"), limits); err != nil {
		t.Fatalf("a message that fits: %v", err)
	}
	if n, err := db.Ack(context.Background(), "bob", "dev", 1, []string{"dev"}); err != nil || n != 1 {
		t.Fatalf("Ack = %d, %v; want 1", n, err)
	}
	if b := count(t, db, "SELECT pending_bytes FROM inboxes WHERE handle = 'bob'"); b != 101 {
		t.Fatalf("pending_bytes = %d after acking one, want 101", b)
	}
	if _, err := db.AppendMessage(context.Background(), envelope("bob", "alice", "over", msg), limits); err != nil {
		t.Fatalf("after an ack: %v", err)
	}
	if _, err := db.Prune(context.Background(), time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if b := count(t, db, "SELECT pending_bytes FROM inboxes WHERE handle = 'bob'"); b != 0 {
		t.Fatalf("pending_bytes = %d after expiring everything, want 0", b)
	}
}

func TestAckDeletesUpToSeqAndSeqsAreNeverReused(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	for i := range 5 {
		mustAppend(t, db, "bob", "alice", fmt.Sprint(i), "x")
	}
	n, err := db.Ack(context.Background(), "bob", "dev", 3, []string{"dev"})
	if err != nil || n != 3 {
		t.Fatalf("Ack(3) = %d, %v; want 3", n, err)
	}
	if n, err := db.Ack(context.Background(), "bob", "dev", 3, []string{"dev"}); err != nil || n != 0 {
		t.Fatalf("repeated Ack(3) = %d, %v; want 0", n, err)
	}
	if n, err := db.Ack(context.Background(), "bob", "dev", ^uint64(0), []string{"dev"}); err != nil || n != 2 {
		t.Fatalf("Ack(max) = %d, %v; want 2", n, err)
	}
	if p := pending(t, db, "bob"); p != 0 {
		t.Fatalf("pending = %d after acking everything", p)
	}
	if seq := mustAppend(t, db, "bob", "alice", "after", "x"); seq != 6 {
		t.Fatalf("seq after acking 1..5 = %d, want 6", seq)
	}
}

func TestMessagesPagesBySinceAndLimit(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob", "carol")
	for i := range 10 {
		mustAppend(t, db, "bob", "alice", fmt.Sprint(i), "x")
	}
	mustAppend(t, db, "carol", "alice", "c", "x")
	tests := []struct {
		name  string
		since uint64
		limit int
		want  []uint64
	}{
		{"from the start", 0, 3, []uint64{1, 2, 3}},
		{"after a cursor", 3, 3, []uint64{4, 5, 6}},
		{"last partial page", 8, 3, []uint64{9, 10}},
		{"past the end", 10, 3, []uint64{}},
		{"huge cursor", ^uint64(0), 3, []uint64{}},
		{"zero limit means one", 0, 0, []uint64{1}},
		{"negative limit means one", 4, -5, []uint64{5}},
		{"large limit is clamped", 0, 1 << 30, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			envs, err := db.Messages(context.Background(), "bob", tt.since, tt.limit, 0)
			if err != nil {
				t.Fatal(err)
			}
			if envs == nil {
				t.Fatal("Messages returned nil, want an empty slice")
			}
			if got := seqs(envs); !equal(got, tt.want) {
				t.Fatalf("seqs = %v, want %v", got, tt.want)
			}
			for _, e := range envs {
				if e.Recipient != "bob" {
					t.Fatalf("envelope for %q in bob's inbox", e.Recipient)
				}
			}
		})
	}
}

func TestMessagesStopOnceTheirBytesReachTheBound(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	for i := range 10 {
		mustAppend(t, db, "bob", "alice", fmt.Sprint(i), strings.Repeat("m", 100))
	}
	for _, tt := range []struct {
		maxBytes int
		want     int
	}{{0, 10}, {1, 1}, {100, 1}, {101, 2}, {250, 3}, {300, 3}, {1000, 10}, {5000, 10}} {
		envs, err := db.Messages(context.Background(), "bob", 0, 100, tt.maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(envs) != tt.want {
			t.Errorf("maxBytes %d: %d envelopes, want %d", tt.maxBytes, len(envs), tt.want)
		}
	}
}

func TestMessagesLimitIsClampedToAThousand(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 1001 {
		wg.Go(func() {
			if _, err := db.AppendMessage(ctx, envelope("bob", "alice", fmt.Sprint(i), "x"), server.InboxLimits{}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	envs, err := db.Messages(ctx, "bob", 0, 5000, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(envs) != maxPage {
		t.Fatalf("got %d envelopes, want %d", len(envs), maxPage)
	}
}

func TestUseOnceDetectsReplayUntilExpiry(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	use := func(digest string, expires time.Time) bool {
		t.Helper()
		fresh, err := db.UseOnce(ctx, []byte(digest), expires, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return fresh
	}
	later := time.Now().Add(time.Minute)
	if !use("a", later) {
		t.Fatal("first use of a digest reported as a replay")
	}
	if use("a", later) {
		t.Fatal("second use of a digest not reported as a replay")
	}
	if !use("b", later) {
		t.Fatal("another digest reported as a replay")
	}
	past := time.Now().Add(-2 * time.Second)
	if !use("c", past) || !use("c", later) {
		t.Fatal("an expired digest must be usable again")
	}
	if use("c", later) {
		t.Fatal("a digest recorded again after expiry must count as used")
	}
}

// A writer that runs the request after its digest's expiry (it stalled
// across the window's edge) still refuses the replay: the expiry is
// compared with the time the request was checked, not the writer's.
func TestUseOnceRefusesAReplayTheWriterRunsAfterTheExpiry(t *testing.T) {
	db := openTest(t)
	checked := time.Now()
	expires := checked.Add(2 * time.Second)
	if fresh, err := db.UseOnce(context.Background(), []byte("ack"), expires, checked); err != nil || !fresh {
		t.Fatalf("first use: %v %v", fresh, err)
	}
	db.w.now = func() time.Time { return expires.Add(time.Minute) } // the writer runs late
	if fresh, err := db.UseOnce(context.Background(), []byte("ack"), expires, checked.Add(time.Second)); err != nil || fresh {
		t.Fatalf("a replay checked within the window, written after it: fresh %v, %v; want refused", fresh, err)
	}
}

func TestPruneRemovesOldEnvelopesAndFixesPending(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	mustCreate(t, db, "alice", "bob", "carol")
	for i := range 5 {
		mustAppend(t, db, "bob", "alice", fmt.Sprint("b", i), "x")
	}
	for i := range 3 {
		mustAppend(t, db, "carol", "alice", fmt.Sprint("c", i), "x")
	}
	if _, err := db.UseOnce(ctx, []byte("old"), time.Now().Add(-time.Hour), time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := db.UseOnce(ctx, []byte("live"), time.Now().Add(time.Hour), time.Now()); err != nil {
		t.Fatal(err)
	}

	// Nothing is old yet.
	now := time.Now()
	res, err := db.Prune(ctx, now, now.Add(-time.Hour))
	if err != nil || res.Envelopes != 0 {
		t.Fatalf("Prune = %+v, %v; want nothing pruned", res, err)
	}
	if n := count(t, db, "SELECT count(*) FROM used_auth"); n != 1 {
		t.Fatalf("%d request digests left, want only the live one", n)
	}

	// Everything is old: envelopes and, 16 minutes on, their message ids.
	later := now.Add(idempotencyWindow + time.Minute)
	res, err = db.Prune(ctx, later, later)
	if err != nil || res.Envelopes != 8 {
		t.Fatalf("Prune = %+v, %v; want 8 envelopes", res, err)
	}
	for _, h := range []string{"bob", "carol"} {
		if p := pending(t, db, h); p != 0 {
			t.Fatalf("pending of %s = %d after pruning, want 0", h, p)
		}
	}
	if n := count(t, db, "SELECT count(*) FROM sent_ids"); n != 0 {
		t.Fatalf("%d message ids left, want 0", n)
	}
	// With its id forgotten, a retry is a new message with a new seq.
	if seq := mustAppend(t, db, "bob", "alice", "b0", "x"); seq != 6 {
		t.Fatalf("seq = %d, want 6", seq)
	}
}

func TestPruneWorksInChunks(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	mustCreate(t, db, "alice", "bob", "carol")
	const n = pruneChunk*2 + 7
	var wg sync.WaitGroup
	for i := range n {
		to := []string{"bob", "carol"}[i%2]
		wg.Go(func() {
			if _, err := db.AppendMessage(ctx, envelope(to, "alice", fmt.Sprint(i), "x"), server.InboxLimits{}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	later := time.Now().Add(time.Hour)
	res, err := db.Prune(ctx, later, later)
	if err != nil || res.Envelopes != n {
		t.Fatalf("Prune = %+v, %v; want %d envelopes", res, err, n)
	}
	if p := pending(t, db, "bob") + pending(t, db, "carol"); p != 0 {
		t.Fatalf("pending = %d after pruning everything", p)
	}
	if n := count(t, db, "SELECT count(*) FROM sent_ids"); n != 0 {
		t.Fatalf("%d message ids left after pruning everything", n)
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chat.db")
	ctx := context.Background()
	db, err := Open(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, db, "alice", "bob")
	for i := range 4 {
		mustAppend(t, db, "bob", "alice", fmt.Sprint(i), fmt.Sprint("message ", i))
	}
	if _, err := db.Ack(ctx, "bob", "dev", 1, []string{"dev"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.UseOnce(ctx, []byte("sig"), time.Now().Add(time.Hour), time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() != 0 {
		t.Fatalf("WAL holds %d bytes after Close, want it checkpointed", fi.Size())
	}
	if _, err := db.AppendMessage(ctx, envelope("bob", "alice", "late", "x"), server.InboxLimits{MaxPending: 10}); !errors.Is(err, ErrClosed) {
		t.Fatalf("AppendMessage after Close = %v, want ErrClosed", err)
	}
	if err := db.Ping(ctx); err == nil {
		t.Fatal("Ping after Close succeeded")
	}

	db = openAt(t, path)
	if err := db.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.UserByHandle(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	envs, err := db.Messages(ctx, "bob", 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(envs); !equal(got, []uint64{2, 3, 4}) || string(envs[0].Message) != "message 1" {
		t.Fatalf("after reopening: seqs %v, want [2 3 4]", got)
	}
	if p := pending(t, db, "bob"); p != 3 {
		t.Fatalf("pending = %d, want 3", p)
	}
	if fresh, err := db.UseOnce(ctx, []byte("sig"), time.Now().Add(time.Hour), time.Now()); err != nil || fresh {
		t.Fatalf("replayed digest after reopening: fresh=%v, %v", fresh, err)
	}
	e := envelope("bob", "alice", "1", "message 1")
	if dup, err := db.AppendMessage(ctx, e, server.InboxLimits{MaxPending: 10}); err != nil || !dup || e.Seq != 2 {
		t.Fatalf("retry after reopening = seq %d, dup %v, %v; want seq 2, dup", e.Seq, dup, err)
	}
	if seq := mustAppend(t, db, "bob", "alice", "new", "x"); seq != 5 {
		t.Fatalf("seq after reopening = %d, want 5", seq)
	}
}

func TestConcurrentAppendsGiveEachInboxAGapFreeSequence(t *testing.T) {
	db := openTest(t)
	recipients := []string{"r0", "r1", "r2", "r3", "r4"}
	mustCreate(t, db, append([]string{"alice"}, recipients...)...)
	const goroutines, each = 50, 40
	type got struct {
		to  string
		seq uint64
	}
	results := make(chan got, goroutines*each)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				to := recipients[(g+i)%len(recipients)]
				e := envelope(to, "alice", fmt.Sprintf("%d-%d", g, i), "x")
				if _, err := db.AppendMessage(context.Background(), e, server.InboxLimits{}); err != nil {
					t.Error(err)
					return
				}
				results <- got{to, e.Seq}
			}
		})
	}
	wg.Wait()
	close(results)
	seen := map[string]map[uint64]bool{}
	for r := range results {
		if seen[r.to] == nil {
			seen[r.to] = map[uint64]bool{}
		}
		if seen[r.to][r.seq] {
			t.Fatalf("seq %d given twice in %s", r.seq, r.to)
		}
		seen[r.to][r.seq] = true
	}
	for _, to := range recipients {
		n := len(seen[to])
		for s := 1; s <= n; s++ {
			if !seen[to][uint64(s)] {
				t.Fatalf("%s: seq %d missing from 1..%d", to, s, n)
			}
		}
		envs, err := db.Messages(context.Background(), to, 0, maxPage, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(envs) != n || pending(t, db, to) != n {
			t.Fatalf("%s: %d stored, pending %d, want %d", to, len(envs), pending(t, db, to), n)
		}
	}
	if c := db.commits.Load(); c >= goroutines*each {
		t.Logf("no group commit happened: %d commits for %d appends", c, goroutines*each)
	}
}

// setClock makes the writer read its batch times from now, from the next
// batch on.
func setClock(t *testing.T, db *DB, now time.Time) {
	t.Helper()
	if err := db.submit(context.Background(), func(w *writer) error {
		w.now = func() time.Time { return now }
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestPruneKeepsMessageIDsUntilTheyExpireEvenIfTheClockStepsBack(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	mustCreate(t, db, "alice", "bob")
	t0 := time.Unix(1_800_000_000, 0)
	for _, m := range []struct {
		id string
		at time.Time
	}{
		{"m1", t0}, {"m2", t0},
		{"m3", t0.Add(100 * time.Second)},
		{"m4", t0.Add(-50 * time.Second)}, // the clock stepped back
		{"m5", t0.Add(200 * time.Second)},
	} {
		setClock(t, db, m.at)
		mustAppend(t, db, "bob", "alice", m.id, "x")
	}
	// Keys created before t0+50s are past the idempotency window.
	now := t0.Add(50*time.Second + idempotencyWindow)
	if _, err := db.Prune(ctx, now, t0.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	rows, err := db.rdb.QueryContext(ctx, "SELECT msg_id FROM sent_ids ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		left = append(left, id)
	}
	rows.Close()
	if fmt.Sprint(left) != "[m3 m5]" {
		t.Fatalf("message ids left %v, want [m3 m5]", left)
	}
	if n := count(t, db, "SELECT count(*) FROM envelopes"); n != 5 {
		t.Fatalf("%d envelopes left, want all 5", n)
	}
	e := envelope("bob", "alice", "m3", "x")
	if dup, err := db.AppendMessage(ctx, e, server.InboxLimits{MaxPending: 10}); err != nil || !dup || e.Seq != 3 {
		t.Fatalf("retry of m3 = seq %d, dup %v, %v; want the original seq 3", e.Seq, dup, err)
	}
}

func TestAFullDatabaseRefusesWithStorageFullAndPingFollowsTheWritePath(t *testing.T) {
	db := openTest(t)
	if err := db.LimitSize(context.Background(), 1<<20); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, db, "alice", "bob")
	msg := strings.Repeat("m", 80_000)
	var err error
	for i := 0; err == nil; i++ {
		if i == 100 {
			t.Fatal("100 messages of 80 KB fit under a 1 MiB limit")
		}
		_, err = db.AppendMessage(context.Background(), envelope("bob", "alice", fmt.Sprint(i), msg), server.InboxLimits{})
	}
	wantCode(t, err, server.CodeStorageFull)
	if full, _ := db.WriteFailures(); full == 0 {
		t.Fatal("the refusal was not counted")
	}
	if err := db.Ping(context.Background()); server.ErrorCode(err) != server.CodeStorageFull || db.Writable() {
		t.Fatalf("Ping with the database full = %v (writable %v), want storage_full", err, db.Writable())
	}
	// Acknowledging frees pages; the next probe (after probeEvery) passes.
	if _, err := db.Ack(context.Background(), "bob", "dev", 1<<40, []string{"dev"}); err != nil {
		t.Fatalf("acknowledging with the database full: %v", err)
	}
	db.health.probeMu.Lock()
	db.health.probedAt = time.Time{} // as if probeEvery had passed
	db.health.probeMu.Unlock()
	if err := db.Ping(context.Background()); err != nil || !db.Writable() {
		t.Fatalf("Ping once room returned = %v (writable %v)", err, db.Writable())
	}
	if _, err := db.AppendMessage(context.Background(), envelope("bob", "alice", "after", msg), server.InboxLimits{}); err != nil {
		t.Fatalf("a message once room returned: %v", err)
	}
}

func TestAKeyCheckpointOnlyMovesForward(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	if doc, err := db.KeyCheckpoint(ctx, "pid"); err != nil || doc != nil {
		t.Fatalf("no checkpoint yet: %q, %v", doc, err)
	}
	for _, c := range []struct {
		version uint64
		doc     string
	}{{2, "v2"}, {1, "v1"}, {2, "v2 again"}, {3, "v3"}, {2, "v2 late"}} {
		if err := db.SaveKeyCheckpoint(ctx, "pid", c.version, []byte(c.doc)); err != nil {
			t.Fatal(err)
		}
	}
	if doc, err := db.KeyCheckpoint(ctx, "pid"); err != nil || string(doc) != "v3" {
		t.Fatalf("checkpoint = %q, %v; want v3", doc, err)
	}
}
