package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"kez.lat/chat/server"
)

// Blobs are files in a directory beside the database, <db>.blobs/, named by
// their id; their metadata and the envelopes naming them are rows
// (schema step 4). An upload is written to a temporary file, synced,
// renamed into place and the directory synced, and only then is its row
// committed: a row always has its file. Deletion goes the other way, rows
// first and files after, so a crash between leaves a file without a row,
// which the first PruneBlobs of the next process removes.

// blobTempPrefix starts the names of uploads in progress.
const blobTempPrefix = ".upload-"

// orphanBlobAge is how old a file without a row must be before PruneBlobs
// removes it: an upload renames its file into place before its row commits.
const orphanBlobAge = time.Hour

// blobDir is where db's blob files are.
func blobDir(dbPath string) string { return dbPath + ".blobs" }

// blobRoomReserve is what an upload leaves free on the blobs' file
// system: a tenth of it, at least 64 MiB, so that the database keeps room
// for its WAL and a checkpoint whatever the blobs take.
func blobRoomReserve(total int64) int64 { return max(total/10, 64<<20) }

// PutBlob writes r to a file of its own, synced, then commits b's row;
// see server.BlobStore.
func (db *DB) PutBlob(ctx context.Context, b *server.Blob, r io.Reader, need int64) error {
	dir := db.blobs
	if err := db.checkBlobRoom(need); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, blobTempPrefix+"*")
	if err != nil {
		return db.fileError(fmt.Errorf("creating a blob file in %s: %w", dir, err))
	}
	tmp := f.Name()
	keep := false
	defer func() {
		if !keep {
			f.Close()
			os.Remove(tmp)
		}
	}()
	n, err := io.Copy(f, r)
	if err != nil {
		return db.fileError(fmt.Errorf("writing blob %s: %w", b.ID, err))
	}
	if err := f.Sync(); err != nil {
		return db.fileError(fmt.Errorf("syncing blob %s: %w", b.ID, err))
	}
	if err := f.Close(); err != nil {
		return db.fileError(fmt.Errorf("closing blob %s: %w", b.ID, err))
	}
	final := filepath.Join(dir, b.ID)
	if err := os.Rename(tmp, final); err != nil {
		return db.fileError(fmt.Errorf("renaming blob %s into place: %w", b.ID, err))
	}
	tmp = final // from here on a failure removes the renamed file
	if err := syncDir(dir); err != nil {
		return db.fileError(fmt.Errorf("syncing %s: %w", dir, err))
	}
	b.Size = n
	id, uploader, sum, at := b.ID, b.Uploader, append([]byte(nil), b.SHA256...), b.CreatedAt.Unix()
	err = db.submit(ctx, func(w *writer) error {
		_, err := exec(w.insertBlob, id, uploader, n, sum, at)
		return err
	})
	if err != nil {
		return fmt.Errorf("recording blob %s: %w", b.ID, err)
	}
	keep = true
	return nil
}

