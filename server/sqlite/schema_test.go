package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"testing"
)

// rawConn opens path without the store, for inspecting and preparing files.
func rawConn(t *testing.T, path string) *sql.Conn {
	t.Helper()
	db, err := sql.Open("sqlite", dsn(path, []string{"busy_timeout(5000)"}))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); db.Close() })
	return conn
}

func userVersion(t *testing.T, conn *sql.Conn) int {
	t.Helper()
	var v int
	if err := conn.QueryRowContext(context.Background(), "PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func tableExists(t *testing.T, conn *sql.Conn, name string) bool {
	t.Helper()
	var n int
	err := conn.QueryRowContext(context.Background(),
		"SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?", name).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func TestOpenMigratesAnEmptyFileToTheCurrentSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chat.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := Open(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	conn := rawConn(t, path)
	if v := userVersion(t, conn); v != len(migrations) {
		t.Fatalf("user_version = %d, want %d", v, len(migrations))
	}
	for _, table := range []string{"users", "inboxes", "envelopes", "sent_ids", "used_auth"} {
		if !tableExists(t, conn, table) {
			t.Fatalf("table %s missing", table)
		}
	}
	var mode string
	if err := conn.QueryRowContext(context.Background(), "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
}

func TestMigrateAppliesOnlyTheStepsNotYetApplied(t *testing.T) {
	ctx := context.Background()
	conn := rawConn(t, filepath.Join(t.TempDir(), "m.db"))
	log := slog.New(slog.DiscardHandler)
	steps := []string{
		"CREATE TABLE a (x INTEGER); INSERT INTO a VALUES (1)",
		"CREATE TABLE b (y INTEGER)",
	}
	if v, err := migrate(ctx, conn, steps[:1], log); err != nil || v != 1 {
		t.Fatalf("first migration = %d, %v; want 1", v, err)
	}
	// Re-running step 1 would fail (table a exists) or duplicate its row.
	for range 2 {
		if v, err := migrate(ctx, conn, steps, log); err != nil || v != 2 {
			t.Fatalf("migration of an existing database = %d, %v; want 2", v, err)
		}
	}
	var n int
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM a").Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows of a = %d, %v; want 1", n, err)
	}
	if !tableExists(t, conn, "b") {
		t.Fatal("step 2 not applied")
	}
}

func TestFailedMigrationStepChangesNothing(t *testing.T) {
	ctx := context.Background()
	conn := rawConn(t, filepath.Join(t.TempDir(), "m.db"))
	steps := []string{
		"CREATE TABLE a (x INTEGER)",
		"CREATE TABLE half (y INTEGER); INSERT INTO no_such_table VALUES (1)",
	}
	if _, err := migrate(ctx, conn, steps, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("migration with a broken step succeeded")
	}
	if v := userVersion(t, conn); v != 1 {
		t.Fatalf("user_version = %d, want 1", v)
	}
	if tableExists(t, conn, "half") {
		t.Fatal("the broken step was partly applied")
	}
}

func TestOpenRefusesADatabaseFromANewerVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chat.db")
	conn := rawConn(t, path)
	if _, err := conn.ExecContext(context.Background(), "PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), path, nil)
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open = %v, want ErrSchemaTooNew", err)
	}
	if v := userVersion(t, conn); v != 99 {
		t.Fatalf("user_version = %d after refusing, want 99 untouched", v)
	}
}

func TestNewDatabaseFilesAreOwnerOnly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "chat.db")
	db := openAt(t, path)
	mustCreate(t, db, "alice") // makes sure the WAL exists
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode != 0o600 {
			t.Fatalf("%s has mode %v, want 0600", filepath.Base(p), mode)
		}
	}
}

func TestPathWithURICharactersIsUsedLiterally(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a?b#c%41")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "chat.db")
	db := openAt(t, path)
	mustCreate(t, db, "alice")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at %s: %v", path, err)
	}
}

func TestConnectionsHaveDurablePragmasAndReadsCannotWrite(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	pragma := func(q func(string) *sql.Row, name string) int {
		t.Helper()
		var v int
		if err := q("PRAGMA " + name).Scan(&v); err != nil {
			t.Fatalf("PRAGMA %s: %v", name, err)
		}
		return v
	}
	var got map[string]int
	err := db.submit(ctx, func(w *writer) error {
		q := func(s string) *sql.Row { return w.conn.QueryRowContext(ctx, s) }
		got = map[string]int{
			"synchronous":  pragma(q, "synchronous"),
			"foreign_keys": pragma(q, "foreign_keys"),
			"busy_timeout": pragma(q, "busy_timeout"),
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"synchronous": 2, "foreign_keys": 1, "busy_timeout": busyTimeoutMS}; !maps.Equal(got, want) {
		t.Fatalf("writer pragmas = %v, want %v", got, want)
	}
	q := func(s string) *sql.Row { return db.rdb.QueryRowContext(ctx, s) }
	if v := pragma(q, "query_only"); v != 1 {
		t.Fatalf("reader query_only = %d, want 1", v)
	}
	if _, err := db.rdb.ExecContext(ctx, "DELETE FROM users"); err == nil {
		t.Fatal("a read connection could write")
	}
}

func TestStepThreeCountsTheBytesInboxesAlreadyHold(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	conn := rawConn(t, path)
	if _, err := migrate(context.Background(), conn, migrations[:2], slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO users VALUES ('bob', 'p', 's', 'ed25519', x'00', x'00', 0), ('carol', 'q', 's', 'ed25519', x'00', x'00', 0)`,
		`INSERT INTO inboxes (handle, last_seq, pending) VALUES ('bob', 2, 2), ('carol', 0, 0)`,
		`INSERT INTO envelopes (recipient, seq, sender, msg_id, received_at, message) VALUES
			('bob', 1, 'a', '1', 0, x'0102030405'), ('bob', 2, 'a', '2', 0, x'010203')`,
	} {
		if _, err := conn.ExecContext(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := migrate(context.Background(), conn, migrations, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	for handle, want := range map[string]int{"bob": 8, "carol": 0} {
		var got int
		if err := conn.QueryRowContext(context.Background(), "SELECT pending_bytes FROM inboxes WHERE handle = ?", handle).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: pending_bytes = %d, want %d", handle, got, want)
		}
	}
}
