package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"kez.lat/chat/server"
)

// linkChannelsSchema is the schema step that adds link channels. A rowid
// table: a slot holds up to 64 KiB, too much for the b-tree of a WITHOUT
// ROWID table.
const linkChannelsSchema = `
CREATE TABLE link_channels (
	id         INTEGER PRIMARY KEY,
	channel    TEXT    NOT NULL UNIQUE,
	handle     TEXT    NOT NULL,
	expires_at INTEGER NOT NULL, -- Unix seconds; open while now < expires_at
	request    BLOB,             -- NULL until written
	response   BLOB              -- NULL until written
) STRICT;
CREATE INDEX link_channels_handle ON link_channels (handle, expires_at);
CREATE INDEX link_channels_expires_at ON link_channels (expires_at);
`

// Link channels are few and short-lived, so their statements are not
// prepared on the writer. The writer runs each request alone, which makes
// every check and write below atomic.

// OpenLink inserts l unless its channel is open or its handle holds max
// open channels; an expired channel of the same id is replaced.
func (db *DB) OpenLink(ctx context.Context, l *server.Link, now time.Time, max int) error {
	err := db.submit(ctx, func(w *writer) error {
		bg := context.Background() // see writer: statements never take the caller's ctx
		var open int
		err := w.conn.QueryRowContext(bg, "SELECT expires_at > ? FROM link_channels WHERE channel = ?", now.Unix(), l.Channel).Scan(&open)
		switch {
		case err == nil && open == 1:
			return server.Errorf(server.CodeLinkExists, "that link channel is open already")
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("looking the channel up: %w", err)
		}
		var held int
		if err := w.conn.QueryRowContext(bg, "SELECT count(*) FROM link_channels WHERE handle = ? AND expires_at > ?",
			l.Handle, now.Unix()).Scan(&held); err != nil {
			return fmt.Errorf("counting open channels: %w", err)
		}
		if held >= max {
			return &server.Error{Code: server.CodeTooManyLinks, RetryAfter: time.Minute,
				Message: fmt.Sprintf("%s has %d link channels open", l.Handle, held)}
		}
		if _, err := w.conn.ExecContext(bg, `INSERT INTO link_channels (channel, handle, expires_at) VALUES (?, ?, ?)
			ON CONFLICT (channel) DO UPDATE SET handle = excluded.handle, expires_at = excluded.expires_at,
				request = NULL, response = NULL`,
			l.Channel, l.Handle, l.Expires.Unix()); err != nil {
			return fmt.Errorf("inserting: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("opening link channel for %s: %w", l.Handle, err)
	}
	return nil
}

// WriteLink sets slot of channel if it is NULL and the channel is open.
func (db *DB) WriteLink(ctx context.Context, channel string, slot server.LinkSlot, data []byte, now time.Time) error {
	col := "request"
	if slot == server.LinkResponse {
		col = "response"
	}
	d := bytes.Clone(data)
	err := db.submit(ctx, func(w *writer) error {
		bg := context.Background()
		res, err := w.conn.ExecContext(bg, "UPDATE link_channels SET "+col+" = ? WHERE channel = ? AND expires_at > ? AND "+col+" IS NULL",
			d, channel, now.Unix())
		if err != nil {
			return fmt.Errorf("updating: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		var open int
		err = w.conn.QueryRowContext(bg, "SELECT 1 FROM link_channels WHERE channel = ? AND expires_at > ?", channel, now.Unix()).Scan(&open)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return server.Errorf(server.CodeUnknownLink, "no such link channel, or it expired")
		case err != nil:
			return fmt.Errorf("looking the channel up: %w", err)
		}
		return server.Errorf(server.CodeLinkUsed, "the %s slot was written already", slot)
	})
	if err != nil {
		return fmt.Errorf("writing the %s slot: %w", slot, err)
	}
	return nil
}

// Link reads channel from the read pool.
func (db *DB) Link(ctx context.Context, channel string, now time.Time) (*server.Link, error) {
	l := &server.Link{Channel: channel}
	var expires int64
	err := db.rdb.QueryRowContext(ctx, "SELECT handle, expires_at, request, response FROM link_channels WHERE channel = ?", channel).
		Scan(&l.Handle, &expires, &l.Request, &l.Response)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, server.Errorf(server.CodeUnknownLink, "no such link channel, or it expired")
	case err != nil:
		return nil, fmt.Errorf("reading link channel: %w", err)
	}
	l.Expires = unixTime(expires)
	if l.Expired(now) {
		return nil, server.Errorf(server.CodeUnknownLink, "no such link channel, or it expired")
	}
	return l, nil
}

// pruneLinksChunk deletes up to pruneChunk channels expired at cutoff.
func (w *writer) pruneLinksChunk(cutoff int64) (int, error) {
	res, err := w.conn.ExecContext(context.Background(),
		"DELETE FROM link_channels WHERE id IN (SELECT id FROM link_channels WHERE expires_at <= ? LIMIT ?)", cutoff, pruneChunk)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	return int(n), err
}
