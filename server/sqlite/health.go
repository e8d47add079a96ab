package sqlite

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"kez.lat/chat/server"
)

// probeBytes is what a write probe writes: more than the largest message
// (96 KiB of body), so that a store that passes can take one.
const probeBytes = 128 << 10

// probeEvery bounds how often Ping writes a probe, however often it is
// asked (readiness is reachable by anyone).
const probeEvery = 2 * time.Second

// health is what the store knows of its writer's ability to commit.
type health struct {
	full, io atomic.Uint64 // writes refused: storage full, other I/O failures
	writable atomic.Bool   // the last probe's outcome

	probeMu  sync.Mutex // one probe at a time
	probedAt time.Time
	probeErr error
}

// storageError is what a caller is told of a failed write: a full disk (or
// the database's size limit) is storage_full, the writer's other I/O
// failures unavailable, both with a Retry-After and never internal. Other
// errors are returned as they are.
func (db *DB) storageError(err error) error {
	var se *sqlite.Error
	if err == nil || !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_FULL:
		db.health.full.Add(1)
		return &server.Error{Code: server.CodeStorageFull, RetryAfter: time.Minute,
			Message: "the server's storage is full; try again later"}
	case sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		db.health.io.Add(1)
		return &server.Error{Code: server.CodeUnavailable, RetryAfter: 5 * time.Second,
			Message: "the server cannot write now; try again later"}
	}
	return err
}

// WriteFailures counts the writes refused because storage was full and
// because of other I/O failures.
func (db *DB) WriteFailures() (full, io uint64) {
	return db.health.full.Load(), db.health.io.Load()
}

// Writable reports the outcome of the last write probe.
func (db *DB) Writable() bool { return db.health.writable.Load() }

// probeWrite commits a write of probeBytes through the writer, as an
// append would, and forgets it in the same transaction; at most once per
// probeEvery, answering callers in between with the last outcome. It
// fails while the disk (or the size limit) has no room for one more large
// message, and succeeds again once it has.
func (db *DB) probeWrite(ctx context.Context) error {
	h := &db.health
	h.probeMu.Lock()
	defer h.probeMu.Unlock()
	if !h.probedAt.IsZero() && time.Since(h.probedAt) < probeEvery {
		return h.probeErr
	}
	err := db.submit(ctx, func(w *writer) error {
		if _, err := exec(w.probeInsert, probeBytes); err != nil {
			return err
		}
		_, err := exec(w.probeDelete)
		return err
	})
	if ctx.Err() != nil {
		return err // the caller gave up; no verdict
	}
	h.probedAt, h.probeErr = time.Now(), err
	h.writable.Store(err == nil)
	if err != nil {
		return fmt.Errorf("writing a probe: %w", err)
	}
	return nil
}
