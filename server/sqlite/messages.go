package sqlite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"kez.lat/chat/server"
)

const (
	// idempotencyWindow is how long (sender, id) keeps answering a retry
	// with the original seq. A signed message's ts is accepted only within
	// ±5 minutes of the server's clock, so after 15 minutes no retry of it
	// can pass verification.
	idempotencyWindow = 15 * time.Minute
	// maxPage bounds Messages' limit.
	maxPage = 1000
	// pruneChunk is how many rows one pruning request deletes, so that a
	// large expiry interleaves with appends instead of stalling them.
	pruneChunk = 2000
)

// AppendMessage stores e durably in e.Recipient's inbox with the next seq
// of that inbox; see server.Store. It waits for the group commit that holds
// it.
func (db *DB) AppendMessage(ctx context.Context, e *server.Envelope, limits server.InboxLimits) (duplicate bool, err error) {
	// The writer may still read these after a caller whose ctx ended has
	// returned: it works on copies.
	recipient, sender, id, blobs := e.Recipient, e.Sender, e.ID, append([]string(nil), e.Blobs...)
	msg := bytes.Clone([]byte(e.Message))
	if msg == nil {
		msg = []byte{}
	}
	sum := sha256.Sum256(msg)
	maxPending, maxBytes := int64(math.MaxInt64), int64(math.MaxInt64)
	if limits.MaxPending > 0 {
		maxPending = int64(limits.MaxPending)
	}
	if limits.MaxPendingBytes > 0 {
		maxBytes = limits.MaxPendingBytes
	}
	var seq, at int64
	// Bare: append refuses only before it writes, and the savepoint would
	// cost two statements on the hottest path.
	err = db.submitBare(ctx, func(w *writer) error {
		var err error
		seq, at, duplicate, err = w.append(recipient, sender, id, msg, sum[:], blobs, maxPending, maxBytes)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("appending envelope for %s: %w", recipient, err)
	}
	e.Seq = uint64(seq)
	e.ReceivedAt = unixTime(at)
	return duplicate, nil
}

// append is AppendMessage on the writer, run as a bare job: it checks
// everything, and returns every refusal, before its first write. An error
// after that is unexpected and rolls back the batch's transaction.
func (w *writer) append(recipient, sender, id string, msg, digest []byte, blobs []string, maxPending, maxBytes int64) (seq, at int64, dup bool, err error) {
	var prev []byte
	err = queryRow(w.sentByID, sender, id).Scan(&seq, &prev, &at)
	switch {
	case err == nil:
		if bytes.Equal(prev, digest) {
			return seq, at, true, nil
		}
		return 0, 0, false, server.Errorf(server.CodeMessageIDConflict,
			"message id %q from %s was already used for a different message", id, sender)
	case !errors.Is(err, sql.ErrNoRows):
		return 0, 0, false, fmt.Errorf("looking up message id %q from %s: %w", id, sender, err)
	}

	if err := w.checkBlobs(sender, blobs); err != nil {
		return 0, 0, false, err
	}
	at = w.batchTime.Unix()
	err = queryRow(w.bumpSeq, recipient, maxPending, int64(len(msg)), maxBytes).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		var pending, pendingBytes int64
		switch err := queryRow(w.pendingOf, recipient).Scan(&pending, &pendingBytes); {
		case errors.Is(err, sql.ErrNoRows):
			return 0, 0, false, server.Errorf(server.CodeUnknownHandle, "no user %q", recipient)
		case err != nil:
			return 0, 0, false, fmt.Errorf("reading pending count: %w", err)
		}
		return 0, 0, false, server.Errorf(server.CodeInboxFull,
			"the inbox of %s holds %d unacknowledged messages of %d bytes; try again later", recipient, pending, pendingBytes)
	}
	if err != nil {
		return 0, 0, false, fmt.Errorf("assigning seq: %w", err)
	}
	res, err := exec(w.insertEnvelope, recipient, seq, sender, id, at, msg)
	if err != nil {
		return 0, 0, false, fmt.Errorf("inserting envelope %d: %w", seq, err)
	}
	if len(blobs) > 0 {
		row, err := res.LastInsertId()
		if err != nil {
			return 0, 0, false, fmt.Errorf("reading the row of envelope %d: %w", seq, err)
		}
		if err := w.refBlobs(row, blobs); err != nil {
			return 0, 0, false, err
		}
	}
	if _, err := exec(w.insertSent, sender, id, recipient, seq, digest, at); err != nil {
		return 0, 0, false, fmt.Errorf("recording message id %q from %s: %w", id, sender, err)
	}
	return seq, at, false, nil
}

// Messages returns up to limit (clamped to [1, 1000]) envelopes of
// recipient with seq > since, in seq order, from the read pool, and no
// more once their messages reach maxBytes: SQLite steps row by row, so
// rows past that are never read.
func (db *DB) Messages(ctx context.Context, recipient string, since uint64, limit, maxBytes int) ([]*server.Envelope, error) {
	limit = min(max(limit, 1), maxPage)
	if since >= math.MaxInt64 { // no stored seq is larger
		return []*server.Envelope{}, nil
	}
	rows, err := db.getMessages.QueryContext(ctx, recipient, int64(since), limit)
	if err != nil {
		return nil, fmt.Errorf("reading inbox of %s after %d: %w", recipient, since, err)
	}
	defer rows.Close()
	envs := make([]*server.Envelope, 0, min(limit, 64))
	total := 0
	for (maxBytes <= 0 || total < maxBytes) && rows.Next() {
		e := &server.Envelope{Recipient: recipient}
		var seq, at int64
		var msg []byte
		if err := rows.Scan(&seq, &e.Sender, &e.ID, &at, &msg); err != nil {
			return nil, fmt.Errorf("reading inbox of %s after %d: %w", recipient, since, err)
		}
		e.Seq, e.ReceivedAt, e.Message = uint64(seq), unixTime(at), msg
		envs = append(envs, e)
		total += len(msg)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading inbox of %s after %d: %w", recipient, since, err)
	}
	return envs, nil
}

