package jsstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The restore lock: every chat server replica runs `kezchat restore` as an
// init container, so several restores of one JetStream start at once. The
// key "restore" of the bucket kez_chat_restore says who restores and how
// far it got; it is taken by an atomic create, kept by updates at its
// revision while the restore runs, and ends as a marker that later starts
// read and skip on. The bucket has no TTL (the marker must stay): a holder
// that stops renewing is noticed by a waiter seeing the revision unchanged
// for the record's lease, measured on the waiter's own clock, so clocks
// need not agree. The bucket is not backed up.
const (
	BucketRestore = "kez_chat_restore"
	restoreKey    = "restore"
)

// Phases of a restore record.
const (
	// RestoreChecking: the holder checks the streams and downloads the
	// backup; it has changed nothing.
	RestoreChecking = "checking"
	// RestoreRestoring: the holder deletes and restores streams; a holder
	// that dies here leaves half a store, which the next one deletes.
	RestoreRestoring = "restoring"
	// RestoreRestored: the backup is restored (the marker).
	RestoreRestored = "restored"
	// RestoreFoundData: the streams held data before any restore, which a
	// restore never overwrites (a marker too).
	RestoreFoundData = "found-data"
)

// RestoreRecord is the value of the restore key.
type RestoreRecord struct {
	Phase    string `json:"phase"`
	BackupID string `json:"backupId"`
	Holder   string `json:"holder"`
	// Lease is how long the record may go unchanged before a waiter takes
	// it over; Released says the holder gave up, and it may be taken now.
	Lease    time.Duration `json:"lease,omitempty"`
	Released bool          `json:"released,omitempty"`
	At       time.Time     `json:"at"`
	// Note says what held data, for RestoreFoundData.
	Note string `json:"note,omitempty"`
}

// Done reports whether the record is a marker: the store needs no restore.
func (r *RestoreRecord) Done() bool {
	return r.Phase == RestoreRestored || r.Phase == RestoreFoundData
}

func (r *RestoreRecord) String() string {
	switch r.Phase {
	case RestoreRestored:
		return fmt.Sprintf("backup %s was restored by %s at %s", r.BackupID, r.Holder, r.At.UTC().Format(time.RFC3339))
	case RestoreFoundData:
		return fmt.Sprintf("the restore of backup %s by %s found data at %s (%s)", r.BackupID, r.Holder, r.At.UTC().Format(time.RFC3339), r.Note)
	}
	return fmt.Sprintf("%s backup %s by %s since %s", r.Phase, r.BackupID, r.Holder, r.At.UTC().Format(time.RFC3339))
}

// RestoreLockOptions tune the lock; the zero value is production's.
type RestoreLockOptions struct {
	// Lease a holder keeps by renewing at a third of it (default 30s).
	Lease time.Duration
	// Poll is how often a waiter reads the record (default 1s).
	Poll time.Duration
	// Wait bounds the wait for another holder (default 30m).
	Wait time.Duration
	// Holder names this restore in the record (default host name and a
	// random suffix).
	Holder string
	Log    *slog.Logger
}

func (o *RestoreLockOptions) defaults() {
	if o.Lease <= 0 {
		o.Lease = 30 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if o.Wait <= 0 {
		o.Wait = 30 * time.Minute
	}
	if o.Holder == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		o.Holder = host + "-" + hex.EncodeToString(b[:])
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// ReadRestoreRecord returns the restore record, nil when there is none (nor
// a bucket: it is not created here).
func ReadRestoreRecord(ctx context.Context, nc *nats.Conn) (*RestoreRecord, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, BucketRestore)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading bucket %s: %w", BucketRestore, err)
	}
	rec, _, err := readRecord(ctx, kv)
	return rec, err
}

func readRecord(ctx context.Context, kv jetstream.KeyValue) (*RestoreRecord, uint64, error) {
	e, err := kv.Get(ctx, restoreKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("reading the restore record: %w", err)
	}
	var rec RestoreRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, 0, fmt.Errorf("reading the restore record %q: %w", e.Value(), err)
	}
	return &rec, e.Revision(), nil
}

// RestoreLease is a held restore lock. Its context ends when the lease is
// lost (taken over after a pause longer than the lease, or NATS unreachable
// for that long): nothing may then be changed in the streams.
type RestoreLease struct {
	kv   jetstream.KeyValue
	opts RestoreLockOptions
	// TookOver is the record of a holder that died or gave up, nil when the
	// lock was free. A Phase of RestoreRestoring means its streams are half
	// restored and must be deleted before anything else.
	TookOver *RestoreRecord

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	rec    RestoreRecord
	rev    uint64
	stop   chan struct{}
	done   chan struct{}
}

