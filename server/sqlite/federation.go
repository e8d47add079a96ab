package sqlite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"kez.lat/chat/server"
)

// federationSchema is the schema step of federation: the outbox (units,
// one per send and destination server, holding documents), the ids of
// remote senders' messages (kept for the federation window rather than
// sent_ids' 15 minutes), the pins of remote identities, people's privacy
// settings, and blobs that federated messages name (kept until the
// retention, since their remote readers are not known).
const federationSchema = `
CREATE TABLE outbox_units (
	id            INTEGER PRIMARY KEY, -- the queue order
	domain        TEXT    NOT NULL,
	sender        TEXT    NOT NULL REFERENCES users (handle),
	state         TEXT    NOT NULL CHECK (state IN ('queued', 'delivered', 'failed')),
	attempts      INTEGER NOT NULL DEFAULT 0,
	next_at       INTEGER NOT NULL, -- Unix seconds: the next attempt, while queued
	expires_at    INTEGER NOT NULL, -- Unix seconds: the oldest document's ts + the window
	created_at    INTEGER NOT NULL,
	updated_at    INTEGER NOT NULL,
	error_code    TEXT    NOT NULL DEFAULT '',
	error_message TEXT    NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX outbox_units_queue ON outbox_units (domain, sender, id) WHERE state = 'queued';
CREATE INDEX outbox_units_due ON outbox_units (next_at) WHERE state = 'queued';
CREATE INDEX outbox_units_sender ON outbox_units (sender, id);
CREATE INDEX outbox_units_done ON outbox_units (updated_at) WHERE state <> 'queued';

CREATE TABLE outbox_docs (
	id        INTEGER PRIMARY KEY, -- the order within a unit
	unit      INTEGER NOT NULL REFERENCES outbox_units (id) ON DELETE CASCADE,
	sender    TEXT    NOT NULL,
	msg_id    TEXT    NOT NULL,
	recipient TEXT    NOT NULL, -- the handle on the unit's domain
	digest    BLOB    NOT NULL, -- sha256 of the document
	message   BLOB    NOT NULL, -- emptied once the unit is delivered or failed
	UNIQUE (sender, msg_id)
) STRICT;
CREATE INDEX outbox_docs_unit ON outbox_docs (unit);

CREATE TABLE remote_sent_ids (
	sender     TEXT    NOT NULL, -- handle@domain
	msg_id     TEXT    NOT NULL,
	recipient  TEXT    NOT NULL,
	seq        INTEGER NOT NULL,
	digest     BLOB    NOT NULL,
	created_at INTEGER NOT NULL,
	PRIMARY KEY (sender, msg_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX remote_sent_ids_created_at ON remote_sent_ids (created_at);

CREATE TABLE remote_pins (
	address    TEXT    PRIMARY KEY,
	primary_id TEXT    NOT NULL,
	alg        TEXT    NOT NULL,
	key        BLOB    NOT NULL,
	pinned_at  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE privacy (
	handle  TEXT PRIMARY KEY REFERENCES users (handle),
	setting BLOB NOT NULL -- server.Privacy as JSON
) STRICT, WITHOUT ROWID;

ALTER TABLE blobs ADD COLUMN federated INTEGER NOT NULL DEFAULT 0;
`

var _ server.FederationStore = (*DB)(nil)

// Federation's statements run on few, small requests, so they are not
// prepared on the writer; the writer runs each request in a savepoint of
// its own, which makes its checks and writes atomic.

