package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// KeyCheckpoint returns the highest key document of primaryID this server
// verified, nil when there is none.
func (db *DB) KeyCheckpoint(ctx context.Context, primaryID string) ([]byte, error) {
	var doc []byte
	err := db.rdb.QueryRowContext(ctx, "SELECT document FROM key_checkpoints WHERE primary_id = ?", primaryID).Scan(&doc)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("reading the key checkpoint of %s: %w", primaryID, err)
	}
	return doc, nil
}

// SaveKeyCheckpoint stores doc as primaryID's checkpoint unless one of a
// version as high is stored.
func (db *DB) SaveKeyCheckpoint(ctx context.Context, primaryID string, version uint64, doc []byte) error {
	d := bytes.Clone(doc)
	err := db.submit(ctx, func(w *writer) error {
		_, err := exec(w.saveCheckpoint, primaryID, int64(version), d)
		return err
	})
	if err != nil {
		return fmt.Errorf("saving the key checkpoint of %s at version %d: %w", primaryID, version, err)
	}
	return nil
}
