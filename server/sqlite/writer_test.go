package sqlite

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server"
)

// holdWriter occupies the writer goroutine until the returned release is
// called, so that requests submitted meanwhile are taken as one batch.
func holdWriter(t *testing.T, db *DB) (release func()) {
	t.Helper()
	started, held := make(chan struct{}), make(chan struct{})
	go db.submit(context.Background(), func(*writer) error {
		close(started)
		<-held
		return nil
	})
	<-started
	var once sync.Once
	release = func() { once.Do(func() { close(held) }) }
	t.Cleanup(release)
	return release
}

// queue submits each request from its own goroutine, in order: each is in
// the writer's queue before the next is submitted. wait returns their
// errors once all are answered.
func queue(t *testing.T, db *DB, reqs ...func() error) (wait func() []error) {
	t.Helper()
	errs := make([]error, len(reqs))
	var wg sync.WaitGroup
	for i, req := range reqs {
		before := len(db.jobs)
		wg.Go(func() { errs[i] = req() })
		deadline := time.Now().Add(10 * time.Second)
		for len(db.jobs) == before {
			if time.Now().After(deadline) {
				t.Fatalf("request %d never reached the writer's queue", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return func() []error { wg.Wait(); return errs }
}

func appendReq(db *DB, e *server.Envelope, maxPending int) func() error {
	return func() error {
		_, err := db.AppendMessage(context.Background(), e, server.InboxLimits{MaxPending: maxPending})
		return err
	}
}

func TestGroupCommitFailsOnlyTheRequestsThatFail(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob", "carol")
	mustAppend(t, db, "bob", "alice", "m0", "first")

	release := holdWriter(t, db)
	ok1 := envelope("bob", "alice", "m1", "x")
	ok2 := envelope("carol", "alice", "m4", "x")
	var fresh bool
	wait := queue(t, db,
		appendReq(db, ok1, 2),
		appendReq(db, envelope("bob", "alice", "m0", "changed"), 2), // conflict
		appendReq(db, envelope("bob", "alice", "m2", "x"), 2),       // full: m0 and m1 pending
		appendReq(db, envelope("nobody", "alice", "m3", "x"), 2),    // unknown
		func() (err error) {
			fresh, err = db.UseOnce(context.Background(), []byte("d"), time.Now().Add(time.Hour), time.Now())
			return err
		},
		appendReq(db, ok2, 2),
	)
	commits := db.commits.Load()
	release()
	errs := wait()

	for i, code := range []string{"", server.CodeMessageIDConflict, server.CodeInboxFull, server.CodeUnknownHandle, "", ""} {
		if code == "" {
			if errs[i] != nil {
				t.Fatalf("request %d: %v", i, errs[i])
			}
			continue
		}
		wantCode(t, errs[i], code)
	}
	if ok1.Seq != 2 || ok2.Seq != 1 || !fresh {
		t.Fatalf("seqs %d, %d, fresh %v; want 2, 1, true", ok1.Seq, ok2.Seq, fresh)
	}
	if got := db.commits.Load() - commits; got != 2 {
		t.Fatalf("%d commits for the held request and the batch, want 2", got)
	}
	if n := count(t, db, "SELECT count(*) FROM envelopes"); n != 3 {
		t.Fatalf("%d envelopes stored, want 3", n)
	}
	if p := pending(t, db, "bob"); p != 2 {
		t.Fatalf("pending of bob = %d, want 2", p)
	}
}

func TestBrokenTransactionFailsItsRequestsAndTheRestOfTheBatchGoesOn(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")

	release := holdWriter(t, db)
	lost := envelope("bob", "alice", "lost", "x")
	kept := envelope("bob", "alice", "kept", "x")
	wait := queue(t, db,
		appendReq(db, lost, 10),
		func() error {
			return db.submit(context.Background(), func(w *writer) error {
				_, err := w.conn.ExecContext(context.Background(), "ROLLBACK")
				return err
			})
		},
		appendReq(db, kept, 10),
	)
	release()
	errs := wait()
	if errs[0] == nil || errs[1] == nil {
		t.Fatalf("requests of the rolled back transaction: %v, %v; want errors", errs[0], errs[1])
	}
	if server.ErrorCode(errs[0]) != server.CodeInternal {
		t.Fatalf("lost append: %v, want an internal error", errs[0])
	}
	if errs[2] != nil {
		t.Fatalf("request after the broken transaction: %v", errs[2])
	}
	envs, err := db.Messages(context.Background(), "bob", 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(envs) != 1 || envs[0].ID != "kept" || envs[0].Seq != 1 || kept.Seq != 1 {
		t.Fatalf("stored %v, want only kept with seq 1", seqs(envs))
	}
	if p := pending(t, db, "bob"); p != 1 {
		t.Fatalf("pending = %d, want 1", p)
	}
}

func TestRequestWhoseContextEndedWhileQueuedIsSkipped(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")

	release := holdWriter(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	wait := queue(t, db, func() error {
		_, err := db.AppendMessage(ctx, envelope("bob", "alice", "gone", "x"), server.InboxLimits{MaxPending: 10})
		return err
	})
	cancel()
	if err := wait()[0]; !errors.Is(err, context.Canceled) {
		t.Fatalf("AppendMessage = %v, want context.Canceled", err)
	}
	release()
	if seq := mustAppend(t, db, "bob", "alice", "next", "x"); seq != 1 {
		t.Fatalf("seq = %d, want 1: the cancelled request must not have run", seq)
	}
	if n := count(t, db, "SELECT count(*) FROM sent_ids WHERE msg_id = 'gone'"); n != 0 {
		t.Fatal("the cancelled request was stored")
	}
}

func TestRequestWithEndedContextIsRefusedAtOnce(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := db.AppendMessage(ctx, envelope("bob", "alice", "m", "x"), server.InboxLimits{MaxPending: 10}); !errors.Is(err, context.Canceled) {
		t.Fatalf("AppendMessage = %v, want context.Canceled", err)
	}
}

func TestCloseAnswersQueuedRequests(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	release := holdWriter(t, db)
	e := envelope("bob", "alice", "queued", "x")
	wait := queue(t, db, appendReq(db, e, 10))
	closed := make(chan error)
	go func() { closed <- db.Close() }()
	release()
	if err := wait()[0]; err != nil || e.Seq != 1 {
		t.Fatalf("queued append during Close = seq %d, %v; want it stored", e.Seq, err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// An append runs without a savepoint of its own: when it fails after its
// first write, its transaction is rolled back whole. The appends run in it
// fail with it (none is half stored), and the rest of the batch goes on.
func TestAppendThatFailsAfterWritingRollsBackItsTransaction(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob", "carol")
	// Make inserting carol's envelope fail, after her seq was assigned.
	err := db.submit(context.Background(), func(w *writer) error {
		_, err := w.conn.ExecContext(context.Background(), `CREATE TEMP TRIGGER fail_carol
			BEFORE INSERT ON main.envelopes WHEN NEW.recipient = 'carol'
			BEGIN SELECT RAISE(ABORT, 'injected failure'); END`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	release := holdWriter(t, db)
	lost := envelope("bob", "alice", "lost", "x")
	kept := envelope("bob", "alice", "kept", "x")
	wait := queue(t, db,
		appendReq(db, lost, 10),
		appendReq(db, envelope("carol", "alice", "fails", "x"), 10),
		appendReq(db, kept, 10),
	)
	release()
	errs := wait()
	for i, err := range errs[:2] {
		if err == nil || server.ErrorCode(err) != server.CodeInternal {
			t.Fatalf("append %d of the rolled back transaction: %v, want an internal error", i, err)
		}
	}
	if errs[2] != nil || kept.Seq != 1 {
		t.Fatalf("append after the rolled back transaction: seq %d, %v; want seq 1", kept.Seq, errs[2])
	}
	for h, want := range map[string]int{"bob": 1, "carol": 0} {
		if p := pending(t, db, h); p != want {
			t.Fatalf("pending of %s = %d, want %d", h, p, want)
		}
	}
	if n := count(t, db, "SELECT count(*) FROM sent_ids"); n != 1 {
		t.Fatalf("%d message ids stored, want only kept's", n)
	}
	if n := count(t, db, "SELECT last_seq FROM inboxes WHERE handle = 'carol'"); n != 0 {
		t.Fatalf("carol's last_seq = %d, want 0: the failed append's seq must be undone", n)
	}
}
