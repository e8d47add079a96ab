package sqlite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"kez.lat/chat/server"
)

var blobEpoch = time.Unix(1_800_000_000, 0)

const testRetention = 30 * 24 * time.Hour

func putBlob(t *testing.T, db *DB, uploader string, data []byte, at time.Time) *server.Blob {
	t.Helper()
	sum := sha256.Sum256(data)
	b := &server.Blob{ID: server.NewBlobID(), Uploader: uploader, SHA256: sum[:], CreatedAt: at}
	if err := db.PutBlob(context.Background(), b, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("PutBlob: %v", err)
	}
	return b
}

func readBlob(db *DB, id string) ([]byte, error) {
	_, r, err := db.OpenBlob(context.Background(), id)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// pruneBlobsAt runs the pruning the service runs at now.
func pruneBlobsAt(t *testing.T, db *DB, now time.Time) int {
	t.Helper()
	if _, err := db.Prune(context.Background(), now, now.Add(-testRetention)); err != nil {
		t.Fatalf("Prune: %v", err)
	}
	n, err := db.PruneBlobs(context.Background(), now, now.Add(-server.BlobUnreferencedTTL), now.Add(-testRetention))
	if err != nil {
		t.Fatalf("PruneBlobs: %v", err)
	}
	return n
}

func TestPutBlobKeepsTheBytesInAFileBesideTheDatabase(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice")
	data := bytes.Repeat([]byte("attachment "), 10_000)
	b := putBlob(t, db, "alice", data, blobEpoch)
	if b.Size != int64(len(data)) {
		t.Errorf("Size = %d, want %d", b.Size, len(data))
	}
	onDisk, err := os.ReadFile(filepath.Join(db.path+".blobs", b.ID))
	if err != nil || !bytes.Equal(onDisk, data) {
		t.Fatalf("the blob's file: %v (%d bytes)", err, len(onDisk))
	}
	got, err := readBlob(db, b.ID)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("OpenBlob: %v (%d bytes)", err, len(got))
	}
	_, _, err = db.OpenBlob(context.Background(), server.NewBlobID())
	wantCode(t, err, server.CodeUnknownBlob)
}

// failingReader yields some bytes, then fails as a refused upload does.
type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, server.Errorf(server.CodeDigestMismatch, "refused")
	}
	n := min(len(p), f.n)
	f.n -= n
	return n, nil
}

func TestPutBlobKeepsNothingWhenTheBodyFails(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice")
	b := &server.Blob{ID: server.NewBlobID(), Uploader: "alice", SHA256: make([]byte, 32), CreatedAt: blobEpoch}
	err := db.PutBlob(context.Background(), b, &failingReader{n: 100_000}, 100_000)
	wantCode(t, err, server.CodeDigestMismatch)
	entries, err := os.ReadDir(db.path + ".blobs")
	if err != nil || len(entries) != 0 {
		t.Fatalf("the blob directory holds %d files (%v), want none", len(entries), err)
	}
	_, _, err = db.OpenBlob(context.Background(), b.ID)
	wantCode(t, err, server.CodeUnknownBlob)
}

func TestAppendRefusesABlobNotUploadedByTheSender(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob", "carol")
	carols := putBlob(t, db, "carol", []byte("carol's"), blobEpoch)
	for _, tt := range []struct {
		name string
		id   string
	}{
		{"never uploaded", server.NewBlobID()},
		{"another sender's", carols.ID},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := envelope("bob", "alice", "m-"+tt.name, "msg")
			e.Blobs = []string{tt.id}
			_, err := db.AppendMessage(context.Background(), e, server.InboxLimits{})
			wantCode(t, err, server.CodeUnknownBlob)
			if envs, _ := db.Messages(context.Background(), "bob", 0, 10, 0); len(envs) != 0 {
				t.Fatalf("a refused append stored %d envelopes", len(envs))
			}
		})
	}
	// The seq counter did not move: the next append is seq 1.
	if seq := mustAppend(t, db, "bob", "alice", "m-ok", "msg"); seq != 1 {
		t.Errorf("seq after refusals = %d, want 1", seq)
	}
}

func TestForeignKeysAreOnSoReferencesGoWithTheirEnvelope(t *testing.T) {
	db := openTest(t)
	var on int
	if err := db.rdb.QueryRow("PRAGMA foreign_keys").Scan(&on); err != nil || on != 1 {
		t.Fatalf("PRAGMA foreign_keys = %d (%v), want 1", on, err)
	}
}

