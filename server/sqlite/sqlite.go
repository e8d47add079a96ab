// Package sqlite implements server.Store on one SQLite file, for a server
// run as a single replica. It uses modernc.org/sqlite (pure Go, no cgo).
//
// The database runs in WAL mode with synchronous=FULL. All writes go
// through one writer goroutine that owns the only write connection and
// commits whatever requests are queued in one transaction (group commit), so
// one fsync makes a whole batch durable. Reads use a separate pool of
// query_only connections and never wait on the writer.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"kez.lat/chat/server"
)

// ErrClosed is returned by calls made after (or racing) Close.
var ErrClosed = errors.New("sqlite store is closed")

// busyTimeoutMS bounds how long a connection waits for a lock held by
// another process (or a checkpoint) before failing with SQLITE_BUSY.
const busyTimeoutMS = 5000

// DB is a server.Store on one SQLite database file.
type DB struct {
	path string
	log  *slog.Logger

	wdb *sql.DB // the single writer connection; only the writer goroutine uses it
	w   *writer
	rdb *sql.DB // the read pool (query_only)

	getUser     *sql.Stmt
	getMessages *sql.Stmt
	getBlob     *sql.Stmt

	blobs     string    // the directory of blob files
	sweepOnce sync.Once // blob files left by a crash are removed once a process

	users *userCache

	jobs       chan *job
	closing    chan struct{} // closed by Close: no new jobs are accepted
	writerDone chan struct{} // closed when the writer goroutine has exited
	commits    atomic.Uint64 // committed write transactions, for tests and benchmarks
	health     health

	closeOnce sync.Once
	closeErr  error
}

var _ server.Store = (*DB)(nil)

// Open opens (creating with mode 0600 if needed) the database at path,
// migrates its schema to the current version and starts the writer. It
// refuses a database whose schema is newer than this code
// (ErrSchemaTooNew). A nil log discards.
func Open(ctx context.Context, path string, log *slog.Logger) (*DB, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := createPrivate(path); err != nil {
		return nil, fmt.Errorf("creating database file %s: %w", path, err)
	}
	if err := os.MkdirAll(blobDir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the blob directory of %s: %w", path, err)
	}

	wdb, err := sql.Open("sqlite", dsn(path, []string{
		fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS),
		"foreign_keys(1)",
		"journal_mode(WAL)",
		"synchronous(FULL)",
		// Keep an idle WAL file from staying at its high-water mark.
		"journal_size_limit(67108864)",
		// SQLite's default: the writer copies the WAL into the database file
		// after the commit that takes it past 1000 pages. Larger values, and
		// a checkpointer of its own, were measured and raised the tail
		// latency (docs/benchmarks.md).
		"wal_autocheckpoint(1000)",
		// A request's savepoint keeps the pages it changes in memory, not in
		// a temporary file.
		"temp_store(MEMORY)",
	}, "_txlock=immediate"))
	if err != nil {
		return nil, fmt.Errorf("opening database %s for writing: %w", path, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	wdb.SetConnMaxIdleTime(0)

	conn, err := wdb.Conn(ctx)
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("connecting to database %s: %w", path, err)
	}
	version, err := migrate(ctx, conn, migrations, log)
	if err != nil {
		conn.Close()
		wdb.Close()
		return nil, fmt.Errorf("migrating database %s: %w", path, err)
	}
	w, err := newWriter(ctx, conn, log)
	if err != nil {
		conn.Close()
		wdb.Close()
		return nil, fmt.Errorf("preparing writer for %s: %w", path, err)
	}

	rdb, err := sql.Open("sqlite", dsn(path, []string{
		fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS),
		"foreign_keys(1)",
		"query_only(1)",
	}))
	if err != nil {
		w.close()
		wdb.Close()
		return nil, fmt.Errorf("opening database %s for reading: %w", path, err)
	}
	readers := max(4, 2*runtime.GOMAXPROCS(0))
	rdb.SetMaxOpenConns(readers)
	rdb.SetMaxIdleConns(readers)
	rdb.SetConnMaxLifetime(0)
	rdb.SetConnMaxIdleTime(0)

	db := &DB{
		path:       path,
		blobs:      blobDir(path),
		log:        log,
		wdb:        wdb,
		w:          w,
		rdb:        rdb,
		users:      newUserCache(userCacheBytes),
		jobs:       make(chan *job, queueSize),
		closing:    make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	if err := db.prepareReads(ctx); err != nil {
		db.closeHandles()
		return nil, fmt.Errorf("preparing reads of %s: %w", path, err)
	}
	go db.runWriter()
	log.Info("opened database", "path", path, "schema_version", version)
	return db, nil
}

