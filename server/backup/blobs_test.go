package backup_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/backup"
	"kez.lat/chat/server/sqlite"
)

// seedBlobs gives a chat database at path alice and bob, and three blobs
// of alice's: two named by a message to bob, one never named.
func seedBlobs(t *testing.T, path string) (chat *sqlite.DB, blobs []*server.Blob, data [][]byte) {
	t.Helper()
	ctx := context.Background()
	chat = openChat(t, path)
	for _, h := range []string{"alice", "bob"} {
		if err := chat.CreateUser(ctx, user(h)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		d := bytes.Repeat([]byte{byte('a' + i)}, 100_000+i)
		data = append(data, d)
		blobs = append(blobs, putBlob(t, chat, "alice", d))
	}
	if _, err := chat.AppendMessage(ctx, envelopeWithBlobs("bob", "alice", "with-files", blobs[0], blobs[1]), server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	return chat, blobs, data
}

func TestSQLiteBackupRestoresEveryBlobItsDatabaseNames(t *testing.T) {
	b := newBucket(t)
	path := tempPath(t, "kez-chat.db")
	_, blobs, data := seedBlobs(t, path)
	res := take(t, b, backup.SQLiteSource{Path: path, DB: sqlite.ChatDatabase}, "b1", backup.PartServer)
	if res.Objects != 3 || res.Bytes < 300_000 {
		t.Errorf("result %+v: want the database, the blobs (over 300,000 bytes) and the manifest", res)
	}

	dst := tempPath(t, "kez-chat.db")
	if _, err := restore(b, backup.SQLiteTarget{Path: dst, DB: sqlite.ChatDatabase}, "b1", backup.PartServer); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sqlite.BlobDir(dst) + ".restore-tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary blob directory is left: %v", err)
	}
	got := openChat(t, dst)
	for i, bl := range blobs {
		if d, err := blobBytes(got, bl.ID); err != nil || !bytes.Equal(d, data[i]) {
			t.Errorf("restored blob %d: %d bytes, %v; want its %d bytes", i, len(d), err, len(data[i]))
		}
	}
	msgs, err := got.Messages(context.Background(), "bob", 0, 10, 0)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("bob's restored messages: %d, %v", len(msgs), err)
	}
	// The reference came back too: once bob reads the message, the blobs it
	// named go, and the one never named stays.
	if _, err := got.Ack(context.Background(), "bob", "dev", msgs[0].Seq, []string{"dev"}); err != nil {
		t.Fatal(err)
	}
	longAgo := blobs[0].CreatedAt.AddDate(0, 0, -1)
	if n, err := got.PruneBlobs(context.Background(), time.Now(), longAgo, longAgo); err != nil || n != 2 {
		t.Errorf("pruning after bob read the restored message removed %d blobs (%v), want the 2 it named", n, err)
	}
}

func TestSQLiteRestoreDropsTheRowsOfBlobsTheBackupDoesNotHold(t *testing.T) {
	b := newBucket(t)
	path := tempPath(t, "kez-chat.db")
	_, blobs, data := seedBlobs(t, path)
	// Deleted between the database's snapshot and the archive, as the
	// server deletes a blob every recipient acknowledged: here, before.
	if err := os.Remove(filepath.Join(sqlite.BlobDir(path), blobs[0].ID)); err != nil {
		t.Fatal(err)
	}
	take(t, b, backup.SQLiteSource{Path: path, DB: sqlite.ChatDatabase}, "b1", backup.PartServer)

	dst := tempPath(t, "kez-chat.db")
	if _, err := restore(b, backup.SQLiteTarget{Path: dst, DB: sqlite.ChatDatabase}, "b1", backup.PartServer); err != nil {
		t.Fatal(err)
	}
	got := openChat(t, dst)
	if _, err := blobBytes(got, blobs[0].ID); server.ErrorCode(err) != server.CodeUnknownBlob {
		t.Errorf("the blob without a file: %v, want unknown_blob", err)
	}
	for i := 1; i < 3; i++ {
		if d, err := blobBytes(got, blobs[i].ID); err != nil || !bytes.Equal(d, data[i]) {
			t.Errorf("restored blob %d: %d bytes, %v", i, len(d), err)
		}
	}
	if msgs, err := got.Messages(context.Background(), "bob", 0, 10, 0); err != nil || len(msgs) != 1 {
		t.Errorf("bob's message naming the dropped blob: %d restored, %v; want it kept", len(msgs), err)
	}
}

func TestSQLiteRestoreRefusesABlobArchiveThatDoesNotMatchItsDatabase(t *testing.T) {
	b := newBucket(t)
	path := tempPath(t, "kez-chat.db")
	_, blobs, data := seedBlobs(t, path)
	take(t, b, backup.SQLiteSource{Path: path, DB: sqlite.ChatDatabase}, "b1", backup.PartServer)
	good := readFile(t, b.ObjectPath("kez/prod/b1/server/"+backup.BlobsObject))

	archive := func(entries ...func(*tar.Writer)) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range entries {
			e(tw)
		}
		tw.Close()
		return buf.Bytes()
	}
	entry := func(name string, d []byte) func(*tar.Writer) {
		return func(tw *tar.Writer) {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(d)), Mode: 0o600})
			tw.Write(d)
		}
	}
	flipped := bytes.Clone(data[1])
	flipped[500] ^= 1
	tests := []struct {
		name    string
		archive []byte
		want    string
	}{
		{"a blob's bytes changed", archive(entry(blobs[0].ID, data[0]), entry(blobs[1].ID, flipped)), "SHA-256 differs"},
		{"a blob the database does not name", archive(entry(server.NewBlobID(), data[0])), "does not name"},
		{"a path instead of a blob id", archive(entry("../kez-chat.db", data[0])), "not a blob"},
		{"a blob twice", archive(entry(blobs[0].ID, data[0]), entry(blobs[0].ID, data[0])), "twice"},
		{"a blob cut short", archive(entry(blobs[0].ID, data[0][:10])), "the database says"},
		{"bytes after the archive", append(bytes.Clone(good), make([]byte, 1024)...), "after its archive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			replaceObject(t, b, "kez/prod/b1/server/", backup.BlobsObject, tt.archive)
			dst := tempPath(t, "kez-chat.db")
			_, err := restore(b, backup.SQLiteTarget{Path: dst, DB: sqlite.ChatDatabase}, "b1", backup.PartServer)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("restore: %v; want an error saying %q", err, tt.want)
			}
			for _, p := range []string{dst, dst + ".restore-tmp", sqlite.BlobDir(dst), sqlite.BlobDir(dst) + ".restore-tmp"} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s exists after a refused restore", p)
				}
			}
		})
	}
	// The damage the manifest catches is reported as such.
	replaceObject(t, b, "kez/prod/b1/server/", backup.BlobsObject, good)
	obj := b.ObjectPath("kez/prod/b1/server/" + backup.BlobsObject)
	damaged := bytes.Clone(good)
	damaged[len(damaged)/2] ^= 1
	if err := os.WriteFile(obj, damaged, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := restore(b, backup.SQLiteTarget{Path: tempPath(t, "kez-chat.db"), DB: sqlite.ChatDatabase}, "b1", backup.PartServer)
	if ce := (*backup.ChecksumError)(nil); !errors.As(err, &ce) {
		t.Errorf("restore of a damaged archive: %v; want a checksum error", err)
	}
}