// TestPruneBlobsDeletesByTheThreeRules follows a blob through each rule
// of docs/protocol.md with the clock given to Prune, never sleeping.
func TestPruneBlobsDeletesByTheThreeRules(t *testing.T) {
	type step struct {
		after time.Duration // since the upload
		kept  bool
	}
	for _, tt := range []struct {
		name string
		// send names the blob in a message to bob (at the upload time);
		// ack acknowledges it before the steps.
		send, ack bool
		steps     []step
	}{
		{"named, then acknowledged: gone at the next prune", true, true, []step{{time.Minute, false}}},
		{"named and stored: kept past a day", true, false, []step{{25 * time.Hour, true}, {29 * 24 * time.Hour, true}}},
		{"named and stored: gone at the retention after upload", true, false, []step{{testRetention + time.Minute, false}}},
		{"never named: kept for a day", false, false, []step{{23 * time.Hour, true}, {24*time.Hour + time.Minute, false}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db := openTest(t)
			mustCreate(t, db, "alice", "bob")
			b := putBlob(t, db, "alice", []byte("blob bytes"), blobEpoch)
			// Sent an hour after the upload: at the blob's retention the
			// envelope is still stored.
			db.w.now = func() time.Time { return blobEpoch.Add(time.Hour) }
			if tt.send {
				e := envelope("bob", "alice", "m-1", "msg")
				e.Blobs = []string{b.ID}
				if _, err := db.AppendMessage(context.Background(), e, server.InboxLimits{}); err != nil {
					t.Fatal(err)
				}
			}
			if tt.ack {
				if _, err := db.Ack(context.Background(), "bob", "dev", 1, []string{"dev"}); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range tt.steps {
				pruneBlobsAt(t, db, blobEpoch.Add(s.after))
				if envs, _ := db.Messages(context.Background(), "bob", 0, 10, 0); tt.send && !tt.ack && len(envs) != 1 {
					t.Fatalf("%v after the upload: bob's envelope is gone", s.after)
				}
				_, err := readBlob(db, b.ID)
				if kept := err == nil; kept != s.kept {
					t.Fatalf("%v after the upload: kept = %v (%v), want %v", s.after, kept, err, s.kept)
				}
				_, statErr := os.Stat(filepath.Join(db.path+".blobs", b.ID))
				if fileKept := statErr == nil; fileKept != s.kept {
					t.Fatalf("%v after the upload: the file is there = %v, want %v", s.after, fileKept, s.kept)
				}
			}
		})
	}
}

func TestAnExpiredEnvelopeReleasesItsBlob(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	b := putBlob(t, db, "alice", []byte("blob"), blobEpoch)
	db.w.now = func() time.Time { return blobEpoch }
	e := envelope("bob", "alice", "m-1", "msg")
	e.Blobs = []string{b.ID}
	if _, err := db.AppendMessage(context.Background(), e, server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	// Envelopes expire after an hour here, blobs at the usual retention:
	// only the expiry of the envelope, through its reference, frees it.
	now := blobEpoch.Add(2 * time.Hour)
	if res, err := db.Prune(context.Background(), now, now.Add(-time.Hour)); err != nil || res.Envelopes != 1 {
		t.Fatalf("Prune: %+v, %v; want the envelope expired", res, err)
	}
	n, err := db.PruneBlobs(context.Background(), now, now.Add(-server.BlobUnreferencedTTL), now.Add(-testRetention))
	if err != nil || n != 1 {
		t.Fatalf("PruneBlobs after the envelope expired: %d, %v; want 1", n, err)
	}
	var refs int
	if err := db.rdb.QueryRow("SELECT count(*) FROM blob_refs").Scan(&refs); err != nil || refs != 0 {
		t.Fatalf("blob_refs holds %d rows (%v), want 0", refs, err)
	}
}

func TestABlobNamedTwiceStaysUntilBothEnvelopesAreGone(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob", "carol")
	b := putBlob(t, db, "alice", []byte("blob"), blobEpoch)
	db.w.now = func() time.Time { return blobEpoch }
	for _, to := range []string{"bob", "carol"} {
		e := envelope(to, "alice", "m-"+to, "msg")
		e.Blobs = []string{b.ID}
		if _, err := db.AppendMessage(context.Background(), e, server.InboxLimits{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Ack(context.Background(), "bob", "dev", 1, []string{"dev"}); err != nil {
		t.Fatal(err)
	}
	if n := pruneBlobsAt(t, db, blobEpoch.Add(time.Minute)); n != 0 {
		t.Fatalf("pruned %d blobs while carol's envelope names it", n)
	}
	if _, err := db.Ack(context.Background(), "carol", "dev", 1, []string{"dev"}); err != nil {
		t.Fatal(err)
	}
	if n := pruneBlobsAt(t, db, blobEpoch.Add(2*time.Minute)); n != 1 {
		t.Fatalf("pruned %d blobs once both were acknowledged, want 1", n)
	}
}

func TestPruneBlobsRemovesFilesLeftWithoutARow(t *testing.T) {
	db := openTest(t)
	dir := db.path + ".blobs"
	orphan := filepath.Join(dir, server.NewBlobID())
	temp := filepath.Join(dir, blobTempPrefix+"123")
	fresh := filepath.Join(dir, server.NewBlobID())
	for _, p := range []string{orphan, temp, fresh} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	for _, p := range []string{orphan, temp} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.PruneBlobs(context.Background(), time.Now(), time.Now().Add(-server.BlobUnreferencedTTL), time.Now().Add(-testRetention)); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path string
		kept bool
	}{{orphan, false}, {temp, false}, {fresh, true}} {
		_, err := os.Stat(tt.path)
		if kept := !errors.Is(err, os.ErrNotExist); kept != tt.kept {
			t.Errorf("%s kept = %v, want %v", filepath.Base(tt.path), kept, tt.kept)
		}
	}
}
