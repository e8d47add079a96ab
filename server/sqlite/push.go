package sqlite

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"kez.lat/chat/server"
)

// Push subscriptions change rarely (a browser subscribes once), so their
// statements are not prepared on the writer.

// SavePushSubscription upserts sub by (handle, endpoint) and evicts the
// handle's oldest subscriptions beyond max.
func (db *DB) SavePushSubscription(ctx context.Context, sub *server.PushSubscription, max int) error {
	err := db.submit(ctx, func(w *writer) error {
		bg := context.Background() // see writer: statements never take the caller's ctx
		if _, err := w.conn.ExecContext(bg, `INSERT INTO push_subscriptions (handle, endpoint, p256dh, auth, created_ns)
			VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (handle, endpoint) DO UPDATE SET p256dh = excluded.p256dh, auth = excluded.auth, created_ns = excluded.created_ns`,
			sub.Handle, sub.Endpoint, sub.P256dh, sub.Auth, sub.CreatedAt.UnixNano()); err != nil {
			return fmt.Errorf("upserting: %w", err)
		}
		if max <= 0 {
			return nil
		}
		if _, err := w.conn.ExecContext(bg, `DELETE FROM push_subscriptions WHERE handle = ?1 AND endpoint NOT IN (
			SELECT endpoint FROM push_subscriptions WHERE handle = ?1 ORDER BY created_ns DESC, endpoint LIMIT ?2)`,
			sub.Handle, max); err != nil {
			return fmt.Errorf("evicting the oldest: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("saving push subscription of %s: %w", sub.Handle, err)
	}
	return nil
}

// DeletePushSubscription deletes handle's subscription at endpoint.
func (db *DB) DeletePushSubscription(ctx context.Context, handle, endpoint string) (bool, error) {
	var n int64
	err := db.submit(ctx, func(w *writer) error {
		res, err := w.conn.ExecContext(context.Background(),
			"DELETE FROM push_subscriptions WHERE handle = ? AND endpoint = ?", handle, endpoint)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("deleting push subscription of %s: %w", handle, err)
	}
	return n > 0, nil
}

// PushSubscriptions returns handle's subscriptions, oldest first.
func (db *DB) PushSubscriptions(ctx context.Context, handle string) ([]*server.PushSubscription, error) {
	rows, err := db.rdb.QueryContext(ctx, `SELECT endpoint, p256dh, auth, created_ns FROM push_subscriptions
		WHERE handle = ? ORDER BY created_ns, endpoint`, handle)
	if err != nil {
		return nil, fmt.Errorf("listing push subscriptions of %s: %w", handle, err)
	}
	defer rows.Close()
	var subs []*server.PushSubscription
	for rows.Next() {
		s := &server.PushSubscription{Handle: handle}
		var created int64
		if err := rows.Scan(&s.Endpoint, &s.P256dh, &s.Auth, &created); err != nil {
			return nil, fmt.Errorf("reading push subscription of %s: %w", handle, err)
		}
		s.P256dh, s.Auth = bytes.Clone(s.P256dh), bytes.Clone(s.Auth)
		s.CreatedAt = time.Unix(0, created)
		subs = append(subs, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing push subscriptions of %s: %w", handle, err)
	}
	return subs, nil
}
