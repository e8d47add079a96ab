package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"kez.lat/chat/server"
)

const (
	// queueSize bounds the write requests waiting for the writer; callers
	// beyond it block (or give up with their ctx).
	queueSize = 1024
	// maxBatch bounds the requests committed in one transaction.
	maxBatch = 256
)

// job is one write request: run executes inside the batch transaction on
// the writer goroutine, in a savepoint of its own, so that a request that
// fails leaves nothing written. A bare job runs without the savepoint (two
// statements fewer): its run must refuse (return a *server.Error) only
// before it has written anything, and any other error it returns ends the
// whole transaction, as a broken transaction does (see runJob).
type job struct {
	ctx  context.Context
	run  func(w *writer) error
	bare bool
	done chan error // buffered: the writer never blocks on an absent caller
}

// writer owns the single write connection and its prepared statements. Only
// the writer goroutine touches it once Open has returned.
type writer struct {
	conn *sql.Conn
	log  *slog.Logger
	now  func() time.Time

	// batchTime is the clock reading for the batch being run; every row a
	// batch writes carries the same time.
	batchTime time.Time

	stmts []*sql.Stmt

	begin, commit, rollback              *sql.Stmt
	savepoint, release, rollbackTo       *sql.Stmt
	sentByID, bumpSeq, pendingOf         *sql.Stmt
	insertEnvelope, insertSent           *sql.Stmt
	remoteSentByID, insertRemoteSent     *sql.Stmt
	handleExists, primaryIDExists        *sql.Stmt
	insertUser, insertInbox              *sql.Stmt
	deleteEnvelopesUpTo, decPending      *sql.Stmt
	upsertAckPoint, ackPointsOf          *sql.Stmt
	deleteAckPoint                       *sql.Stmt
	useOnce                              *sql.Stmt
	probeInsert, probeDelete             *sql.Stmt
	saveCheckpoint                       *sql.Stmt
	pruneEnvelopes, pruneSent, pruneAuth *sql.Stmt
	insertBlob, blobOf, insertBlobRef    *sql.Stmt
	markBlobReferenced, pruneBlobs       *sql.Stmt
}

