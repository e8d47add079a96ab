package sqlite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
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
	a := newAppend(e)
	maxPending, maxBytes := inboxCaps(limits)
	// Bare: append refuses only before it writes, and the savepoint would
	// cost two statements on the hottest path.
	err = db.submitBare(ctx, func(w *writer) error {
		return w.append(a, maxPending, maxBytes)
	})
	if err != nil {
		return false, fmt.Errorf("appending envelope for %s: %w", a.recipient, err)
	}
	a.answer(e)
	return a.dup, nil
}

// AppendMessages stores envs atomically: one job, in a savepoint of its
// own, so that a refusal of any envelope undoes the others'; see
// server.Store.
func (db *DB) AppendMessages(ctx context.Context, envs []*server.Envelope, limits server.InboxLimits) ([]bool, error) {
	as := make([]*pendingAppend, len(envs))
	for i, e := range envs {
		as[i] = newAppend(e)
	}
	maxPending, maxBytes := inboxCaps(limits)
	err := db.submit(ctx, func(w *writer) error {
		for i, a := range as {
			if err := w.append(a, maxPending, maxBytes); err != nil {
				return server.AtIndex(err, i)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("appending %d envelopes: %w", len(envs), err)
	}
	dups := make([]bool, len(envs))
	for i, a := range as {
		a.answer(envs[i])
		dups[i] = a.dup
	}
	return dups, nil
}

// pendingAppend is one envelope on its way to the writer and its answer.
// The writer may still read it after a caller whose ctx ended has
// returned: it holds copies.
type pendingAppend struct {
	recipient, sender, id string
	msg, digest           []byte
	blobs                 []string

	seq, at int64
	dup     bool
}

func newAppend(e *server.Envelope) *pendingAppend {
	msg := bytes.Clone([]byte(e.Message))
	if msg == nil {
		msg = []byte{}
	}
	sum := sha256.Sum256(msg)
	return &pendingAppend{recipient: e.Recipient, sender: e.Sender, id: e.ID, msg: msg, digest: sum[:], blobs: append([]string(nil), e.Blobs...)}
}

// answer sets e's seq and received-at from what the writer stored.
func (a *pendingAppend) answer(e *server.Envelope) {
	e.Seq = uint64(a.seq)
	e.ReceivedAt = unixTime(a.at)
}

// inboxCaps turns limits into the writer's bounds (0: none).
func inboxCaps(limits server.InboxLimits) (maxPending, maxBytes int64) {
	maxPending, maxBytes = int64(math.MaxInt64), int64(math.MaxInt64)
	if limits.MaxPending > 0 {
		maxPending = int64(limits.MaxPending)
	}
	if limits.MaxPendingBytes > 0 {
		maxBytes = limits.MaxPendingBytes
	}
	return maxPending, maxBytes
}

// append stores one envelope on the writer; AppendMessage and
// AppendMessages both store each envelope here, and only here. It checks
// everything, and returns every refusal, before its first write, so that
// AppendMessage can run it as a bare job; an error after that is
// unexpected and rolls back the batch's transaction.
func (w *writer) append(a *pendingAppend, maxPending, maxBytes int64) error {
	var prev []byte
	var seq, at int64
	// A remote sender's ids are kept for the federation window, apart.
	sentByID, insertSent := w.sentByID, w.insertSent
	if remoteSender(a.sender) {
		sentByID, insertSent = w.remoteSentByID, w.insertRemoteSent
	}
	err := queryRow(sentByID, a.sender, a.id).Scan(&seq, &prev, &at)
	switch {
	case err == nil:
		if bytes.Equal(prev, a.digest) {
			a.seq, a.at, a.dup = seq, at, true
			return nil
		}
		return server.Errorf(server.CodeMessageIDConflict,
			"message id %q from %s was already used for a different message", a.id, a.sender)
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("looking up message id %q from %s: %w", a.id, a.sender, err)
	}

	if err := w.checkBlobs(a.sender, a.blobs); err != nil {
		return err
	}
	at = w.batchTime.Unix()
	err = queryRow(w.bumpSeq, a.recipient, maxPending, int64(len(a.msg)), maxBytes).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		var pending, pendingBytes int64
		switch err := queryRow(w.pendingOf, a.recipient).Scan(&pending, &pendingBytes); {
		case errors.Is(err, sql.ErrNoRows):
			return server.Errorf(server.CodeUnknownHandle, "no user %q", a.recipient)
		case err != nil:
			return fmt.Errorf("reading pending count: %w", err)
		}
		return server.Errorf(server.CodeInboxFull,
			"the inbox of %s holds %d unacknowledged messages of %d bytes; try again later", a.recipient, pending, pendingBytes)
	}
	if err != nil {
		return fmt.Errorf("assigning seq: %w", err)
	}
	res, err := exec(w.insertEnvelope, a.recipient, seq, a.sender, a.id, at, a.msg)
	if err != nil {
		return fmt.Errorf("inserting envelope %d: %w", seq, err)
	}
	if len(a.blobs) > 0 {
		row, err := res.LastInsertId()
		if err != nil {
			return fmt.Errorf("reading the row of envelope %d: %w", seq, err)
		}
		if err := w.refBlobs(row, a.blobs); err != nil {
			return err
		}
	}
	if _, err := exec(insertSent, a.sender, a.id, a.recipient, seq, a.digest, at); err != nil {
		return fmt.Errorf("recording message id %q from %s: %w", a.id, a.sender, err)
	}
	a.seq, a.at, a.dup = seq, at, false
	return nil
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

// Ack records device's acknowledgement point and deletes what every
// device has acknowledged; see server.Store. Seqs keep increasing after an
// ack: the counter lives in inboxes.
func (db *DB) Ack(ctx context.Context, recipient, device string, upto uint64, devices []string) (int, error) {
	u := int64(min(upto, math.MaxInt64))
	var n int
	err := db.submit(ctx, func(w *writer) error {
		var err error
		n, err = w.ack(recipient, device, u, devices)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("acknowledging inbox of %s up to %d: %w", recipient, upto, err)
	}
	return n, nil
}

// ack is Ack on the writer, in a savepoint of its own.
func (w *writer) ack(recipient, device string, upto int64, devices []string) (int, error) {
	var pending, pendingBytes int64
	switch err := queryRow(w.pendingOf, recipient).Scan(&pending, &pendingBytes); {
	case errors.Is(err, sql.ErrNoRows):
		return 0, nil // no such inbox
	case err != nil:
		return 0, fmt.Errorf("reading inbox: %w", err)
	}
	if _, err := exec(w.upsertAckPoint, recipient, device, upto); err != nil {
		return 0, fmt.Errorf("recording the acknowledgement point of %s: %w", device, err)
	}
	// The points of the inbox: at most one per key ever authorized since
	// the last ack, a few.
	rows, err := w.ackPointsOf.QueryContext(context.Background(), recipient)
	if err != nil {
		return 0, fmt.Errorf("reading acknowledgement points: %w", err)
	}
	// The device's own point is among them: it just authenticated, so it
	// is kept even when devices (read a moment before) lacks it.
	lowest := int64(math.MaxInt64)
	var revoked []string
	for rows.Next() {
		var d string
		var p int64
		if err := rows.Scan(&d, &p); err != nil {
			rows.Close()
			return 0, fmt.Errorf("reading acknowledgement points: %w", err)
		}
		if d != device && devices != nil && !slices.Contains(devices, d) {
			revoked = append(revoked, d)
			continue
		}
		lowest = min(lowest, p)
	}
	if err := rows.Close(); err != nil {
		return 0, fmt.Errorf("reading acknowledgement points: %w", err)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("reading acknowledgement points: %w", err)
	}
	for _, d := range revoked {
		if _, err := exec(w.deleteAckPoint, recipient, d); err != nil {
			return 0, fmt.Errorf("forgetting the acknowledgement point of %s: %w", d, err)
		}
	}
	if lowest == 0 {
		return 0, nil
	}
	return w.deleteUpTo(recipient, lowest)
}

// deleteUpTo deletes recipient's envelopes with seq <= upto and takes them
// off its pending counts.
func (w *writer) deleteUpTo(recipient string, upto int64) (int, error) {
	rows, err := w.deleteEnvelopesUpTo.QueryContext(context.Background(), recipient, upto)
	if err != nil {
		return 0, fmt.Errorf("deleting envelopes: %w", err)
	}
	var n, bytes int64
	for rows.Next() {
		var size int64
		if err := rows.Scan(&size); err != nil {
			rows.Close()
			return 0, fmt.Errorf("deleting envelopes: %w", err)
		}
		n, bytes = n+1, bytes+size
	}
	if err := rows.Close(); err != nil {
		return 0, fmt.Errorf("deleting envelopes: %w", err)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("deleting envelopes: %w", err)
	}
	if n > 0 {
		if _, err := exec(w.decPending, n, bytes, recipient); err != nil {
			return 0, fmt.Errorf("updating pending count: %w", err)
		}
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
// pending counts), idempotency keys older than 15 minutes before now, and
// anti-replay entries and link channels expired at now. It works in chunks through the writer
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
	links, err := db.pruneLoop(ctx, func(w *writer) (int, error) { return w.pruneLinksChunk(authCutoff) })
	if err != nil {
		return res, fmt.Errorf("pruning expired link channels: %w", err)
	}
	remoteCutoff, outboxCutoff := now.Add(-server.RemoteIDWindow).Unix(), now.Add(-server.OutboxKeep).Unix()
	if _, err := db.pruneLoop(ctx, func(w *writer) (int, error) { return w.pruneFederationChunk(remoteCutoff, outboxCutoff) }); err != nil {
		return res, fmt.Errorf("pruning remote message ids and the outbox: %w", err)
	}
	if res.Envelopes > 0 {
		db.log.Info("pruned expired envelopes", "envelopes", res.Envelopes, "message_ids", sent, "request_digests", auth, "link_channels", links)
	} else {
		db.log.Debug("pruned", "message_ids", sent, "request_digests", auth, "link_channels", links)
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
