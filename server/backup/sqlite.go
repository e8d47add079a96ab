package backup

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"kez.lat/chat/server/sqlite"
)

// SQLiteObject is the data object of a SQLite part: the database,
// gzip-compressed.
const SQLiteObject = "database.sqlite.gz"

// SQLiteSource is a SQLite database that a server may be writing to.
type SQLiteSource struct {
	Path string
	DB   sqlite.DatabaseKind
	Log  *slog.Logger
}

func (SQLiteSource) Kind() string { return KindSQLite }

// Snapshot copies the database online (sqlite.Snapshot) into a temporary
// directory beside it, on the same volume, checks the copy as a restore
// would, and hands it over gzip-compressed.
func (s SQLiteSource) Snapshot(ctx context.Context, put func(string, io.Reader) error) error {
	s.removeStale()
	tmp, err := os.MkdirTemp(filepath.Dir(s.Path), snapshotDirPattern)
	if err != nil {
		return fmt.Errorf("making a directory for the snapshot beside %s: %w", s.Path, err)
	}
	defer os.RemoveAll(tmp)
	snap := filepath.Join(tmp, "snapshot.db")
	if err := sqlite.Snapshot(ctx, s.Path, snap); err != nil {
		return err
	}
	rep, err := sqlite.VerifyFile(ctx, snap, s.DB)
	if err != nil {
		return fmt.Errorf("checking the snapshot of %s: %w", s.Path, err)
	}
	if s.Log != nil {
		s.Log.Info("snapshot taken", "db", s.Path, "schema_version", rep.SchemaVersion, "identities", rep.Identities, "key_documents", rep.KeyDocuments)
	}
	f, err := os.Open(snap)
	if err != nil {
		return err
	}
	defer f.Close()
	pr, pw := io.Pipe()
	go func() {
		zw, _ := gzip.NewWriterLevel(pw, gzip.BestSpeed)
		_, err := io.Copy(zw, f)
		pw.CloseWithError(errors.Join(err, zw.Close()))
	}()
	err = put(SQLiteObject, pr)
	pr.CloseWithError(errors.New("upload ended")) // unblocks the compressor if put failed
	return err
}

// snapshotDirPattern names the temporary directories of snapshots beside
// the database.
const snapshotDirPattern = ".kezchat-backup-"

// staleAfter is how long a snapshot's file goes unwritten before it is
// taken for one a killed backup left (a copy being written is written to
// all the time; a running backup's upload reads it for minutes at most).
const staleAfter = 6 * time.Hour

// removeStale removes what a backup that was killed left beside the
// database: a whole copy of it, which would fill the volume over time.
func (s SQLiteSource) removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(filepath.Dir(s.Path), snapshotDirPattern+"*"))
	for _, d := range dirs {
		newest := time.Time{}
		for _, p := range []string{d, filepath.Join(d, "snapshot.db")} {
			if fi, err := os.Stat(p); err == nil && fi.ModTime().After(newest) {
				newest = fi.ModTime()
			}
		}
		if !newest.IsZero() && time.Since(newest) > staleAfter {
			err := os.RemoveAll(d)
			if s.Log != nil {
				s.Log.Warn("removed the snapshot an interrupted backup left", "dir", d, "err", err)
			}
		}
	}
}

// SQLiteTarget is a SQLite database file to restore.
type SQLiteTarget struct {
	Path string
	DB   sqlite.DatabaseKind
	Log  *slog.Logger
}

func (SQLiteTarget) Kind() string { return KindSQLite }

// Existing reports the database file, or a write-ahead log of one.
func (t SQLiteTarget) Existing(context.Context) (string, bool, error) {
	exists, err := sqlite.Exists(t.Path)
	if err != nil {
		return "", false, fmt.Errorf("looking for %s: %w", t.Path, err)
	}
	return t.Path, exists, nil
}

// Restore decompresses the database into Path.restore-tmp, checks it
// (integrity, schema, and for a key log every chain), syncs it, and renames
// it to Path.
func (t SQLiteTarget) Restore(ctx context.Context, m *Manifest, open func(string) (io.ReadCloser, error)) error {
	if len(m.Objects) != 1 || m.Objects[0].Name != SQLiteObject {
		return fmt.Errorf("a SQLite backup holds the one object %s; this one lists %d", SQLiteObject, len(m.Objects))
	}
	tmp := t.Path + ".restore-tmp"
	// A temporary file of an earlier attempt that failed is ours to replace.
	for _, p := range []string{tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing %s of an earlier attempt: %w", p, err)
		}
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := t.download(open, tmp); err != nil {
		return err
	}
	rep, err := sqlite.VerifyFile(ctx, tmp, t.DB)
	if err != nil {
		return fmt.Errorf("checking the restored %s: %w", t.DB, err)
	}
	if t.Log != nil {
		t.Log.Info("restored database checked", "path", tmp, "integrity", "ok", "schema_version", rep.SchemaVersion,
			"identities", rep.Identities, "key_documents", rep.KeyDocuments)
	}
	// Checked again: a restore must never replace a database that appeared
	// meanwhile.
	if _, exists, err := t.Existing(ctx); err != nil || exists {
		return errors.Join(err, fmt.Errorf("%s appeared during the restore; left alone", t.Path))
	}
	if err := os.Rename(tmp, t.Path); err != nil {
		return fmt.Errorf("moving the restored database into place: %w", err)
	}
	ok = true
	return syncDir(filepath.Dir(t.Path))
}

// download writes the decompressed database to path and syncs it. A
// damaged object is reported as such (a *ChecksumError), not as whatever
// gzip made of the damage.
func (t SQLiteTarget) download(open func(string) (io.ReadCloser, error), path string) error {
	rc, err := open(SQLiteObject)
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	defer f.Close()
	err = func() error {
		zr, err := gzip.NewReader(rc)
		if err != nil {
			return fmt.Errorf("decompressing %s: %w", SQLiteObject, err)
		}
		if _, err := io.Copy(f, zr); err != nil {
			return fmt.Errorf("decompressing %s: %w", SQLiteObject, err)
		}
		// The object must end with the gzip stream.
		if n, err := io.Copy(io.Discard, rc); err != nil || n > 0 {
			return errors.Join(err, fmt.Errorf("%s has %d bytes after its gzip stream", SQLiteObject, n))
		}
		return nil
	}()
	if err != nil {
		var ce *ChecksumError
		if !errors.As(err, &ce) {
			// Read to the end: a damaged object fails there with the clearer
			// reason.
			if _, derr := io.Copy(io.Discard, rc); errors.As(derr, &ce) {
				return ce
			}
		}
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}