func newWriter(ctx context.Context, conn *sql.Conn, log *slog.Logger) (*writer, error) {
	w := &writer{conn: conn, log: log, now: time.Now}
	for _, p := range []struct {
		s   **sql.Stmt
		sql string
	}{
		{&w.begin, "BEGIN IMMEDIATE"},
		{&w.commit, "COMMIT"},
		{&w.rollback, "ROLLBACK"},
		{&w.savepoint, "SAVEPOINT job"},
		{&w.release, "RELEASE job"},
		{&w.rollbackTo, "ROLLBACK TO job"},
		{&w.sentByID, "SELECT seq, digest, created_at FROM sent_ids WHERE sender = ? AND msg_id = ?"},
		{&w.bumpSeq, `UPDATE inboxes SET last_seq = last_seq + 1, pending = pending + 1, pending_bytes = pending_bytes + ?3
			WHERE handle = ?1 AND pending < ?2 AND pending_bytes + ?3 <= ?4 RETURNING last_seq`},
		{&w.pendingOf, "SELECT pending, pending_bytes FROM inboxes WHERE handle = ?"},
		{&w.insertEnvelope, `INSERT INTO envelopes (recipient, seq, sender, msg_id, received_at, message)
			VALUES (?, ?, ?, ?, ?, ?)`},
		{&w.insertSent, `INSERT INTO sent_ids (sender, msg_id, recipient, seq, digest, created_at)
			VALUES (?, ?, ?, ?, ?, ?)`},
		{&w.remoteSentByID, "SELECT seq, digest, created_at FROM remote_sent_ids WHERE sender = ? AND msg_id = ?"},
		{&w.insertRemoteSent, `INSERT INTO remote_sent_ids (sender, msg_id, recipient, seq, digest, created_at)
			VALUES (?, ?, ?, ?, ?, ?)`},
		{&w.handleExists, "SELECT 1 FROM users WHERE handle = ?"},
		{&w.primaryIDExists, "SELECT 1 FROM users WHERE primary_id = ?"},
		{&w.insertUser, `INSERT INTO users (handle, primary_id, server, alg, key, enc_key, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`},
		{&w.insertInbox, "INSERT INTO inboxes (handle) VALUES (?)"},
		{&w.deleteEnvelopesUpTo, "DELETE FROM envelopes WHERE recipient = ? AND seq <= ? RETURNING length(message)"},
		{&w.upsertAckPoint, `INSERT INTO ack_points (handle, device, upto) VALUES (?1, ?2, ?3)
			ON CONFLICT (handle, device) DO UPDATE SET upto = max(upto, excluded.upto)`},
		{&w.ackPointsOf, "SELECT device, upto FROM ack_points WHERE handle = ?"},
		{&w.deleteAckPoint, "DELETE FROM ack_points WHERE handle = ? AND device = ?"},
		{&w.decPending, "UPDATE inboxes SET pending = pending - ?1, pending_bytes = pending_bytes - ?2 WHERE handle = ?3"},
		// A present but expired digest is recorded again (and counts as
		// fresh); a present, unexpired one makes the upsert a no-op that
		// returns no row.
		{&w.useOnce, `INSERT INTO used_auth (digest, expires_at) VALUES (?1, ?2)
			ON CONFLICT (digest) DO UPDATE SET expires_at = excluded.expires_at
			WHERE used_auth.expires_at < ?3
			RETURNING 1`},
		{&w.probeInsert, "INSERT INTO write_probe (bytes) VALUES (zeroblob(?))"},
		{&w.saveCheckpoint, `INSERT INTO key_checkpoints (primary_id, version, document) VALUES (?1, ?2, ?3)
			ON CONFLICT (primary_id) DO UPDATE SET version = excluded.version, document = excluded.document
			WHERE excluded.version > key_checkpoints.version`},
		{&w.probeDelete, "DELETE FROM write_probe"},
		{&w.pruneEnvelopes, `DELETE FROM envelopes WHERE id IN (
			SELECT id FROM envelopes WHERE received_at < ? LIMIT ?)
			RETURNING recipient, length(message)`},
		// The oldest pruneChunk ids, of which those created before the
		// cutoff. A chunk with fewer ends the pruning (see pruneLoop); an
		// entry behind a newer one (the clock stepped back) waits for a
		// later Prune.
		{&w.pruneSent, `DELETE FROM sent_ids WHERE id IN (
			SELECT id FROM (SELECT id, created_at FROM sent_ids ORDER BY id LIMIT ?2)
			WHERE created_at < ?1)`},
		{&w.pruneAuth, `DELETE FROM used_auth WHERE digest IN (
			SELECT digest FROM used_auth WHERE expires_at < ? LIMIT ?)`},
		{&w.insertBlob, `INSERT INTO blobs (id, uploader, size, sha256, created_at) VALUES (?, ?, ?, ?, ?)`},
		{&w.blobOf, "SELECT 1 FROM blobs WHERE id = ? AND uploader = ?"},
		{&w.insertBlobRef, "INSERT INTO blob_refs (envelope_id, blob_id) VALUES (?, ?)"},
		{&w.markBlobReferenced, "UPDATE blobs SET referenced = 1 WHERE id = ? AND referenced = 0"},
		// A blob goes at the retention after its upload, once the last
		// envelope naming it is gone, or, never named, a day after upload.
		{&w.pruneBlobs, `DELETE FROM blobs WHERE id IN (
			SELECT id FROM blobs b WHERE b.created_at < ?1
				OR (b.federated = 0 AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.blob_id = b.id)
					AND (b.referenced = 1 OR b.created_at < ?2))
			LIMIT ?3)
			RETURNING id`},
	} {
		s, err := conn.PrepareContext(ctx, p.sql)
		if err != nil {
			for _, s := range w.stmts {
				s.Close()
			}
			return nil, fmt.Errorf("preparing %q: %w", p.sql, err)
		}
		*p.s = s
		w.stmts = append(w.stmts, s)
	}
	return w, nil
}

// close releases the statements and the connection.
func (w *writer) close() error {
	for _, s := range w.stmts {
		s.Close()
	}
	w.stmts = nil
	return w.conn.Close()
}

// checkpoint copies the whole WAL into the database file and truncates it.
func (w *writer) checkpoint() error {
	var busy, logFrames, checkpointed int
	err := w.conn.QueryRowContext(context.Background(), "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &checkpointed)
	if err != nil {
		return err
	}
	if busy != 0 {
		return fmt.Errorf("checkpoint blocked: %d of %d WAL frames copied", checkpointed, logFrames)
	}
	return nil
}

// exec runs a prepared statement of the writer. The writer never passes a
// caller's ctx to SQLite: interrupting a statement inside an explicit
// transaction can roll back the whole transaction, and with it every other
// request of the batch. Callers' contexts are honoured before their request
// runs and while they wait.
func exec(s *sql.Stmt, args ...any) (sql.Result, error) {
	return s.ExecContext(context.Background(), args...)
}

func queryRow(s *sql.Stmt, args ...any) *sql.Row {
	return s.QueryRowContext(context.Background(), args...)
}

// submit queues run for the writer and waits for its outcome or ctx. When
// ctx ends first the request may still be carried out (if the writer had
// already started it); requests are idempotent or harmless to repeat.
func (db *DB) submit(ctx context.Context, run func(w *writer) error) error {
	return db.submitJob(ctx, run, false)
}

// submitBare is submit for a bare job (see job).
func (db *DB) submitBare(ctx context.Context, run func(w *writer) error) error {
	return db.submitJob(ctx, run, true)
}

func (db *DB) submitJob(ctx context.Context, run func(w *writer) error, bare bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-db.closing:
		return ErrClosed
	default:
	}
	j := &job{ctx: ctx, run: run, bare: bare, done: make(chan error, 1)}
	select {
	case db.jobs <- j:
	case <-db.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-j.done:
		return db.storageError(err)
	case <-ctx.Done():
		select {
		case err := <-j.done: // an answer that raced ctx wins
			return db.storageError(err)
		default:
			return ctx.Err()
		}
	case <-db.writerDone:
		// The writer answers before it exits; a job that slipped into the
		// queue after its last look is never run.
		select {
		case err := <-j.done:
			return db.storageError(err)
		default:
			return ErrClosed
		}
	}
}

