package backup_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/backup"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/testutil"
)

// gatedStore holds every read of a stream snapshot until open is closed, so
// that a restore stays in progress while the test looks.
type gatedStore struct {
	backup.ObjectStore
	open chan struct{}
}

func (g gatedStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasSuffix(key, ".snapshot") {
		select {
		case <-g.open:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.ObjectStore.Get(ctx, key)
}

// messageLog keeps the messages logged through it.
type messageLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *messageLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *messageLog) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}
func (l *messageLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *messageLog) WithGroup(string) slog.Handler      { return l }
func (l *messageLog) has(prefix string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.msgs {
		if strings.HasPrefix(m, prefix) {
			return true
		}
	}
	return false
}

func restoreFrom(store backup.ObjectStore, dst backup.JetStreamTarget, id string) (*backup.RestoreResult, error) {
	return backup.Restore(context.Background(), dst, backup.RestoreOptions{Store: store,
		Layout: backup.Layout{Prefix: "kez/prod"}, ID: id, Part: backup.PartServer, Log: dst.Log})
}

type restoreOutcome struct {
	holder string
	res    *backup.RestoreResult
	err    error
}

// checkOneRestored checks that exactly one of outcomes restored and the
// others skipped on its marker, and returns the one.
func checkOneRestored(t *testing.T, outcomes []restoreOutcome) string {
	t.Helper()
	var restorer string
	for _, o := range outcomes {
		switch {
		case o.err != nil:
			t.Errorf("restore %s: %v", o.holder, o.err)
		case !o.res.Skipped && restorer != "":
			t.Errorf("both %s and %s restored", restorer, o.holder)
		case !o.res.Skipped:
			restorer = o.holder
		case !strings.Contains(o.res.Existing, "backup js-1 was restored by"):
			t.Errorf("restore %s skipped on %q, want the marker", o.holder, o.res.Existing)
		}
	}
	if restorer == "" && !t.Failed() {
		t.Errorf("no restore restored: %+v", outcomes)
	}
	return restorer
}

func TestConcurrentJetStreamRestoresRestoreOnceAndTheOthersSkip(t *testing.T) {
	b := newBucket(t)
	seed := seedJetStream(t, b, "js-1")
	dst := testutil.StartNATS(t, testutil.NATSOptions{})

	start := make(chan struct{})
	outcomes := make([]restoreOutcome, 3)
	var wg sync.WaitGroup
	for i := range outcomes {
		holder := fmt.Sprintf("pod-%d", i)
		target := backup.JetStreamTarget{NC: connect(t, dst), TempDir: t.TempDir(), Log: testLog(t),
			Lock: jsstore.RestoreLockOptions{Holder: holder, Poll: 20 * time.Millisecond, Wait: time.Minute}}
		wg.Go(func() {
			<-start
			res, err := restoreFrom(b.store, target, "js-1")
			outcomes[i] = restoreOutcome{holder, res, err}
		})
	}
	close(start)
	wg.Wait()
	restorer := checkOneRestored(t, outcomes)
	checkJetStreamRestored(t, seed, dst)
	rec, err := jsstore.ReadRestoreRecord(context.Background(), connect(t, dst))
	if err != nil || rec == nil || rec.Phase != jsstore.RestoreRestored || rec.Holder != restorer || rec.BackupID != "js-1" {
		t.Errorf("restore record %+v, %v: want restored by %s", rec, err, restorer)
	}
}

func TestJetStreamRestoresWaitForTheOneInProgressAndSkipOnItsMarker(t *testing.T) {
	b := newBucket(t)
	seed := seedJetStream(t, b, "js-1")
	dst := testutil.StartNATS(t, testutil.NATSOptions{})
	gate := gatedStore{ObjectStore: b.store, open: make(chan struct{})}
	nc := connect(t, dst)
	target := func(holder string, log *messageLog) backup.JetStreamTarget {
		return backup.JetStreamTarget{NC: connect(t, dst), TempDir: t.TempDir(), Log: slog.New(log),
			Lock: jsstore.RestoreLockOptions{Holder: holder, Poll: 20 * time.Millisecond, Wait: time.Minute}}
	}

	outcomes := make([]restoreOutcome, 3)
	logs := make([]*messageLog, 3)
	var wg sync.WaitGroup
	run := func(i int) {
		holder := fmt.Sprintf("pod-%d", i)
		logs[i] = &messageLog{}
		tg := target(holder, logs[i])
		wg.Go(func() {
			res, err := restoreFrom(gate, tg, "js-1")
			outcomes[i] = restoreOutcome{holder, res, err}
		})
	}
	run(0)
	testutil.WaitFor(t, 30*time.Second, "pod-0 holds the restore lock", func() error {
		rec, err := jsstore.ReadRestoreRecord(context.Background(), nc)
		if err != nil || rec == nil || rec.Holder != "pod-0" {
			return fmt.Errorf("record %+v, %v", rec, err)
		}
		return nil
	})
	run(1)
	run(2)
	testutil.WaitFor(t, 30*time.Second, "pod-1 and pod-2 wait", func() error {
		for i := 1; i <= 2; i++ {
			if !logs[i].has("waiting for another restore") {
				return fmt.Errorf("pod-%d is not waiting", i)
			}
		}
		return nil
	})
	// While pod-0 has not restored, nothing is in place.
	if exists, _, err := jsstore.StreamMessages(context.Background(), nc, jsstore.StreamName); err != nil || exists {
		t.Fatalf("stream %s exists before the restore got its data (%v)", jsstore.StreamName, err)
	}
	close(gate.open)
	wg.Wait()
	if restorer := checkOneRestored(t, outcomes); restorer != "pod-0" {
		t.Errorf("%s restored, want pod-0, which held the lock", restorer)
	}
	checkJetStreamRestored(t, seed, dst)
}

