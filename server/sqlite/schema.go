package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
)

// ErrSchemaTooNew is returned by Open for a database migrated by a newer
// version of this code.
var ErrSchemaTooNew = errors.New("database schema is newer than this program; upgrade the program")

// migrations are the schema steps in order: migrations[i] takes a database
// from user_version i to i+1. Never edit or reorder a released step; append
// a new one.
var migrations = []string{
	// 1: users, inboxes, idempotency keys and the anti-replay cache.
	//
	// The layout keeps down the pages each append dirties, since every
	// dirty page is a WAL frame to write at commit and later to checkpoint.
	// Counters live in a narrow table; envelopes and idempotency keys are
	// rowid tables filled in arrival order (a batch's rows share the last
	// pages), with small indexes for the lookups by key, which are the only
	// inserts at random places.
	`
CREATE TABLE users (
	handle     TEXT    PRIMARY KEY,
	primary_id TEXT    NOT NULL UNIQUE,
	server     TEXT    NOT NULL,
	alg        TEXT    NOT NULL,
	key        BLOB    NOT NULL,
	enc_key    BLOB    NOT NULL,
	created_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- inboxes holds each user's inbox counters, which every append updates. A
-- narrow table of their own packs the counters of about 150 inboxes into a
-- page, so a batch of appends dirties few pages for them.
CREATE TABLE inboxes (
	handle   TEXT    PRIMARY KEY REFERENCES users (handle),
	-- last_seq is the last seq given to this inbox. It is kept, not taken
	-- as max(envelopes.seq), so that a seq is never reused after an ack.
	last_seq INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
	-- pending counts this inbox's envelopes, for the inbox_full check.
	pending  INTEGER NOT NULL DEFAULT 0 CHECK (pending >= 0)
) STRICT, WITHOUT ROWID;

-- envelopes are stored in the order they arrive (id); the unique index
-- finds an inbox's envelopes by seq.
CREATE TABLE envelopes (
	id          INTEGER PRIMARY KEY, -- the rowid: in the order of arrival
	recipient   TEXT    NOT NULL REFERENCES inboxes (handle),
	seq         INTEGER NOT NULL,
	sender      TEXT    NOT NULL,
	msg_id      TEXT    NOT NULL,
	received_at INTEGER NOT NULL, -- Unix seconds
	message     BLOB    NOT NULL,
	UNIQUE (recipient, seq)
) STRICT;
CREATE INDEX envelopes_received_at ON envelopes (received_at);

-- sent_ids answers a retried message with its original seq. It is kept
-- apart from envelopes so that a retry after an ack still finds it, and is
-- pruned after idempotencyWindow, oldest id first: ids follow created_at
-- (unless the clock steps back, which only keeps some entries longer), so
-- it needs no index on created_at.
CREATE TABLE sent_ids (
	id         INTEGER PRIMARY KEY, -- the rowid: in the order of arrival
	sender     TEXT    NOT NULL,
	msg_id     TEXT    NOT NULL,
	recipient  TEXT    NOT NULL,
	seq        INTEGER NOT NULL,
	digest     BLOB    NOT NULL, -- sha256 of the stored message
	created_at INTEGER NOT NULL, -- Unix seconds, also the envelope's received_at
	UNIQUE (sender, msg_id)
) STRICT;

-- used_auth is the replay cache of request signatures.
CREATE TABLE used_auth (
	digest     BLOB    PRIMARY KEY,
	expires_at INTEGER NOT NULL -- Unix seconds
) STRICT, WITHOUT ROWID;
CREATE INDEX used_auth_expires_at ON used_auth (expires_at);
`,
	// 2: Web Push subscriptions.
	`
CREATE TABLE push_subscriptions (
	handle     TEXT    NOT NULL REFERENCES users (handle),
	endpoint   TEXT    NOT NULL,
	p256dh     BLOB    NOT NULL,
	auth       BLOB    NOT NULL,
	-- Unix nanoseconds: eviction of the oldest needs an order that
	-- subscriptions made within one second still have.
	created_ns INTEGER NOT NULL,
	PRIMARY KEY (handle, endpoint)
) STRICT, WITHOUT ROWID;
`,
	// 3: the bytes each inbox holds, for its byte cap; a table the
	// readiness probe writes to and empties in one transaction; the key
	// documents verified.
	`
ALTER TABLE inboxes ADD COLUMN pending_bytes INTEGER NOT NULL DEFAULT 0 CHECK (pending_bytes >= 0);
UPDATE inboxes SET pending_bytes = (
	SELECT coalesce(sum(length(message)), 0) FROM envelopes WHERE recipient = inboxes.handle);
CREATE TABLE write_probe (bytes BLOB NOT NULL) STRICT;

-- key_checkpoints holds the highest key document this server verified
-- per identity, so that a restart cannot take an older one.
CREATE TABLE key_checkpoints (
	primary_id TEXT    PRIMARY KEY,
	version    INTEGER NOT NULL CHECK (version >= 1),
	document   BLOB    NOT NULL
) STRICT, WITHOUT ROWID;
`,
	// 4: acknowledgement points, one per device (signing key) of an inbox:
	// an envelope is deleted once every device's point has passed it.
	`
CREATE TABLE ack_points (
	handle TEXT    NOT NULL REFERENCES inboxes (handle),
	device TEXT    NOT NULL, -- server.DeviceID: "<alg>:<base64url key>"
	upto   INTEGER NOT NULL CHECK (upto >= 0),
	PRIMARY KEY (handle, device)
) STRICT, WITHOUT ROWID;
`,
	// 5: link channels, the device-linking mailboxes (POST /v1/link).
	// (Self-contained, so it can be renumbered after steps added alongside.)
	linkChannelsSchema,
	// 6: attachment blobs (their bytes are files in <db>.blobs/) and the
	// envelopes that name them. A reference goes with its envelope (ON
	// DELETE CASCADE), so acknowledging and expiring release it with no
	// code of their own; a blob that was referenced and has none left is
	// deleted by PruneBlobs.
	`
CREATE TABLE blobs (
	id         TEXT    PRIMARY KEY,
	uploader   TEXT    NOT NULL REFERENCES users (handle),
	size       INTEGER NOT NULL CHECK (size >= 0),
	sha256     BLOB    NOT NULL,
	created_at INTEGER NOT NULL, -- Unix seconds
	-- referenced is 1 once a stored envelope named the blob.
	referenced INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;
CREATE INDEX blobs_created_at ON blobs (created_at);

CREATE TABLE blob_refs (
	envelope_id INTEGER NOT NULL REFERENCES envelopes (id) ON DELETE CASCADE,
	blob_id     TEXT    NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
	PRIMARY KEY (envelope_id, blob_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX blob_refs_blob_id ON blob_refs (blob_id);
`,
	// 7: federation (self-contained, like step 5).
	federationSchema,
}