// runWriter is the writer goroutine: it takes every job queued (up to
// maxBatch), runs them in one transaction and answers them. After Close it
// drains the queue and exits.
func (db *DB) runWriter() {
	defer close(db.writerDone)
	batch := make([]*job, 0, maxBatch)
	results := make([]result, 0, maxBatch)
	for {
		select {
		case j := <-db.jobs:
			batch = append(batch[:0], j)
		case <-db.closing:
			for {
				batch = db.gather(batch[:0])
				if len(batch) == 0 {
					return
				}
				db.runBatch(batch, results)
				clear(batch)
			}
		}
		batch = db.gather(batch)
		db.runBatch(batch, results)
		clear(batch) // drop references to answered jobs
	}
}

// gather appends the jobs already queued, without waiting, up to maxBatch.
func (db *DB) gather(batch []*job) []*job {
	for len(batch) < maxBatch {
		select {
		case j := <-db.jobs:
			batch = append(batch, j)
		default:
			return batch
		}
	}
	return batch
}

type result struct {
	err error
	ran bool // run inside the current transaction (its outcome depends on the commit)
}

// runBatch runs batch in as few transactions as possible (one, unless a
// transaction breaks) and answers every job once its transaction has
// committed.
func (db *DB) runBatch(batch []*job, results []result) {
	w := db.w
	w.batchTime = w.now()
	results = results[:len(batch)]
	clear(results)
	inTx := false
	txStart := 0 // first job of the current transaction
	for i, j := range batch {
		if err := j.ctx.Err(); err != nil {
			results[i].err = err
			continue
		}
		if !inTx {
			if _, err := exec(w.begin); err != nil {
				err = fmt.Errorf("beginning write transaction: %w", err)
				w.log.Error("write batch failed", "err", err)
				for k := i; k < len(batch); k++ {
					results[k] = result{err: err}
				}
				break
			}
			inTx, txStart = true, i
		}
		err, fatal := w.runJob(j)
		results[i] = result{err: err, ran: true}
		if fatal != nil {
			// The transaction is lost: everything run in it so far fails;
			// the rest of the batch gets a fresh transaction.
			exec(w.rollback) // it may already be rolled back
			w.log.Error("write transaction aborted", "err", fatal)
			for k := txStart; k <= i; k++ {
				if results[k].ran {
					results[k] = result{err: fatal}
				}
			}
			inTx = false
		}
	}
	if inTx {
		if _, err := exec(w.commit); err != nil {
			exec(w.rollback)
			err = fmt.Errorf("committing write transaction: %w", err)
			w.log.Error("write batch failed", "err", err, "requests", len(batch)-txStart)
			for k := txStart; k < len(batch); k++ {
				if results[k].ran {
					results[k] = result{err: err}
				}
			}
		} else {
			db.commits.Add(1)
		}
	}
	for i, j := range batch {
		j.done <- results[i].err
	}
}

// runJob runs j in a savepoint, or bare. err is j's own outcome (its writes
// undone if it failed); fatal reports that the enclosing transaction is
// broken, or for a bare job that failed other than by refusing, that it
// must be rolled back.
func (w *writer) runJob(j *job) (err, fatal error) {
	if j.bare {
		err := j.run(w)
		var refusal *server.Error
		if err == nil || errors.As(err, &refusal) {
			return err, nil
		}
		return err, fmt.Errorf("request without a savepoint failed: %w", err)
	}
	if _, err := exec(w.savepoint); err != nil {
		return nil, fmt.Errorf("opening savepoint: %w", err)
	}
	if err := j.run(w); err != nil {
		// The request's own error is the one wrapped: a full disk makes
		// SQLite roll back the whole transaction, savepoint and all, and
		// the caller must hear storage_full, not "no such savepoint".
		if _, rerr := exec(w.rollbackTo); rerr != nil {
			return err, fmt.Errorf("request failed (%w) and undoing it failed: %v", err, rerr)
		}
		if _, rerr := exec(w.release); rerr != nil {
			return err, fmt.Errorf("request failed (%w) and releasing its savepoint failed: %v", err, rerr)
		}
		return err, nil
	}
	if _, err := exec(w.release); err != nil {
		return nil, fmt.Errorf("releasing savepoint: %w", err)
	}
	return nil, nil
}
