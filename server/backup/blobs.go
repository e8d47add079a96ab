package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/sqlite"
)

// blobLink is a blob of a snapshot and the file its bytes are read from.
type blobLink struct {
	sqlite.BlobFile
	path string
}

// linkBlobs hard-links, into dir, the file of every blob the database copy
// at snap names, so that what the archive holds is the snapshot's blobs
// however long the upload takes (the server deletes a blob once every
// recipient has acknowledged its message). A file already gone was deleted
// after the snapshot for that reason: the restore drops its row. Where the
// volume cannot link, the live file is read instead.
func linkBlobs(ctx context.Context, snap, blobDir, dir string, log *slog.Logger) ([]blobLink, error) {
	rows, err := sqlite.ListBlobs(ctx, snap)
	if err != nil || len(rows) == 0 {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("making %s: %w", dir, err)
	}
	links := make([]blobLink, 0, len(rows))
	gone, unlinked := 0, 0
	for _, b := range rows {
		if !server.ValidBlobID(b.ID) {
			return nil, fmt.Errorf("the database names a blob %q, which is not a blob id", b.ID)
		}
		src, dst := filepath.Join(blobDir, b.ID), filepath.Join(dir, b.ID)
		switch err := os.Link(src, dst); {
		case err == nil:
			links = append(links, blobLink{BlobFile: b, path: dst})
		case errors.Is(err, os.ErrNotExist):
			gone++
		default:
			unlinked++
			links = append(links, blobLink{BlobFile: b, path: src})
		}
	}
	if log != nil && (gone > 0 || unlinked > 0) {
		log.Info("blobs of the snapshot", "named", len(rows), "deleted_since", gone, "read_live", unlinked)
	}
	return links, nil
}

// writeBlobArchive writes BlobsObject: one tar entry per blob, named by its
// id, in the order of blobs. A file deleted meanwhile is left out; one whose
// size is not its row's fails the backup.
func writeBlobArchive(w io.Writer, blobs []blobLink) error {
	tw := tar.NewWriter(w)
	for _, b := range blobs {
		f, err := os.Open(b.path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("opening blob %s: %w", b.ID, err)
		}
		err = func() error {
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return fmt.Errorf("reading blob %s: %w", b.ID, err)
			}
			if fi.Size() != b.Size {
				return fmt.Errorf("blob file %s is %d bytes; its row says %d", b.path, fi.Size(), b.Size)
			}
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: b.ID, Size: b.Size, Mode: 0o600, ModTime: fi.ModTime().Truncate(time.Second)}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if _, err := io.Copy(tw, io.LimitReader(f, b.Size)); err != nil {
				return fmt.Errorf("archiving blob %s: %w", b.ID, err)
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// restoreBlobs extracts BlobsObject into a new directory dir, beside the
// database being restored at db (which no server uses yet), checking every
// entry against the database's row for it: a blob id the database names,
// once, of the row's size and SHA-256. Then it drops from the database the
// rows of blobs the archive does not hold (deleted after the snapshot), so
// the restored database names no file it lacks. rc is nil for a backup
// without BlobsObject (taken before attachments were backed up). It
// returns how many blobs were restored and dropped.
func restoreBlobs(ctx context.Context, db, dir string, rc io.Reader) (restored, dropped int, err error) {
	rows, err := sqlite.ListBlobs(ctx, db)
	if err != nil {
		return 0, 0, err
	}
	want := make(map[string]sqlite.BlobFile, len(rows))
	for _, b := range rows {
		want[b.ID] = b
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return 0, 0, fmt.Errorf("making %s: %w", dir, err)
	}
	have := map[string]bool{}
	if rc != nil {
		tr := tar.NewReader(rc)
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return 0, 0, fmt.Errorf("reading %s: %w", BlobsObject, err)
			}
			b, ok := want[hdr.Name]
			switch {
			case hdr.Typeflag != tar.TypeReg || !server.ValidBlobID(hdr.Name):
				return 0, 0, fmt.Errorf("%s holds %q, which is not a blob", BlobsObject, hdr.Name)
			case !ok:
				return 0, 0, fmt.Errorf("%s holds blob %s, which the database does not name", BlobsObject, hdr.Name)
			case have[hdr.Name]:
				return 0, 0, fmt.Errorf("%s holds blob %s twice", BlobsObject, hdr.Name)
			case hdr.Size != b.Size:
				return 0, 0, fmt.Errorf("%s holds blob %s of %d bytes; the database says %d", BlobsObject, hdr.Name, hdr.Size, b.Size)
			}
			if err := extractBlob(tr, filepath.Join(dir, b.ID), b); err != nil {
				return 0, 0, err
			}
			have[b.ID] = true
		}
		// The object must end with the archive.
		if n, err := io.Copy(io.Discard, rc); err != nil || n > 0 {
			return 0, 0, errors.Join(err, fmt.Errorf("%s has %d bytes after its archive", BlobsObject, n))
		}
	}
	var missing []string
	for _, b := range rows {
		if !have[b.ID] {
			missing = append(missing, b.ID)
		}
	}
	if err := sqlite.DropBlobs(ctx, db, missing); err != nil {
		return 0, 0, err
	}
	return len(have), len(missing), syncDir(dir)
}

// extractBlob writes r's entry to path, synced, failing unless its bytes
// are b's.
func extractBlob(r io.Reader, path string, b sqlite.BlobFile) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), r); err != nil {
		return fmt.Errorf("extracting blob %s: %w", b.ID, err)
	}
	if !bytes.Equal(h.Sum(nil), b.SHA256) {
		return fmt.Errorf("blob %s in %s is not what the database says was uploaded (SHA-256 differs)", b.ID, BlobsObject)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	return f.Close()
}

// moveBlobs moves every file of from into to (made when missing), syncs
// both, and removes from.
func moveBlobs(from, to string) error {
	entries, err := os.ReadDir(from)
	if err != nil {
		return fmt.Errorf("listing %s: %w", from, err)
	}
	if err := os.MkdirAll(to, 0o700); err != nil {
		return fmt.Errorf("making %s: %w", to, err)
	}
	for _, e := range entries {
		if err := os.Rename(filepath.Join(from, e.Name()), filepath.Join(to, e.Name())); err != nil {
			return fmt.Errorf("moving restored blob %s into place: %w", e.Name(), err)
		}
	}
	if err := syncDir(to); err != nil {
		return err
	}
	return os.Remove(from)
}