// Ack deletes recipient's envelopes with seq <= upto and reports how many.
// Seqs keep increasing after an ack: the counter lives in inboxes.
func (db *DB) Ack(ctx context.Context, recipient string, upto uint64) (int, error) {
	u := int64(min(upto, math.MaxInt64))
	var n int64
	err := db.submit(ctx, func(w *writer) error {
		rows, err := w.deleteUpTo.QueryContext(context.Background(), recipient, u)
		if err != nil {
			return fmt.Errorf("deleting envelopes: %w", err)
		}
		var bytes int64
		n = 0
		for rows.Next() {
			var size int64
			if err := rows.Scan(&size); err != nil {
				rows.Close()
				return fmt.Errorf("deleting envelopes: %w", err)
			}
			n, bytes = n+1, bytes+size
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("deleting envelopes: %w", err)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("deleting envelopes: %w", err)
		}
		if n > 0 {
			if _, err := exec(w.decPending, n, bytes, recipient); err != nil {
				return fmt.Errorf("updating pending count: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("acknowledging inbox of %s up to %d: %w", recipient, upto, err)
	}
	return int(n), nil
}

// UseOnce records digest until expires (Unix-second precision) and reports
// false if it is already recorded and not expired at checked: an entry is
// expired once checked has passed its expiry second. The writer's own
// clock is not used, since it may run the request late.
func (db *DB) UseOnce(ctx context.Context, digest []byte, expires, checked time.Time) (bool, error) {
	d := bytes.Clone(digest)
	var fresh bool
	err := db.submit(ctx, func(w *writer) error {
		var one int
		err := queryRow(w.useOnce, d, expires.Unix(), checked.Unix()).Scan(&one)
		switch {
		case err == nil:
			fresh = true
		case errors.Is(err, sql.ErrNoRows):
			fresh = false
		default:
			return err
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("recording request digest: %w", err)
	}
	return fresh, nil
}

// Prune deletes envelopes received before olderThan (fixing their inboxes'
// pending counts), idempotency keys older than 15 minutes before now and
// anti-replay entries expired at now. It works in chunks through the writer
// and stops early when ctx ends.
func (db *DB) Prune(ctx context.Context, now, olderThan time.Time) (server.PruneResult, error) {
	var res server.PruneResult
	envCutoff := olderThan.Unix()
	n, err := db.pruneLoop(ctx, func(w *writer) (int, error) { return w.pruneEnvelopesChunk(envCutoff) })
	res.Envelopes = n
	if err != nil {
		return res, fmt.Errorf("pruning envelopes received before %s: %w", olderThan.UTC().Format(time.RFC3339), err)
	}
	sentCutoff := now.Add(-idempotencyWindow).Unix()
	sent, err := db.pruneLoop(ctx, func(w *writer) (int, error) { return chunk(w.pruneSent, sentCutoff) })
	if err != nil {
		return res, fmt.Errorf("pruning message ids: %w", err)
	}
	authCutoff := now.Unix()
	auth, err := db.pruneLoop(ctx, func(w *writer) (int, error) { return chunk(w.pruneAuth, authCutoff) })
	if err != nil {
		return res, fmt.Errorf("pruning used request digests: %w", err)
	}
	if res.Envelopes > 0 {
		db.log.Info("pruned expired envelopes", "envelopes", res.Envelopes, "message_ids", sent, "request_digests", auth)
	} else {
		db.log.Debug("pruned", "message_ids", sent, "request_digests", auth)
	}
	return res, nil
}

// pruneLoop submits step until it deletes less than a full chunk.
func (db *DB) pruneLoop(ctx context.Context, step func(w *writer) (int, error)) (int, error) {
	total := 0
	for {
		var n int
		err := db.submit(ctx, func(w *writer) error {
			var err error
			n, err = step(w)
			return err
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < pruneChunk {
			return total, nil
		}
	}
}

// chunk runs a pruning DELETE bound to (cutoff, pruneChunk).
func chunk(s *sql.Stmt, cutoff int64) (int, error) {
	res, err := exec(s, cutoff, pruneChunk)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// pruneEnvelopesChunk deletes up to pruneChunk envelopes received before
// cutoff and takes them off their inboxes' pending counts.
func (w *writer) pruneEnvelopesChunk(cutoff int64) (int, error) {
	rows, err := w.pruneEnvelopes.QueryContext(context.Background(), cutoff, pruneChunk)
	if err != nil {
		return 0, err
	}
	type freed struct{ envelopes, bytes int64 }
	perInbox := make(map[string]freed)
	n := 0
	for rows.Next() {
		var r string
		var size int64
		if err := rows.Scan(&r, &size); err != nil {
			rows.Close()
			return 0, err
		}
		f := perInbox[r]
		perInbox[r] = freed{f.envelopes + 1, f.bytes + size}
		n++
	}
	if err := rows.Close(); err != nil {
		return 0, err
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for r, f := range perInbox {
		if _, err := exec(w.decPending, f.envelopes, f.bytes, r); err != nil {
			return 0, fmt.Errorf("updating pending count of %s: %w", r, err)
		}
	}
	return n, nil
}
