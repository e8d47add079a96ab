package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"kez.lat/chat/server"
)

// keyLogMigrations are the sig-server database's schema steps, kept apart
// from the chat server's: the two run as separate processes on separate
// files. Never edit or reorder a released step; append a new one.
var keyLogMigrations = []string{
	// 1: the chains of key documents, one row per version.
	`
CREATE TABLE key_documents (
	primary_id TEXT    NOT NULL,
	version    INTEGER NOT NULL CHECK (version >= 1),
	hash       BLOB    NOT NULL, -- sha256 of the canonical payload
	document   BLOB    NOT NULL, -- {"payload":...,"signature":...}
	created_at INTEGER NOT NULL, -- Unix seconds
	PRIMARY KEY (primary_id, version)
) STRICT, WITHOUT ROWID;
`,
}

// KeyLog is a server.KeyStore on one SQLite file: the sig-server's log.
// Appends are rare (a person adds or revokes a device), so a mutex and an
// immediate transaction serialize them; reads run alongside in WAL mode.
type KeyLog struct {
	path string
	log  *slog.Logger
	db   *sql.DB
	mu   sync.Mutex // serializes appends
}

var _ server.KeyStore = (*KeyLog)(nil)

// OpenKeyLog opens (creating with mode 0600 if needed) the key log at path
// and migrates its schema. A nil log discards.
func OpenKeyLog(ctx context.Context, path string, log *slog.Logger) (*KeyLog, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := createPrivate(path); err != nil {
		return nil, fmt.Errorf("creating key log %s: %w", path, err)
	}
	db, err := sql.Open("sqlite", dsn(path, []string{
		fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS),
		"journal_mode(WAL)",
		"synchronous(FULL)",
	}, "_txlock=immediate"))
	if err != nil {
		return nil, fmt.Errorf("opening key log %s: %w", path, err)
	}
	db.SetMaxOpenConns(4)
	db.SetConnMaxLifetime(0)
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("connecting to key log %s: %w", path, err)
	}
	version, err := migrate(ctx, conn, keyLogMigrations, log)
	conn.Close()
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migrating key log %s: %w", path, err)
	}
	log.Info("opened key log", "path", path, "schema_version", version)
	return &KeyLog{path: path, log: log, db: db}, nil
}

// AppendKeyDocument stores d if it follows its identity's latest document,
// checked and inserted in one immediate transaction.
func (k *KeyLog) AppendKeyDocument(ctx context.Context, d *server.KeyDocument) (duplicate bool, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	tx, err := k.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("beginning append to %s: %w", k.path, err)
	}
	defer tx.Rollback()
	var latest *server.KeyDocument
	var raw []byte
	switch err := tx.QueryRowContext(ctx, `
		SELECT document FROM key_documents WHERE primary_id = ?
		ORDER BY version DESC LIMIT 1`, d.PrimaryID).Scan(&raw); {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return false, fmt.Errorf("reading latest version of %s: %w", d.PrimaryID, err)
	default:
		if latest, err = parseStored(raw); err != nil {
			return false, err
		}
	}
	if latest != nil && d.Version <= latest.Version {
		var hash []byte
		if err := tx.QueryRowContext(ctx, `SELECT hash FROM key_documents WHERE primary_id = ? AND version = ?`,
			d.PrimaryID, d.Version).Scan(&hash); err != nil {
			return false, fmt.Errorf("reading version %d of %s: %w", d.Version, d.PrimaryID, err)
		}
		if !bytes.Equal(hash, d.Hash) {
			return false, server.ForkError(d)
		}
		return true, nil
	}
	if err := d.Follows(latest); err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO key_documents (primary_id, version, hash, document, created_at) VALUES (?, ?, ?, ?, ?)`,
		d.PrimaryID, int64(d.Version), d.Hash, []byte(d.Signed), time.Now().Unix()); err != nil {
		if _, ok := uniqueViolation(err); ok { // another process shares the file
			return false, server.ForkError(d)
		}
		return false, fmt.Errorf("inserting version %d of %s: %w", d.Version, d.PrimaryID, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("committing version %d of %s: %w", d.Version, d.PrimaryID, err)
	}
	return false, nil
}

// KeyDocument returns one version of primaryID's chain.
func (k *KeyLog) KeyDocument(ctx context.Context, primaryID string, version uint64) (*server.KeyDocument, error) {
	var raw []byte
	err := k.db.QueryRowContext(ctx, `SELECT document FROM key_documents WHERE primary_id = ? AND version = ?`,
		primaryID, int64(min(version, server.MaxKeyVersion+1))).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, server.Errorf(server.CodeUnknownIdentity, "%s has no version %d", primaryID, version)
	}
	if err != nil {
		return nil, fmt.Errorf("reading version %d of %s: %w", version, primaryID, err)
	}
	return parseStored(raw)
}

// LatestKeyDocument returns primaryID's highest version.
func (k *KeyLog) LatestKeyDocument(ctx context.Context, primaryID string) (*server.KeyDocument, error) {
	var raw []byte
	err := k.db.QueryRowContext(ctx, `
		SELECT document FROM key_documents WHERE primary_id = ?
		ORDER BY version DESC LIMIT 1`, primaryID).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, server.Errorf(server.CodeUnknownIdentity, "%s has published no key document here", primaryID)
	}
	if err != nil {
		return nil, fmt.Errorf("reading latest version of %s: %w", primaryID, err)
	}
	return parseStored(raw)
}

// KeyDocuments returns up to limit of primaryID's versions from from on.
func (k *KeyLog) KeyDocuments(ctx context.Context, primaryID string, from uint64, limit int) ([]*server.KeyDocument, error) {
	rows, err := k.db.QueryContext(ctx, `
		SELECT document FROM key_documents WHERE primary_id = ? AND version >= ?
		ORDER BY version LIMIT ?`, primaryID, int64(min(from, server.MaxKeyVersion+1)), limit)
	if err != nil {
		return nil, fmt.Errorf("reading the log of %s: %w", primaryID, err)
	}
	defer rows.Close()
	var docs []*server.KeyDocument
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, fmt.Errorf("reading the log of %s: %w", primaryID, err)
		}
		d, err := parseStored(raw)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the log of %s: %w", primaryID, err)
	}
	return docs, nil
}

// parseStored verifies a stored document again, so a damaged or edited
// database file is found rather than served.
func parseStored(raw []byte) (*server.KeyDocument, error) {
	d, err := server.ParseKeyDocumentJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("stored key document does not verify: %v", err)
	}
	return d, nil
}

// Ping fails while the database cannot serve.
func (k *KeyLog) Ping(ctx context.Context) error {
	var one int
	if err := k.db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("pinging key log %s: %w", k.path, err)
	}
	return nil
}

// Close checkpoints the WAL and closes the database.
func (k *KeyLog) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.db.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		k.log.Warn("checkpointing key log", "path", k.path, "err", err)
	}
	if err := k.db.Close(); err != nil {
		return fmt.Errorf("closing key log %s: %w", k.path, err)
	}
	return nil
}
