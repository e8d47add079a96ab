package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"kez.lat/chat/server"
)

// Snapshot writes a consistent copy of the database at src, which a server
// may be writing to at the same time, to dst (which must not exist):
// VACUUM INTO reads one transaction's view of the database, so writers go
// on while it runs and the copy holds every transaction committed before
// it began and none after. The copy is in rollback-journal mode, one file.
func Snapshot(ctx context.Context, src, dst string) error {
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("database to back up: %w", err)
	}
	// mode=rw: never create src; WAL readers need write access to -shm.
	db, err := sql.Open("sqlite", dsn(src, []string{fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS)}, "mode=rw"))
	if err != nil {
		return fmt.Errorf("opening %s: %w", src, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", dst); err != nil {
		return fmt.Errorf("copying %s to %s (VACUUM INTO): %w", src, dst, err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", src, err)
	}
	copyDB, err := sql.Open("sqlite", dsn(dst, nil, "mode=rw"))
	if err != nil {
		return fmt.Errorf("opening the copy %s: %w", dst, err)
	}
	defer copyDB.Close()
	var mode string
	if err := copyDB.QueryRowContext(ctx, "PRAGMA journal_mode = DELETE").Scan(&mode); err != nil {
		return fmt.Errorf("setting the copy %s to one file: %w", dst, err)
	}
	return copyDB.Close()
}

// DatabaseKind is what a database file holds, for VerifyFile.
type DatabaseKind int

const (
	// ChatDatabase is the chat server's database (Open).
	ChatDatabase DatabaseKind = iota
	// KeyLogDatabase is the sig-server's key log (OpenKeyLog).
	KeyLogDatabase
)

func (k DatabaseKind) String() string {
	if k == KeyLogDatabase {
		return "sig-server key log"
	}
	return "chat server database"
}

// VerifyReport is what VerifyFile checked.
type VerifyReport struct {
	SchemaVersion int
	// Identities and KeyDocuments count the key log's chains and their
	// documents, each verified (KeyLogDatabase only).
	Identities, KeyDocuments int
}

// VerifyFile checks, without changing it, that path is a sound database of
// kind that this program can open: PRAGMA integrity_check finds nothing, its
// schema is one this code wrote (not newer), and for a key log every
// identity's chain verifies as the sig-server verifies what it stores: each
// document's signature and fields (ParseKeyDocument), and each version
// following the one before (Follows).
func VerifyFile(ctx context.Context, path string, kind DatabaseKind) (VerifyReport, error) {
	var rep VerifyReport
	if _, err := os.Stat(path); err != nil {
		return rep, err
	}
	db, err := sql.Open("sqlite", dsn(path, []string{"query_only(1)"}, "mode=ro"))
	if err != nil {
		return rep, fmt.Errorf("opening %s: %w", path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return rep, fmt.Errorf("checking %s: %w", path, err)
	}
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			rows.Close()
			return rep, fmt.Errorf("checking %s: %w", path, err)
		}
		if line != "ok" {
			problems = append(problems, line)
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return rep, fmt.Errorf("checking %s: %w", path, err)
	}
	if len(problems) > 0 {
		if len(problems) > 5 {
			problems = append(problems[:5], fmt.Sprintf("and %d more", len(problems)-5))
		}
		return rep, fmt.Errorf("%s is damaged: integrity_check: %s", path, strings.Join(problems, "; "))
	}
	steps := migrations
	if kind == KeyLogDatabase {
		steps = keyLogMigrations
	}
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&rep.SchemaVersion); err != nil {
		return rep, fmt.Errorf("reading the schema version of %s: %w", path, err)
	}
	switch {
	case rep.SchemaVersion > len(steps):
		return rep, fmt.Errorf("%s has schema version %d: %w", path, rep.SchemaVersion, ErrSchemaTooNew)
	case rep.SchemaVersion < 1:
		return rep, fmt.Errorf("%s is not a %s (schema version %d)", path, kind, rep.SchemaVersion)
	}
	if kind == ChatDatabase {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
			return rep, fmt.Errorf("%s is not a %s: %w", path, kind, err)
		}
		return rep, nil
	}
	return rep, verifyChains(ctx, db, path, &rep)
}