// migrate brings the database on conn up to len(steps), one step per
// transaction, recording progress in PRAGMA user_version. It returns the
// resulting version.
func migrate(ctx context.Context, conn *sql.Conn, steps []string, log *slog.Logger) (int, error) {
	for {
		version, done, err := migrateOnce(ctx, conn, steps, log)
		if err != nil || done {
			return version, err
		}
	}
}

// migrateOnce applies the next step, if any. It reads user_version inside
// the (immediate) transaction, so two processes opening one file cannot both
// apply a step.
func migrateOnce(ctx context.Context, conn *sql.Conn, steps []string, log *slog.Logger) (version int, done bool, err error) {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return 0, false, fmt.Errorf("beginning migration: %w", err)
	}
	defer tx.Rollback()
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return 0, false, fmt.Errorf("reading schema version: %w", err)
	}
	switch {
	case version > len(steps):
		return version, false, fmt.Errorf("%w (database at version %d, this program knows up to %d)", ErrSchemaTooNew, version, len(steps))
	case version == len(steps):
		return version, true, nil
	}
	if _, err := tx.ExecContext(ctx, steps[version]); err != nil {
		return version, false, fmt.Errorf("applying schema step %d: %w", version+1, err)
	}
	// PRAGMA takes no bound parameters; version is an int.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", version+1)); err != nil {
		return version, false, fmt.Errorf("recording schema version %d: %w", version+1, err)
	}
	if err := tx.Commit(); err != nil {
		return version, false, fmt.Errorf("committing schema step %d: %w", version+1, err)
	}
	log.Info("migrated database schema", "version", version+1)
	return version + 1, false, nil
}