// Enqueue stores docs in the outbox; see server.FederationStore.
func (db *DB) Enqueue(ctx context.Context, docs []*server.OutboundDoc, limits server.OutboxLimits) ([]bool, error) {
	items := make([]server.OutboundDoc, len(docs))
	digests := make([][]byte, len(docs))
	for i, d := range docs {
		items[i] = *d
		items[i].Message = bytes.Clone(d.Message)
		items[i].Blobs = append([]string(nil), d.Blobs...)
		sum := sha256.Sum256(d.Message)
		digests[i] = sum[:]
	}
	dups := make([]bool, len(docs))
	err := db.submit(ctx, func(w *writer) error {
		bg := context.Background() // see writer: statements never take the caller's ctx
		clear(dups)
		var newDocs, newBytes int64
		for i, it := range items {
			var digest []byte
			err := w.conn.QueryRowContext(bg, "SELECT digest FROM outbox_docs WHERE sender = ? AND msg_id = ?", it.Sender, it.ID).Scan(&digest)
			switch {
			case err == nil && bytes.Equal(digest, digests[i]):
				dups[i] = true
				continue
			case err == nil:
				return server.AtIndex(server.Errorf(server.CodeMessageIDConflict,
					"message id %q from %s was already used for a different message", it.ID, it.Sender), i)
			case !errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("looking up message id %q: %w", it.ID, err)
			}
			newDocs++
			newBytes += int64(len(it.Message))
		}
		if newDocs == 0 {
			return nil
		}
		sender := items[0].Sender
		var queued, queuedBytes int64
		if err := w.conn.QueryRowContext(bg, `SELECT count(*), coalesce(sum(length(d.message)), 0)
			FROM outbox_units u JOIN outbox_docs d ON d.unit = u.id WHERE u.sender = ? AND u.state = 'queued'`, sender).
			Scan(&queued, &queuedBytes); err != nil {
			return fmt.Errorf("counting the outbox of %s: %w", sender, err)
		}
		if (limits.MaxDocs > 0 && queued+newDocs > int64(limits.MaxDocs)) || (limits.MaxBytes > 0 && queuedBytes+newBytes > limits.MaxBytes) {
			return &server.Error{Code: server.CodeOutboxFull, RetryAfter: time.Minute,
				Message: fmt.Sprintf("%s has %d documents of %d bytes queued for other servers", sender, queued, queuedBytes)}
		}
		now := w.batchTime.Unix()
		units := make(map[string]int64)
		for i, it := range items {
			if dups[i] {
				continue
			}
			for _, b := range it.Blobs {
				res, err := w.conn.ExecContext(bg, "UPDATE blobs SET federated = 1, referenced = 1 WHERE id = ? AND uploader = ?", b, it.Sender)
				if err != nil {
					return fmt.Errorf("keeping blob %s: %w", b, err)
				}
				if n, _ := res.RowsAffected(); n == 0 {
					return server.AtIndex(server.Errorf(server.CodeUnknownBlob, "no blob %q uploaded by %s", b, it.Sender), i)
				}
			}
			expires := it.TS.Add(server.FederationWindow).Unix()
			unit, ok := units[it.Domain]
			if !ok {
				if err := w.conn.QueryRowContext(bg, `INSERT INTO outbox_units (domain, sender, state, next_at, expires_at, created_at, updated_at)
					VALUES (?, ?, 'queued', ?, ?, ?, ?) RETURNING id`, it.Domain, it.Sender, now, expires, now, now).Scan(&unit); err != nil {
					return fmt.Errorf("queueing for %s: %w", it.Domain, err)
				}
				units[it.Domain] = unit
			} else if _, err := w.conn.ExecContext(bg, "UPDATE outbox_units SET expires_at = min(expires_at, ?) WHERE id = ?", expires, unit); err != nil {
				return fmt.Errorf("queueing for %s: %w", it.Domain, err)
			}
			if _, err := w.conn.ExecContext(bg, `INSERT INTO outbox_docs (unit, sender, msg_id, recipient, digest, message)
				VALUES (?, ?, ?, ?, ?, ?)`, unit, it.Sender, it.ID, it.Recipient, digests[i], it.Message); err != nil {
				return fmt.Errorf("queueing message %q: %w", it.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queueing %d documents: %w", len(docs), err)
	}
	return dups, nil
}

// DueDeliveries reads each queue's oldest unit that is due, from the read
// pool; see server.FederationStore.
func (db *DB) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]*server.Delivery, error) {
	rows, err := db.rdb.QueryContext(ctx, `SELECT u.id, u.domain, u.sender, u.attempts, u.expires_at FROM outbox_units u
		WHERE u.state = 'queued' AND u.next_at <= ?1
			AND u.id = (SELECT min(v.id) FROM outbox_units v WHERE v.state = 'queued' AND v.domain = u.domain AND v.sender = u.sender)
		ORDER BY u.id LIMIT ?2`, now.Unix(), limit)
	if err != nil {
		return nil, fmt.Errorf("reading due deliveries: %w", err)
	}
	var ds []*server.Delivery
	for rows.Next() {
		d := &server.Delivery{}
		var expires int64
		if err := rows.Scan(&d.Unit, &d.Domain, &d.Sender, &d.Attempts, &expires); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading due deliveries: %w", err)
		}
		d.Expires = unixTime(expires)
		ds = append(ds, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading due deliveries: %w", err)
	}
	return ds, nil
}

// DeliveryMessages reads what one request carries from the read pool;
// see server.FederationStore.
func (db *DB) DeliveryMessages(ctx context.Context, d *server.Delivery, alone bool, maxDocs int, maxBytes int64) error {
	q := `SELECT d.unit, d.message FROM outbox_docs d JOIN outbox_units u ON u.id = d.unit
		WHERE u.state = 'queued' AND u.sender = ? AND u.domain = ? AND u.id >= ? ORDER BY u.id, d.id LIMIT ?`
	if alone {
		q = "SELECT unit, message FROM outbox_docs WHERE unit = ? ORDER BY id"
	}
	args := []any{d.Sender, d.Domain, d.Unit, maxDocs + 1}
	if alone {
		args = []any{d.Unit}
	}
	rows, err := db.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("reading unit %d: %w", d.Unit, err)
	}
	defer rows.Close()
	d.Units, d.Messages = nil, nil
	var unit int64 = -1
	var pending [][]byte // the documents of unit, added once it is whole
	var size int64
	take := func() bool {
		var n int64
		for _, m := range pending {
			n += int64(len(m))
		}
		if len(d.Units) > 0 && (len(d.Messages)+len(pending) > maxDocs || size+n > maxBytes) {
			return false
		}
		d.Units, d.Messages, size = append(d.Units, unit), append(d.Messages, pending...), size+n
		return true
	}
	for rows.Next() {
		var u int64
		var m []byte
		if err := rows.Scan(&u, &m); err != nil {
			return fmt.Errorf("reading unit %d: %w", d.Unit, err)
		}
		if u != unit {
			if unit >= 0 && !take() {
				return nil
			}
			unit, pending = u, nil
		}
		pending = append(pending, m)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading unit %d: %w", d.Unit, err)
	}
	// The last unit read is whole only if the read was not cut short by
	// the limit (or it is the first, which goes whatever its size).
	if unit >= 0 && (len(d.Units) == 0 || len(d.Messages)+len(pending) <= maxDocs) {
		take()
	}
	return nil
}

// FinishDelivery records an attempt; a unit delivered or failed keeps its
// entries (for the outbox) but not their bytes.
func (db *DB) FinishDelivery(ctx context.Context, units []int64, r server.DeliveryResult) error {
	err := db.submit(ctx, func(w *writer) error {
		bg := context.Background()
		for _, unit := range units {
			// Only a queued unit takes a result: one delivered stays so.
			res, err := w.conn.ExecContext(bg, `UPDATE outbox_units SET state = ?, attempts = attempts + 1, next_at = ?,
				updated_at = ?, error_code = ?, error_message = ? WHERE id = ? AND state = 'queued'`,
				r.State, r.NextAt.Unix(), r.At.Unix(), r.Code, r.Message, unit)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 || r.State == server.OutboxQueued {
				continue
			}
			if _, err = w.conn.ExecContext(bg, "UPDATE outbox_docs SET message = x'' WHERE unit = ?", unit); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("recording delivery of units %v: %w", units, err)
	}
	return nil
}

// OutboxEntries reads sender's entries from the read pool.
func (db *DB) OutboxEntries(ctx context.Context, sender string, limit int) ([]*server.OutboxEntry, error) {
	rows, err := db.rdb.QueryContext(ctx, `SELECT d.recipient, u.domain, d.msg_id, u.state, u.attempts, u.created_at,
			u.updated_at, u.error_code, u.error_message
		FROM outbox_units u JOIN outbox_docs d ON d.unit = u.id WHERE u.sender = ? ORDER BY u.id DESC, d.id DESC LIMIT ?`, sender, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the outbox of %s: %w", sender, err)
	}
	defer rows.Close()
	entries := []*server.OutboxEntry{}
	for rows.Next() {
		e := &server.OutboxEntry{}
		var recipient, domain, code, msg string
		if err := rows.Scan(&recipient, &domain, &e.ID, &e.State, &e.Attempts, &e.QueuedAt, &e.UpdatedAt, &code, &msg); err != nil {
			return nil, fmt.Errorf("reading the outbox of %s: %w", sender, err)
		}
		e.To = recipient + "@" + domain
		if code != "" {
			e.Error = &server.OutboxError{Code: code, Message: msg}
		}
		entries = append(entries, e)
	}
	return entries, rows.Err()
}

// PinRemote records pin unless its address has one; see
// server.FederationStore.
func (db *DB) PinRemote(ctx context.Context, pin *server.RemotePin) (*server.RemotePin, error) {
	p := *pin
	p.Key = bytes.Clone(pin.Key)
	got := &server.RemotePin{Address: p.Address}
	err := db.submit(ctx, func(w *writer) error {
		bg := context.Background()
		if _, err := w.conn.ExecContext(bg, `INSERT INTO remote_pins (address, primary_id, alg, key, pinned_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (address) DO NOTHING`, p.Address, p.PrimaryID, p.Alg, p.Key, w.batchTime.Unix()); err != nil {
			return err
		}
		return w.conn.QueryRowContext(bg, "SELECT primary_id, alg, key FROM remote_pins WHERE address = ?", p.Address).
			Scan(&got.PrimaryID, &got.Alg, &got.Key)
	})
	if err != nil {
		return nil, fmt.Errorf("pinning %s: %w", p.Address, err)
	}
	return got, nil
}

// Unpin deletes address's pin; see server.FederationStore.
func (db *DB) Unpin(ctx context.Context, address string) (bool, error) {
	var n int64
	err := db.submit(ctx, func(w *writer) error {
		res, err := w.conn.ExecContext(context.Background(), "DELETE FROM remote_pins WHERE address = ?", address)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("unpinning %s: %w", address, err)
	}
	return n > 0, nil
}

// Privacy reads handle's setting from the read pool.
func (db *DB) Privacy(ctx context.Context, handle string) (*server.Privacy, error) {
	var raw []byte
	err := db.rdb.QueryRowContext(ctx, "SELECT setting FROM privacy WHERE handle = ?", handle).Scan(&raw)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return &server.Privacy{Strangers: server.StrangersAccept, Known: []string{}, Blocked: []string{}}, nil
	case err != nil:
		return nil, fmt.Errorf("reading the privacy setting of %s: %w", handle, err)
	}
	var p server.Privacy
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("decoding the privacy setting of %s: %w", handle, err)
	}
	return &p, nil
}

// SavePrivacy replaces handle's setting.
func (db *DB) SavePrivacy(ctx context.Context, handle string, p *server.Privacy) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encoding the privacy setting of %s: %w", handle, err)
	}
	err = db.submit(ctx, func(w *writer) error {
		_, err := w.conn.ExecContext(context.Background(), `INSERT INTO privacy (handle, setting) VALUES (?, ?)
			ON CONFLICT (handle) DO UPDATE SET setting = excluded.setting`, handle, raw)
		return err
	})
	if err != nil {
		return fmt.Errorf("saving the privacy setting of %s: %w", handle, err)
	}
	return nil
}

// remoteSender reports whether sender is a person on another server,
// whose message ids are kept for the federation window.
func remoteSender(sender string) bool { return strings.Contains(sender, "@") }

// pruneFederationChunk deletes up to pruneChunk remote message ids past
// their window, or outbox units delivered or failed long enough ago.
func (w *writer) pruneFederationChunk(idsBefore, doneBefore int64) (int, error) {
	bg := context.Background()
	res, err := w.conn.ExecContext(bg, `DELETE FROM remote_sent_ids WHERE (sender, msg_id) IN (
		SELECT sender, msg_id FROM remote_sent_ids WHERE created_at < ? LIMIT ?)`, idsBefore, pruneChunk)
	if err != nil {
		return 0, err
	}
	ids, _ := res.RowsAffected()
	res, err = w.conn.ExecContext(bg, `DELETE FROM outbox_units WHERE id IN (
		SELECT id FROM outbox_units WHERE state <> 'queued' AND updated_at < ? LIMIT ?)`, doneBefore, pruneChunk)
	if err != nil {
		return 0, err
	}
	units, _ := res.RowsAffected()
	return int(max(ids, units)), nil
}