func (db *DB) prepareReads(ctx context.Context) error {
	var err error
	if db.getUser, err = db.rdb.PrepareContext(ctx, `
		SELECT handle, server, primary_id, alg, key, enc_key, created_at
		FROM users WHERE handle = ?`); err != nil {
		return fmt.Errorf("preparing user lookup: %w", err)
	}
	if db.getMessages, err = db.rdb.PrepareContext(ctx, `
		SELECT seq, sender, msg_id, received_at, message
		FROM envelopes WHERE recipient = ? AND seq > ?
		ORDER BY seq LIMIT ?`); err != nil {
		return fmt.Errorf("preparing inbox read: %w", err)
	}
	if db.getBlob, err = db.rdb.PrepareContext(ctx, `
		SELECT uploader, size, sha256, created_at FROM blobs WHERE id = ?`); err != nil {
		return fmt.Errorf("preparing blob lookup: %w", err)
	}
	return nil
}

// Ping fails once the store is closed, when the read pool cannot answer,
// and when the writer cannot commit a large message's worth of bytes (a
// full disk or size limit): readiness follows the write path, not only
// reads.
func (db *DB) Ping(ctx context.Context) error {
	select {
	case <-db.closing:
		return fmt.Errorf("pinging database %s: %w", db.path, ErrClosed)
	default:
	}
	var one int
	if err := db.rdb.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("pinging database %s: %w", db.path, err)
	}
	if err := db.probeWrite(ctx); err != nil {
		return fmt.Errorf("pinging database %s: %w", db.path, err)
	}
	return nil
}

// LimitSize makes the database refuse to grow past maxBytes (SQLite's
// max_page_count): writes that need more answer storage_full, and the disk
// keeps room for the WAL and a checkpoint. It cannot go below what the
// file holds.
func (db *DB) LimitSize(ctx context.Context, maxBytes int64) error {
	err := db.submit(ctx, func(w *writer) error {
		var pageSize int64
		if err := w.conn.QueryRowContext(context.Background(), "PRAGMA page_size").Scan(&pageSize); err != nil {
			return err
		}
		var pages int64
		return w.conn.QueryRowContext(context.Background(), fmt.Sprintf("PRAGMA max_page_count = %d", max(maxBytes/pageSize, 1))).Scan(&pages)
	})
	if err != nil {
		return fmt.Errorf("limiting database %s to %d bytes: %w", db.path, maxBytes, err)
	}
	return nil
}

// Close stops accepting writes, finishes those already queued, checkpoints
// the WAL into the database file and closes every connection. It is safe to
// call more than once.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		close(db.closing)
		<-db.writerDone
		db.closeErr = db.closeHandles()
		if db.closeErr != nil {
			db.log.Error("closing database", "path", db.path, "err", db.closeErr)
		} else {
			db.log.Info("closed database", "path", db.path)
		}
	})
	return db.closeErr
}

// closeHandles closes the read pool first, so that no reader holds the WAL
// open, then checkpoints and closes the writer.
func (db *DB) closeHandles() error {
	var errs []error
	for _, s := range []*sql.Stmt{db.getUser, db.getMessages, db.getBlob} {
		if s != nil {
			s.Close()
		}
	}
	if err := db.rdb.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing read pool: %w", err))
	}
	if err := db.w.checkpoint(); err != nil {
		errs = append(errs, fmt.Errorf("checkpointing WAL: %w", err))
	}
	if err := db.w.close(); err != nil {
		errs = append(errs, fmt.Errorf("closing writer connection: %w", err))
	}
	if err := db.wdb.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing writer: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing database %s: %w", db.path, err)
	}
	return nil
}

// createPrivate creates path with mode 0600 if it does not exist, so that
// SQLite (which gives the -wal and -shm files the database file's mode)
// never creates it world-readable. An existing file is left as it is.
func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}

// dsn builds a file: URI for path with one _pragma per element, so that
// database/sql applies them to every connection it opens.
func dsn(path string, pragmas []string, extra ...string) string {
	// In a URI filename SQLite decodes %XX escapes and stops the path at ?
	// or #; escape those three.
	p := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	params := make([]string, 0, len(pragmas)+len(extra))
	for _, pr := range pragmas {
		params = append(params, "_pragma="+pr)
	}
	params = append(params, extra...)
	if len(params) == 0 {
		return "file:" + p
	}
	return "file:" + p + "?" + strings.Join(params, "&")
}

// unixTime converts stored Unix seconds back to a time.
func unixTime(sec int64) time.Time { return time.Unix(sec, 0) }
