package sqlite

import (
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"kez.lat/chat/server"
)

// Durability without the writer waiting for the disk.
//
// SQLite's synchronous=FULL syncs the WAL inside COMMIT, so the writer sat
// idle for each fsync while the next batch queued behind it. The writer
// now commits with synchronous=NORMAL (the frames written, not synced) and
// hands the batch to the syncer goroutine, which fdatasyncs the WAL file
// (one sync for every batch committed meanwhile) and only then answers the
// batch's callers: no write is acknowledged before it is on disk, as with
// FULL, while the writer already runs the next batch.
//
// Until that sync, the batch's rows are visible to the read pool. The one
// read whose answer a client keeps is the inbox: a message read there and
// then lost to a power cut would leave its seq to be given again, to a
// message the client would skip. So inbox reads see only envelopes below
// the gate, the first row id of the oldest batch not yet synced.

// syncQueue bounds the committed batches waiting for the syncer; the writer
// blocks beyond it.
const syncQueue = 8

// committedBatch is a batch whose transaction has ended, waiting for the
// sync that makes it durable before its callers hear.
type committedBatch struct {
	n     uint64 // the batch's number, for the gate
	jobs  []*job
	errs  []error
	wrote bool // a transaction committed: the WAL must be synced first
}

// durableGate hides the envelopes of batches whose commit is not synced.
type durableGate struct {
	mu    sync.Mutex
	holds []gateHold // in batch order
	below atomic.Int64
}

type gateHold struct {
	batch   uint64
	firstID int64
}

func newDurableGate() *durableGate {
	g := &durableGate{}
	g.below.Store(math.MaxInt64)
	return g
}

// limit is the lowest envelope id not yet durable (MaxInt64 when all are).
func (g *durableGate) limit() int64 { return g.below.Load() }

// hold hides ids from firstID on until batch is released; the writer calls
// it before the commit that makes them visible.
func (g *durableGate) hold(batch uint64, firstID int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.holds = append(g.holds, gateHold{batch, firstID})
	if firstID < g.below.Load() {
		g.below.Store(firstID)
	}
}

// release lifts the holds of the batches up to and including upTo, once
// they are synced.
func (g *durableGate) release(upTo uint64) {
	g.lift(func(h gateHold) bool { return h.batch <= upTo })
}

// drop lifts the hold of one batch whose commit failed: its rows are gone.
func (g *durableGate) drop(batch uint64) {
	g.lift(func(h gateHold) bool { return h.batch == batch })
}

func (g *durableGate) lift(done func(gateHold) bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	kept := g.holds[:0]
	below := int64(math.MaxInt64)
	for _, h := range g.holds {
		if done(h) {
			continue
		}
		kept = append(kept, h)
		below = min(below, h.firstID)
	}
	clear(g.holds[len(kept):])
	g.holds = kept
	g.below.Store(below)
}

// walFile is the database's WAL, opened by the syncer to fdatasync it.
type walFile struct {
	path string
	f    *os.File
}

// sync makes every frame written to the WAL so far durable. SQLite keeps
// the file while any connection is open (the writer's always is), but if it
// was unlinked and made again, the new file is the one synced.
func (w *walFile) sync() error {
	if w.f != nil {
		if fi, err := w.f.Stat(); err != nil || linkCount(fi) == 0 {
			w.f.Close()
			w.f = nil
		}
	}
	if w.f == nil {
		f, err := os.OpenFile(w.path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("opening WAL %s to sync it: %w", w.path, err)
		}
		w.f = f
	}
	if err := fdatasync(w.f); err != nil {
		return fmt.Errorf("syncing WAL %s: %w", w.path, err)
	}
	return nil
}

func (w *walFile) close() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
}

// errSyncFailed is what callers hear once a sync of the WAL has failed:
// after a failed fsync nothing says what reached the disk (the kernel may
// have dropped the dirty pages), so the store takes no more writes and the
// readiness probe fails until a restart recovers the database from disk.
var errSyncFailed = &server.Error{Code: server.CodeUnavailable, RetryAfter: 5 * time.Second,
	Message: "the server cannot write now; try again later"}

// runSyncer answers committed batches in order, each after the sync that
// makes it durable. It exits once the writer has closed toSync and every
// batch is answered.
func (db *DB) runSyncer() {
	defer close(db.writerDone)
	defer db.wal.close()
	pending := make([]*committedBatch, 0, syncQueue)
	for b := range db.toSync {
		pending = append(pending[:0], b)
	gather:
		for len(pending) < cap(pending) {
			select {
			case b, ok := <-db.toSync:
				if !ok {
					break gather
				}
				pending = append(pending, b)
			default:
				break gather
			}
		}
		var syncErr error
		for _, b := range pending {
			if b.wrote {
				syncErr = db.syncWAL()
				break
			}
		}
		if syncErr != nil && db.syncBroken.CompareAndSwap(false, true) {
			db.health.io.Add(1)
			db.log.Error("WAL sync failed: no more writes until a restart", "err", syncErr)
		}
		// The gate rises before anyone hears, so that a caller that reads
		// right after its answer sees what it wrote; after a failed sync it
		// stays, hiding rows that may not be on the disk.
		if !db.syncBroken.Load() {
			db.gate.release(pending[len(pending)-1].n)
		}
		for _, b := range pending {
			for i, j := range b.jobs {
				err := b.errs[i]
				if db.syncBroken.Load() && b.wrote {
					// Not even a refusal is certain: it may rest on rows
					// that did not reach the disk.
					err = errSyncFailed
				}
				j.done <- err
			}
		}
		clear(pending)
	}
}
