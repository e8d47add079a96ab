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
// gzip-compressed. A chat server's part holds BlobsObject too.
const SQLiteObject = "database.sqlite.gz"

// BlobsObject is the attachment blobs of a chat server's SQLite part: a tar
// archive of the files its database's blob rows name, each entry named by
// the blob's id. Not compressed: blobs are ciphertext.
const BlobsObject = "blobs.tar"

// SQLiteSource is a SQLite database that a server may be writing to.
type SQLiteSource struct {
	Path string
	DB   sqlite.DatabaseKind
	Log  *slog.Logger
}

func (SQLiteSource) Kind() string { return KindSQLite }

// Snapshot copies the database online (sqlite.Snapshot) into a temporary
// directory beside it, on the same volume, checks the copy as a restore
// would, and hands it over gzip-compressed; then, for a chat database, the
// blob files its rows name (BlobsObject).
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
	var blobs []blobLink
	if s.DB == sqlite.ChatDatabase {
		if blobs, err = linkBlobs(ctx, snap, sqlite.BlobDir(s.Path), filepath.Join(tmp, "blobs"), s.Log); err != nil {
			return err
		}
	}
	if s.Log != nil {
		s.Log.Info("snapshot taken", "db", s.Path, "schema_version", rep.SchemaVersion, "identities", rep.Identities,
			"key_documents", rep.KeyDocuments, "blobs", len(blobs))
	}
	f, err := os.Open(snap)
	if err != nil {
		return err
	}
	defer f.Close()
	err = putPiped(put, SQLiteObject, func(w io.Writer) error {
		zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		_, err := io.Copy(zw, f)
		return errors.Join(err, zw.Close())
	})
	if err != nil || s.DB != sqlite.ChatDatabase {
		return err
	}
	return putPiped(put, BlobsObject, func(w io.Writer) error { return writeBlobArchive(w, blobs) })
}

// putPiped uploads as name what write writes.
func putPiped(put func(string, io.Reader) error, name string, write func(io.Writer) error) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(write(pw)) }()
	err := put(name, pr)
	pr.CloseWithError(errors.New("upload ended")) // unblocks the writer if put failed
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
// (integrity, schema, and for a key log every chain), restores a chat
// database's blobs into Path.blobs.restore-tmp (restoreBlobs), syncs it
// all, and moves the blobs, then the database, into place: the database
// last, since its presence is what says a restore is done.
func (t SQLiteTarget) Restore(ctx context.Context, m *Manifest, open func(string) (io.ReadCloser, error)) error {
	withBlobs := len(m.Objects) == 2 && m.Objects[1].Name == BlobsObject && t.DB == sqlite.ChatDatabase
	if len(m.Objects) == 0 || m.Objects[0].Name != SQLiteObject || len(m.Objects) > 2 || len(m.Objects) == 2 && !withBlobs {
		return fmt.Errorf("a SQLite backup of a %s holds %s (and %s for a chat server); this one lists %d objects", t.DB, SQLiteObject, BlobsObject, len(m.Objects))
	}
	tmp := t.Path + ".restore-tmp"
	blobTmp := sqlite.BlobDir(t.Path) + ".restore-tmp"
	// What an earlier attempt that failed left is ours to replace.
	for _, p := range []string{tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing %s of an earlier attempt: %w", p, err)
		}
	}
	if err := os.RemoveAll(blobTmp); err != nil {
		return fmt.Errorf("removing %s of an earlier attempt: %w", blobTmp, err)
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
			os.RemoveAll(blobTmp)
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
	if t.DB == sqlite.ChatDatabase {
		if err := t.restoreBlobs(ctx, tmp, blobTmp, withBlobs, open); err != nil {
			return err
		}
	}
	// Checked again: a restore must never replace a database that appeared
	// meanwhile.
	if _, exists, err := t.Existing(ctx); err != nil || exists {
		return errors.Join(err, fmt.Errorf("%s appeared during the restore; left alone", t.Path))
	}
	if t.DB == sqlite.ChatDatabase {
		if err := moveBlobs(blobTmp, sqlite.BlobDir(t.Path)); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, t.Path); err != nil {
		return fmt.Errorf("moving the restored database into place: %w", err)
	}
	ok = true
	return syncDir(filepath.Dir(t.Path))
}

// restoreBlobs restores BlobsObject, when the backup holds it, beside the
// database file db; a damaged object is reported as such (a
// *ChecksumError), not as whatever tar made of the damage.
func (t SQLiteTarget) restoreBlobs(ctx context.Context, db, dir string, withBlobs bool, open func(string) (io.ReadCloser, error)) error {
	var rc io.ReadCloser
	if withBlobs {
		var err error
		if rc, err = open(BlobsObject); err != nil {
			return err
		}
		defer rc.Close()
	}
	var r io.Reader
	if rc != nil {
		r = rc
	}
	restored, dropped, err := restoreBlobs(ctx, db, dir, r)
	if err != nil {
		var ce *ChecksumError
		if rc != nil && !errors.As(err, &ce) {
			if _, derr := io.Copy(io.Discard, rc); errors.As(derr, &ce) {
				return ce
			}
		}
		return err
	}
	if t.Log != nil {
		t.Log.Info("restored blobs checked", "dir", dir, "blobs", restored, "dropped_without_file", dropped)
	}
	return nil
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