// verifyChains reads every key document in chain order and checks each
// against the one before it.
func verifyChains(ctx context.Context, db *sql.DB, path string, rep *VerifyReport) error {
	rows, err := db.QueryContext(ctx, `SELECT primary_id, version, hash, document FROM key_documents ORDER BY primary_id, version`)
	if err != nil {
		return fmt.Errorf("%s is not a %s: %w", path, KeyLogDatabase, err)
	}
	defer rows.Close()
	var prev *server.KeyDocument
	for rows.Next() {
		var id string
		var version int64
		var hash, raw []byte
		if err := rows.Scan(&id, &version, &hash, &raw); err != nil {
			return fmt.Errorf("reading the key log %s: %w", path, err)
		}
		d, err := parseStored(raw)
		if err != nil {
			return fmt.Errorf("key log %s: %s version %d: %w", path, id, version, err)
		}
		if d.PrimaryID != id || d.Version != uint64(version) || !bytes.Equal(d.Hash, hash) {
			return fmt.Errorf("key log %s: the row of %s version %d holds a document of %s version %d, or a wrong hash", path, id, version, d.PrimaryID, d.Version)
		}
		if prev != nil && prev.PrimaryID != id {
			prev = nil
		}
		if err := d.Follows(prev); err != nil {
			return fmt.Errorf("key log %s: the chain of %s breaks at version %d: %w", path, id, version, err)
		}
		if prev == nil {
			rep.Identities++
		}
		rep.KeyDocuments++
		prev = d
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the key log %s: %w", path, err)
	}
	return nil
}

// Exists reports whether path, or a write-ahead log beside it, exists: a
// database is restored only where there is none.
func Exists(path string) (bool, error) {
	for _, p := range []string{path, path + "-wal"} {
		_, err := os.Lstat(p)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	return false, nil
}

// BlobDir is the directory of a chat database's blob files.
func BlobDir(dbPath string) string { return blobDir(dbPath) }

// BlobFile is a blob a chat database holds a row for; its bytes are the
// file BlobDir(db)/ID.
type BlobFile struct {
	ID     string
	Size   int64
	SHA256 []byte
}

// ListBlobs lists the blobs of the chat database at path, which no server
// uses (a Snapshot, or a file being restored): none when its schema
// predates attachments.
func ListBlobs(ctx context.Context, path string) ([]BlobFile, error) {
	db, err := sql.Open("sqlite", dsn(path, []string{"query_only(1)"}, "mode=ro"))
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	defer db.Close()
	var tables int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'blobs'").Scan(&tables); err != nil {
		return nil, fmt.Errorf("reading the schema of %s: %w", path, err)
	}
	if tables == 0 {
		return nil, nil
	}
	rows, err := db.QueryContext(ctx, "SELECT id, size, sha256 FROM blobs ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("listing the blobs of %s: %w", path, err)
	}
	defer rows.Close()
	var blobs []BlobFile
	for rows.Next() {
		var b BlobFile
		if err := rows.Scan(&b.ID, &b.Size, &b.SHA256); err != nil {
			return nil, fmt.Errorf("listing the blobs of %s: %w", path, err)
		}
		blobs = append(blobs, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing the blobs of %s: %w", path, err)
	}
	return blobs, nil
}

// DropBlobs deletes the rows of ids, and with them every reference to
// them, from the chat database at path, which no server uses: a restore
// drops the blobs whose files the backup does not hold (deleted after its
// snapshot, because every recipient had acknowledged them), so the
// restored database names no file it lacks. The messages stay; their
// attachments answer unknown_blob, as they would have on the live server.
func DropBlobs(ctx context.Context, path string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	db, err := sql.Open("sqlite", dsn(path, []string{"foreign_keys(1)"}, "mode=rw"))
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("dropping blobs from %s: %w", path, err)
	}
	defer tx.Rollback()
	for _, id := range ids {
		if _, err := tx.ExecContext(ctx, "DELETE FROM blobs WHERE id = ?", id); err != nil {
			return fmt.Errorf("dropping blob %s from %s: %w", id, path, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("dropping blobs from %s: %w", path, err)
	}
	return db.Close()
}