// deadHolder takes the restore lock for js-1 with a one-second lease on its
// own connection, lets act do its part of a restore, and dies: its
// connection closes and the record stays as it left it.
func deadHolder(t *testing.T, dst *testutil.NATS, act func(*jsstore.RestoreLease)) {
	t.Helper()
	nc := connect(t, dst)
	lease, done, err := jsstore.AcquireRestore(context.Background(), nc, "js-1", 1,
		jsstore.RestoreLockOptions{Holder: "dead-pod", Lease: time.Second, Wait: time.Minute})
	if err != nil || done != nil {
		t.Fatalf("taking the lock for the holder that dies: %v, %+v", err, done)
	}
	act(lease)
	nc.Close()
}

func TestJetStreamRestoreTakesOverFromAHolderThatDiedPartWay(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	seed := seedJetStream(t, b, "js-1")
	dst := testutil.StartNATS(t, testutil.NATSOptions{})
	deadHolder(t, dst, func(lease *jsstore.RestoreLease) {
		if err := lease.Restoring(ctx); err != nil {
			t.Fatal(err)
		}
		// It restored the envelopes, not the buckets, before it died.
		var meta jsstore.StreamSnapshotMeta
		if err := json.Unmarshal(readFile(t, b.ObjectPath("kez/prod/js-1/server/"+jsstore.StreamName+".json")), &meta); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(b.ObjectPath("kez/prod/js-1/server/" + jsstore.StreamName + ".snapshot"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := jsstore.RestoreStream(ctx, connect(t, dst), jsstore.StreamName, &meta, f); err != nil {
			t.Fatal(err)
		}
	})
	nc := connect(t, dst)
	if exists, msgs, err := jsstore.StreamMessages(ctx, nc, jsstore.StreamName); err != nil || !exists || msgs == 0 {
		t.Fatalf("the dead holder's half store: %v %d %v", exists, msgs, err)
	}

	res, err := restoreFrom(b.store, backup.JetStreamTarget{NC: nc, TempDir: t.TempDir(), Log: testLog(t),
		Lock: jsstore.RestoreLockOptions{Holder: "pod-1", Poll: 20 * time.Millisecond, Wait: time.Minute}}, "js-1")
	if err != nil || res.Skipped {
		t.Fatalf("restore after a holder died part-way: %+v, %v", res, err)
	}
	checkJetStreamRestored(t, seed, dst)
	if rec, err := jsstore.ReadRestoreRecord(ctx, nc); err != nil || rec.Phase != jsstore.RestoreRestored || rec.Holder != "pod-1" {
		t.Errorf("restore record %+v, %v", rec, err)
	}
}

func TestJetStreamRestoreTakingOverAHolderThatDiedCheckingLeavesLiveDataAlone(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	seedJetStream(t, b, "js-1")
	dst := testutil.StartNATS(t, testutil.NATSOptions{})
	live := openJetStream(t, dst)
	if err := live.CreateUser(ctx, user("dave")); err != nil {
		t.Fatal(err)
	}
	if _, err := live.AppendMessage(ctx, envelope("dave", "dave", "live"), server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	deadHolder(t, dst, func(*jsstore.RestoreLease) {})

	nc := connect(t, dst)
	res, err := restoreFrom(b.store, backup.JetStreamTarget{NC: nc, TempDir: t.TempDir(), Log: testLog(t),
		Lock: jsstore.RestoreLockOptions{Holder: "pod-1", Poll: 20 * time.Millisecond, Wait: time.Minute}}, "js-1")
	if err != nil || !res.Skipped || !strings.Contains(res.Existing, jsstore.StreamName) {
		t.Fatalf("restore onto live data after a holder died checking: %+v, %v", res, err)
	}
	if msgs, err := live.Messages(ctx, "dave", 0, 100, 0); err != nil || len(msgs) != 1 || msgs[0].ID != "live" {
		t.Errorf("dave's messages after the restore skipped: %+v, %v", msgs, err)
	}
	if _, err := live.UserByHandle(ctx, "alice"); err == nil {
		t.Errorf("alice, from the backup, is in the live store")
	}
	rec, err := jsstore.ReadRestoreRecord(ctx, nc)
	if err != nil || rec.Phase != jsstore.RestoreFoundData {
		t.Errorf("restore record %+v, %v: want found-data", rec, err)
	}
	// Later starts skip on that marker, without reading the bucket: this
	// backup id is not in it.
	res, err = restoreFrom(b.store, backup.JetStreamTarget{NC: nc, TempDir: t.TempDir()}, "not-in-the-bucket")
	if err != nil || !res.Skipped || !strings.Contains(res.Existing, "found data") {
		t.Errorf("restore after the marker: %+v, %v", res, err)
	}
}

func TestJetStreamRestoreAfterTheMarkerSkipsWithoutReadingTheBucket(t *testing.T) {
	b := newBucket(t)
	seedJetStream(t, b, "js-1")
	dst := testutil.StartNATS(t, testutil.NATSOptions{})
	nc := connect(t, dst)
	if _, err := restoreFrom(b.store, backup.JetStreamTarget{NC: nc, TempDir: t.TempDir()}, "js-1"); err != nil {
		t.Fatal(err)
	}
	// A gate never opened and an id the bucket lacks: only the marker can
	// answer.
	res, err := restoreFrom(gatedStore{ObjectStore: b.store, open: make(chan struct{})},
		backup.JetStreamTarget{NC: nc, TempDir: t.TempDir()}, "not-in-the-bucket")
	if err != nil || !res.Skipped || !strings.Contains(res.Existing, "backup js-1 was restored") {
		t.Errorf("restore after the marker: %+v, %v", res, err)
	}
}
