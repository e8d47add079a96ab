package sqlite

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kez.lat/chat/server"
)

// blockingSync replaces db's WAL sync with one that counts its calls and,
// while held, waits for the test: entered receives once per sync begun.
type blockingSync struct {
	entered chan struct{}
	release chan struct{}
	calls   atomic.Int64
	real    func() error
}

func blockSyncs(t *testing.T, db *DB) *blockingSync {
	t.Helper()
	b := &blockingSync{entered: make(chan struct{}, 64), release: make(chan struct{}, 64), real: db.syncWAL}
	// Set before any job is submitted: the job's way through the writer to
	// the syncer orders this write before the syncer's read.
	db.syncWAL = func() error {
		b.calls.Add(1)
		b.entered <- struct{}{}
		<-b.release
		return b.real()
	}
	t.Cleanup(func() {
		for range 64 {
			select {
			case b.release <- struct{}{}:
			default:
			}
		}
	})
	return b
}

func TestAWriteIsAnsweredAndReadOnlyAfterTheWALSync(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	syncs := blockSyncs(t, db)

	done := make(chan error, 1)
	go func() {
		_, err := db.AppendMessage(context.Background(), envelope("bob", "alice", "m1", "hello"), server.InboxLimits{})
		done <- err
	}()
	<-syncs.entered // committed, not yet synced
	select {
	case err := <-done:
		t.Fatalf("AppendMessage returned (%v) before the WAL was synced", err)
	default:
	}
	envs, err := db.Messages(context.Background(), "bob", 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(envs) != 0 {
		t.Fatalf("the inbox showed %d envelopes whose commit was not synced", len(envs))
	}
	if n := count(t, db, "SELECT count(*) FROM envelopes"); n != 1 {
		t.Fatalf("%d envelopes committed, want 1 (the gate, not the commit, hides it)", n)
	}

	syncs.release <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	envs, err = db.Messages(context.Background(), "bob", 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(envs) != 1 || envs[0].ID != "m1" {
		t.Fatalf("after the sync the inbox holds %v, want m1", envs)
	}
}

// The writer does not wait for the disk: it commits further batches while
// a sync is under way, and one sync then covers all of them.
func TestTheWriterCommitsWhileASyncRunsAndOneSyncCoversWhatItCommitted(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	syncs := blockSyncs(t, db)

	first := make(chan error, 1)
	go func() {
		_, err := db.AppendMessage(context.Background(), envelope("bob", "alice", "m0", "x"), server.InboxLimits{})
		first <- err
	}()
	<-syncs.entered
	commits := db.commits.Load()

	const n = 5
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		// One at a time, each in a batch of its own: each is committed
		// (the writer is free) though none can be answered yet.
		wg.Go(func() {
			_, errs[i] = db.AppendMessage(context.Background(), envelope("bob", "alice", "m"+string(rune('1'+i)), "x"), server.InboxLimits{})
		})
		want := commits + uint64(i) + 1
		waitFor(t, "the writer to commit while the sync is held", func() bool { return db.commits.Load() >= want })
	}
	if got := db.commits.Load() - commits; got != n {
		t.Fatalf("%d commits while a sync ran, want %d", got, n)
	}
	syncs.release <- struct{}{} // the first batch's sync
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	<-syncs.entered // one sync for the five
	syncs.release <- struct{}{}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	if got := syncs.calls.Load(); got != 2 {
		t.Fatalf("%d syncs, want 2: the first batch's, and one for the five committed during it", got)
	}
	envs, err := db.Messages(context.Background(), "bob", 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(envs); !equal(got, []uint64{1, 2, 3, 4, 5, 6}) {
		t.Fatalf("inbox seqs = %v, want 1..6", got)
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestAFailedWALSyncAnswersUnavailableAndStopsWritesUntilRestart(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	real := db.syncWAL
	failed := errors.New("EIO")
	db.syncWAL = func() error { return failed }

	_, err := db.AppendMessage(context.Background(), envelope("bob", "alice", "m1", "x"), server.InboxLimits{})
	wantCode(t, err, server.CodeUnavailable)
	_, err = db.AppendMessage(context.Background(), envelope("bob", "alice", "m2", "x"), server.InboxLimits{})
	wantCode(t, err, server.CodeUnavailable)
	if n := count(t, db, "SELECT count(*) FROM envelopes"); n != 1 {
		t.Fatalf("%d envelopes written, want 1: nothing after the failed sync", n)
	}
	if err := db.Ping(context.Background()); err == nil {
		t.Fatal("Ping passed after a failed WAL sync")
	}
	if _, io := db.WriteFailures(); io == 0 {
		t.Fatal("the failed sync was not counted as an I/O failure")
	}
	db.syncWAL = real // Close checkpoints through SQLite's own syncs
}

func TestDurableGateHidesFromTheOldestUnsyncedBatch(t *testing.T) {
	const none = math.MaxInt64
	type step struct {
		op    string // hold, release, drop
		batch uint64
		id    int64
		want  int64
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"nothing held", []step{{"release", 3, 0, none}}},
		{"one batch", []step{{"hold", 1, 10, 10}, {"release", 1, 0, none}}},
		{"later batches keep their hold", []step{
			{"hold", 1, 10, 10}, {"hold", 2, 15, 10}, {"release", 1, 0, 15}, {"release", 2, 0, none}}},
		{"ids reused after a delete", []step{
			{"hold", 1, 10, 10}, {"hold", 2, 8, 8}, {"release", 1, 0, 8}, {"release", 2, 0, none}}},
		{"a failed commit drops its own hold only", []step{
			{"hold", 1, 10, 10}, {"hold", 2, 15, 10}, {"drop", 2, 0, 10}, {"release", 1, 0, none}}},
		{"a release covers every batch up to it", []step{
			{"hold", 1, 10, 10}, {"hold", 2, 15, 10}, {"hold", 4, 20, 10}, {"release", 2, 0, 20}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newDurableGate()
			for i, s := range tc.steps {
				switch s.op {
				case "hold":
					g.hold(s.batch, s.id)
				case "release":
					g.release(s.batch)
				case "drop":
					g.drop(s.batch)
				}
				if got := g.limit(); got != s.want {
					t.Fatalf("step %d (%s %d): limit = %d, want %d", i, s.op, s.batch, got, s.want)
				}
			}
		})
	}
}