// AcquireRestore takes the restore lock for backupID, creating the bucket
// with replicas (those of the streams to restore) when missing. When a live
// holder has it, it waits, up to opts.Wait, until the holder leaves a marker
// (returned as done, with a nil lease), dies, or gives up.
func AcquireRestore(ctx context.Context, nc *nats.Conn, backupID string, replicas int, opts RestoreLockOptions) (lease *RestoreLease, done *RestoreRecord, err error) {
	opts.defaults()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, nil, err
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketRestore, History: 1,
		Description: "kez-chat restore lock and marker", Storage: jetstream.FileStorage, Replicas: max(replicas, 1)})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, BucketRestore)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("making bucket %s: %w", BucketRestore, err)
	}
	l := &RestoreLease{kv: kv, opts: opts, rec: RestoreRecord{Phase: RestoreChecking, BackupID: backupID,
		Holder: opts.Holder, Lease: opts.Lease}}
	deadline := time.Now().Add(opts.Wait)
	var seen *RestoreRecord
	var seenRev uint64
	var seenAt time.Time
	logged := false
	for {
		rec, rev, err := readRecord(ctx, kv)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case rec == nil:
			l.rec.At = time.Now()
			if l.rev, err = kv.Create(ctx, restoreKey, l.value()); err == nil {
				l.start(ctx)
				return l, nil, nil
			}
			if !errors.Is(err, jetstream.ErrKeyExists) {
				return nil, nil, fmt.Errorf("taking the restore lock: %w", err)
			}
		case rec.Done():
			return nil, rec, nil
		default:
			if seen == nil || rev != seenRev {
				seen, seenRev, seenAt = rec, rev, time.Now()
			}
			if rec.Released || time.Since(seenAt) > rec.Lease {
				l.rec.At = time.Now()
				if l.rev, err = kv.Update(ctx, restoreKey, l.value(), rev); err == nil {
					l.TookOver = rec
					opts.Log.Warn("took over the restore lock from a holder that stopped", "previous", rec.String(), "released", rec.Released)
					l.start(ctx)
					return l, nil, nil
				}
				if !errors.Is(err, jetstream.ErrKeyExists) {
					return nil, nil, fmt.Errorf("taking over the restore lock: %w", err)
				}
			} else if !logged {
				opts.Log.Info("waiting for another restore of this NATS to finish", "holder", rec.Holder, "phase", rec.Phase, "id", rec.BackupID)
				logged = true
			}
		}
		if time.Now().After(deadline) {
			what := "the lock changed hands"
			if seen != nil {
				what = seen.String()
			}
			return nil, nil, fmt.Errorf("waited %s for another restore of this NATS to finish (%s): giving up; it is retried at the next start", opts.Wait, what)
		}
		t := time.NewTimer(opts.Poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		case <-t.C:
		}
	}
}

func (l *RestoreLease) value() []byte {
	b, _ := json.Marshal(l.rec)
	return b
}

func (l *RestoreLease) start(ctx context.Context) {
	l.ctx, l.cancel = context.WithCancel(ctx)
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go l.renew()
}

// Context ends when the lease is lost.
func (l *RestoreLease) Context() context.Context { return l.ctx }

// put writes the record at the held revision; on a lost answer it adopts
// the revision of a record that is still ours.
func (l *RestoreLease) put(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rec.At = time.Now()
	rev, err := l.kv.Update(ctx, restoreKey, l.value(), l.rev)
	if errors.Is(err, jetstream.ErrKeyExists) {
		if rec, r, gerr := readRecord(ctx, l.kv); gerr == nil && rec != nil && rec.Holder == l.rec.Holder && rec.Phase == l.rec.Phase {
			rev, err = r, nil
		}
	}
	if err != nil {
		return err
	}
	l.rev = rev
	return nil
}

func (l *RestoreLease) renew() {
	defer close(l.done)
	renewed := time.Now()
	t := time.NewTicker(l.opts.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(l.ctx, l.opts.Lease/3)
		err := l.put(ctx)
		cancel()
		switch {
		case err == nil:
			renewed = time.Now()
		case errors.Is(err, jetstream.ErrKeyExists), time.Since(renewed) > l.opts.Lease*2/3:
			l.opts.Log.Error("lost the restore lock; stopping", "err", err)
			l.cancel()
			return
		default:
			l.opts.Log.Warn("renewing the restore lock; trying again", "err", err)
		}
	}
}

// Held renews the lease now, failing when it is lost: checked before
// anything that changes streams.
func (l *RestoreLease) Held(ctx context.Context) error {
	if err := l.ctx.Err(); err != nil {
		return fmt.Errorf("the restore lock was lost: %w", err)
	}
	if err := l.put(ctx); err != nil {
		return fmt.Errorf("the restore lock was lost: %w", err)
	}
	return nil
}

// Restoring records that streams are about to change.
func (l *RestoreLease) Restoring(ctx context.Context) error {
	l.mu.Lock()
	l.rec.Phase = RestoreRestoring
	l.mu.Unlock()
	if err := l.put(ctx); err != nil {
		return fmt.Errorf("recording the restore's start: %w", err)
	}
	return nil
}

// Finish stops renewing and leaves the marker: phase RestoreRestored or
// RestoreFoundData (with what held data in note).
func (l *RestoreLease) Finish(ctx context.Context, phase, note string) error {
	l.halt()
	l.mu.Lock()
	l.rec.Phase, l.rec.Note, l.rec.Lease = phase, note, 0
	l.mu.Unlock()
	if err := l.put(ctx); err != nil {
		return fmt.Errorf("recording the end of the restore: %w", err)
	}
	return nil
}

// Release gives the lock up after a failure, keeping the phase, so that a
// waiter takes it over at once (and deletes half-restored streams).
func (l *RestoreLease) Release(ctx context.Context) {
	l.halt()
	l.mu.Lock()
	l.rec.Released = true
	l.mu.Unlock()
	if err := l.put(ctx); err != nil {
		l.opts.Log.Warn("giving back the restore lock; it lapses by itself", "err", err)
	}
}

func (l *RestoreLease) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
	l.cancel()
}