// checkBlobRoom refuses with storage_full when the blobs' file system
// would keep less than its reserve after need more bytes.
func (db *DB) checkBlobRoom(need int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(db.blobs, &st); err != nil {
		return fmt.Errorf("reading the free space of %s: %w", db.blobs, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	total := int64(st.Blocks) * int64(st.Bsize)
	if free-need < blobRoomReserve(total) {
		db.health.full.Add(1)
		return &server.Error{Code: server.CodeStorageFull, RetryAfter: time.Minute,
			Message: "the server's storage has no room for this blob; try again later"}
	}
	return nil
}

// fileError turns a full disk into storage_full; other errors pass.
func (db *DB) fileError(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		db.health.full.Add(1)
		return &server.Error{Code: server.CodeStorageFull, RetryAfter: time.Minute,
			Message: "the server's storage is full; try again later"}
	}
	return err
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// OpenBlob reads id's row and opens its file; see server.BlobStore.
func (db *DB) OpenBlob(ctx context.Context, id string) (*server.Blob, io.ReadSeekCloser, error) {
	b := &server.Blob{ID: id}
	var at int64
	err := db.getBlob.QueryRowContext(ctx, id).Scan(&b.Uploader, &b.Size, &b.SHA256, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, server.Errorf(server.CodeUnknownBlob, "no blob %q", id)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading blob %s: %w", id, err)
	}
	b.CreatedAt = unixTime(at)
	f, err := os.Open(filepath.Join(db.blobs, id))
	if errors.Is(err, os.ErrNotExist) {
		// Deleted since the row was read, or a database restored without
		// its blob files.
		return nil, nil, server.Errorf(server.CodeUnknownBlob, "no blob %q", id)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("opening blob %s: %w", id, err)
	}
	return b, f, nil
}

// checkBlobs refuses, before append writes anything, an envelope naming a
// blob that is not stored or not sender's.
func (w *writer) checkBlobs(sender string, ids []string) error {
	for _, id := range ids {
		var one int
		err := queryRow(w.blobOf, id, sender).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return server.UnknownBlob(id)
		}
		if err != nil {
			return fmt.Errorf("looking up blob %s: %w", id, err)
		}
	}
	return nil
}

// refBlobs records that envelope names each of ids (checked by checkBlobs
// in the same transaction) and marks them referenced.
func (w *writer) refBlobs(envelope int64, ids []string) error {
	for _, id := range ids {
		if _, err := exec(w.insertBlobRef, envelope, id); err != nil {
			return fmt.Errorf("referencing blob %s: %w", id, err)
		}
		if _, err := exec(w.markBlobReferenced, id); err != nil {
			return fmt.Errorf("marking blob %s referenced: %w", id, err)
		}
	}
	return nil
}

// PruneBlobs deletes the rows of the blobs server.BlobStore says go, in
// chunks through the writer, then their files.
func (db *DB) PruneBlobs(ctx context.Context, now, unreferencedBefore, uploadedBefore time.Time) (int, error) {
	db.sweepOnce.Do(func() { db.sweepBlobFiles(ctx, now) })
	total := 0
	for {
		var ids []string
		err := db.submit(ctx, func(w *writer) error {
			ids = ids[:0]
			rows, err := w.pruneBlobs.QueryContext(context.Background(), uploadedBefore.Unix(), unreferencedBefore.Unix(), pruneChunk)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					return err
				}
				ids = append(ids, id)
			}
			return rows.Err()
		})
		if err != nil {
			return total, fmt.Errorf("pruning blobs: %w", err)
		}
		for _, id := range ids {
			if err := os.Remove(filepath.Join(db.blobs, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
				db.log.Warn("removing a deleted blob's file", "blob", id, "err", err)
			}
		}
		total += len(ids)
		if len(ids) < pruneChunk {
			return total, nil
		}
	}
}

// sweepBlobFiles removes what a crash left in the blob directory: uploads
// in progress and files whose row never committed (or was deleted just
// before), once they are older than orphanBlobAge.
func (db *DB) sweepBlobFiles(ctx context.Context, now time.Time) {
	entries, err := os.ReadDir(db.blobs)
	if err != nil {
		db.log.Warn("listing blob files", "dir", db.blobs, "err", err)
		return
	}
	removed := 0
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || now.Sub(info.ModTime()) < orphanBlobAge {
			continue
		}
		name := e.Name()
		if !strings.HasPrefix(name, blobTempPrefix) {
			var one int
			err := db.rdb.QueryRowContext(ctx, "SELECT 1 FROM blobs WHERE id = ?", name).Scan(&one)
			if !errors.Is(err, sql.ErrNoRows) {
				continue // it has its row, or the database cannot tell now
			}
		}
		if err := os.Remove(filepath.Join(db.blobs, name)); err == nil {
			removed++
		}
	}
	if removed > 0 {
		db.log.Info("removed blob files without a row", "files", removed)
	}
}
