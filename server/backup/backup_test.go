package backup_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"kez.lat/chat/server"
	"kez.lat/chat/server/backup"
	"kez.lat/chat/server/sqlite"
)

func TestRoundTripRestoresUsersUndeliveredMessagesAndKeyDocuments(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)

	chatPath := tempPath(t, "kez-chat.db")
	chat := openChat(t, chatPath)
	handles := []string{"alice", "bob", "carol"}
	for _, h := range handles {
		if err := chat.CreateUser(ctx, user(h)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 30 {
		to, from := handles[i%3], handles[(i+1)%3]
		if _, err := chat.AppendMessage(ctx, envelope(to, from, fmt.Sprintf("m%02d", i)), server.InboxLimits{}); err != nil {
			t.Fatal(err)
		}
	}
	// bob read his first three: only what is undelivered stays.
	if _, err := chat.Ack(ctx, "bob", "dev", 3, []string{"dev"}); err != nil {
		t.Fatal(err)
	}

	sigPath := tempPath(t, "kez-sig.db")
	keyLog := openKeyLog(t, sigPath)
	dir := server.NewKeyDirectory(keyLog, slog.New(slog.DiscardHandler), nil)
	ids := []string{publishChain(t, dir, 1), publishChain(t, dir, 4)}

	res := take(t, b, backup.SQLiteSource{Path: chatPath, DB: sqlite.ChatDatabase}, "daily-1", backup.PartServer)
	take(t, b, backup.SQLiteSource{Path: sigPath, DB: sqlite.KeyLogDatabase}, "daily-1", backup.PartSigServer)
	if res.Objects != 3 || res.Bytes <= 0 || res.Version != "test" || !res.CompletedAt.After(res.StartedAt) && !res.CompletedAt.Equal(res.StartedAt) {
		t.Errorf("result %+v", res)
	}

	restoredChat, restoredSig := tempPath(t, "kez-chat.db"), tempPath(t, "kez-sig.db")
	if _, err := restore(b, backup.SQLiteTarget{Path: restoredChat, DB: sqlite.ChatDatabase}, "daily-1", backup.PartServer); err != nil {
		t.Fatal(err)
	}
	if _, err := restore(b, backup.SQLiteTarget{Path: restoredSig, DB: sqlite.KeyLogDatabase}, "daily-1", backup.PartSigServer); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(restoredChat + ".restore-tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary file is left: %v", err)
	}

	got := openChat(t, restoredChat)
	for _, h := range handles {
		want, _ := chat.UserByHandle(ctx, h)
		u, err := got.UserByHandle(ctx, h)
		if err != nil {
			t.Fatalf("restored user %s: %v", h, err)
		}
		if u.PrimaryID != want.PrimaryID || !bytes.Equal(u.Key, want.Key) || !bytes.Equal(u.EncKey, want.EncKey) {
			t.Errorf("restored user %s = %+v, want %+v", h, u, want)
		}
		wantMsgs, _ := chat.Messages(ctx, h, 0, 100, 0)
		msgs, err := got.Messages(ctx, h, 0, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != len(wantMsgs) || len(msgs) == 0 {
			t.Fatalf("%s has %d undelivered messages restored, want %d", h, len(msgs), len(wantMsgs))
		}
		for i := range msgs {
			if msgs[i].Seq != wantMsgs[i].Seq || msgs[i].ID != wantMsgs[i].ID || !bytes.Equal(msgs[i].Message, wantMsgs[i].Message) {
				t.Errorf("%s message %d = %d %s, want %d %s", h, i, msgs[i].Seq, msgs[i].ID, wantMsgs[i].Seq, wantMsgs[i].ID)
			}
		}
	}
	if msgs, _ := got.Messages(ctx, "bob", 0, 100, 0); msgs[0].Seq != 4 {
		t.Errorf("bob's acknowledged messages came back: first seq %d", msgs[0].Seq)
	}
	// The next message takes the next seq, not a reused one.
	e := envelope("bob", "alice", "after-restore")
	if _, err := got.AppendMessage(ctx, e, server.InboxLimits{}); err != nil || e.Seq != 11 {
		t.Errorf("append after restore: seq %d, %v; want 11", e.Seq, err)
	}

	gotDir := server.NewKeyDirectory(openKeyLog(t, restoredSig), slog.New(slog.DiscardHandler), nil)
	for _, id := range ids {
		want, _ := dir.Log(ctx, id, 1, 100)
		docs, err := gotDir.Log(ctx, id, 1, 100)
		if err != nil {
			t.Fatalf("restored log of %s: %v", id, err)
		}
		if len(docs) != len(want) {
			t.Fatalf("restored log of %s has %d documents, want %d", id, len(docs), len(want))
		}
		for i := range docs {
			if !bytes.Equal(docs[i].Signed, want[i].Signed) {
				t.Errorf("%s version %d differs", id, i+1)
			}
		}
	}
}

func TestBackupUnderWriteLoadRestoresEveryMessageAcknowledgedBeforeItStarted(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	path := tempPath(t, "kez-chat.db")
	chat := openChat(t, path)
	handles := []string{"alice", "bob", "carol", "dave"}
	for _, h := range handles {
		if err := chat.CreateUser(ctx, user(h)); err != nil {
			t.Fatal(err)
		}
	}
	// Some history, so the copy takes a while.
	for i := range 2000 {
		if _, err := chat.AppendMessage(ctx, envelope(handles[i%4], "alice", fmt.Sprintf("old-%d", i)), server.InboxLimits{}); err != nil {
			t.Fatal(err)
		}
	}

	load := startWriteLoad(t, chat, handles)
	// Let the writers run, then back up while they go on.
	load.waitFor(t, 200)
	started := time.Now()
	take(t, b, backup.SQLiteSource{Path: path, DB: sqlite.ChatDatabase}, "under-load", backup.PartServer)
	load.waitFor(t, load.count()+100) // the writers went on after it, too
	load.end()

	restored := tempPath(t, "kez-chat.db")
	if _, err := restore(b, backup.SQLiteTarget{Path: restored, DB: sqlite.ChatDatabase}, "under-load", backup.PartServer); err != nil {
		t.Fatal(err)
	}
	got := openChat(t, restored)
	have := map[string]bool{}
	total := 0
	for _, h := range handles {
		msgs, err := got.Messages(ctx, h, 0, 1_000_000, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Consistent: each inbox's seqs run 1, 2, 3, ... with no hole, and
		// the next append continues after the last.
		for i, m := range msgs {
			if m.Seq != uint64(i+1) {
				t.Fatalf("%s's restored inbox has seq %d at position %d", h, m.Seq, i)
			}
			have[h+"/"+m.ID] = true
		}
		total += len(msgs)
		e := envelope(h, "bob", "next-"+h)
		if _, err := got.AppendMessage(ctx, e, server.InboxLimits{}); err != nil || e.Seq != uint64(len(msgs)+1) {
			t.Fatalf("%s: append after restore got seq %d (%v), want %d", h, e.Seq, err, len(msgs)+1)
		}
	}
	before, after := load.checkAckedBefore(t, started, have)
	if before < 200 || total < 2000+before {
		t.Fatalf("restored %d messages; %d were acknowledged before the backup", total, before)
	}
	t.Logf("%d acknowledged before the backup, %d more during it made it in, %d in all restored", before, after, total)
}

func TestRestoreRefusesADamagedObject(t *testing.T) {
	b := newBucket(t)
	path := tempPath(t, "kez-chat.db")
	chat := openChat(t, path)
	if err := chat.CreateUser(context.Background(), user("alice")); err != nil {
		t.Fatal(err)
	}
	take(t, b, backup.SQLiteSource{Path: path, DB: sqlite.ChatDatabase}, "b1", backup.PartServer)

	tests := []struct {
		name   string
		damage func([]byte) []byte
		want   string
	}{
		{"a flipped byte in the middle", func(d []byte) []byte { d[len(d)/2] ^= 0x01; return d }, "has SHA-256"},
		{"a flipped byte in the gzip trailer", func(d []byte) []byte { d[len(d)-3] ^= 0x80; return d }, "has SHA-256"},
		{"cut short", func(d []byte) []byte { return d[:len(d)-100] }, "bytes, but the manifest says"},
		{"a byte more", func(d []byte) []byte { return append(d, 0) }, "bytes, but the manifest says"},
	}
	obj := b.ObjectPath("kez/prod/b1/server/" + backup.SQLiteObject)
	good := readFile(t, obj)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(obj, tt.damage(bytes.Clone(good)), 0o644); err != nil {
				t.Fatal(err)
			}
			dst := tempPath(t, "kez-chat.db")
			_, err := restore(b, backup.SQLiteTarget{Path: dst, DB: sqlite.ChatDatabase}, "b1", backup.PartServer)
			var ce *backup.ChecksumError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "damaged") {
				t.Fatalf("restore of a damaged object: %v; want a checksum error saying %q", err, tt.want)
			}
			for _, p := range []string{dst, dst + ".restore-tmp"} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s exists after a refused restore", p)
				}
			}
		})
	}
}

func TestRestoreRefusesATamperedKeyLogChain(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	path := tempPath(t, "kez-sig.db")
	keyLog := openKeyLog(t, path)
	dir := server.NewKeyDirectory(keyLog, slog.New(slog.DiscardHandler), nil)
	pid := publishChain(t, dir, 3)
	publishChain(t, dir, 2)
	take(t, b, backup.SQLiteSource{Path: path, DB: sqlite.KeyLogDatabase}, "keys", backup.PartSigServer)

	tests := []struct {
		name, sql, want string
	}{
		{"a version removed", `DELETE FROM key_documents WHERE primary_id = ? AND version = 2`, "breaks at version 3"},
		{"the first version removed", `DELETE FROM key_documents WHERE primary_id = ? AND version = 1`, "breaks at version 2"},
		{"a document swapped for another version's", `UPDATE key_documents SET document = (SELECT document FROM key_documents WHERE primary_id = ?1 AND version = 1) WHERE primary_id = ?1 AND version = 2`, "holds a document of"},
		{"a signature broken", `UPDATE key_documents SET document = CAST(replace(CAST(document AS TEXT), '"sig":"', '"sig":"AA') AS BLOB) WHERE primary_id = ? AND version = 3`, "does not verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Whoever can write to the bucket can replace an object and its
			// manifest entry together: checksums do not help, the chain does.
			tampered := tempPath(t, "tampered.db")
			if err := sqlite.Snapshot(ctx, path, tampered); err != nil {
				t.Fatal(err)
			}
			db, err := sql.Open("sqlite", tampered)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(tt.sql, pid); err != nil {
				t.Fatal(err)
			}
			db.Close()
			replaceObject(t, b, "kez/prod/keys/sigserver/", backup.SQLiteObject, gzipped(t, readFile(t, tampered)))

			dst := tempPath(t, "kez-sig.db")
			_, err = restore(b, backup.SQLiteTarget{Path: dst, DB: sqlite.KeyLogDatabase}, "keys", backup.PartSigServer)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), pid) {
				t.Fatalf("restore of a tampered key log: %v; want %q about %s", err, tt.want, pid)
			}
			if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s exists after a refused restore", dst)
			}
		})
	}
}

func gzipped(t testing.TB, data []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// replaceObject replaces a data object and its manifest entry, as someone
// with write access to the bucket could.
func replaceObject(t testing.TB, b *bucket, folder, name string, data []byte) {
	t.Helper()
	ctx := context.Background()
	rc, err := b.store.Get(ctx, folder+backup.ManifestName)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(rc)
	rc.Close()
	m, err := backup.ParseManifest(raw)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	for i := range m.Objects {
		if m.Objects[i].Name == name {
			m.Objects[i].Size, m.Objects[i].SHA256 = int64(len(data)), hex.EncodeToString(sum[:])
		}
	}
	raw, _ = json.Marshal(m)
	if err := b.store.Put(ctx, folder+name, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := b.store.Put(ctx, folder+backup.ManifestName, bytes.NewReader(raw), int64(len(raw))); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreOntoAnExistingDatabaseDoesNothing(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	src := tempPath(t, "kez-chat.db")
	if err := openChat(t, src).CreateUser(ctx, user("alice")); err != nil {
		t.Fatal(err)
	}
	take(t, b, backup.SQLiteSource{Path: src, DB: sqlite.ChatDatabase}, "b1", backup.PartServer)

	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"a live database", func(t *testing.T, path string) {
			db := openChat(t, path)
			if err := db.CreateUser(ctx, user("zed")); err != nil {
				t.Fatal(err)
			}
			db.Close()
		}},
		{"an empty file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"only a write-ahead log", func(t *testing.T, path string) {
			if err := os.WriteFile(path+"-wal", []byte("frames"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tempPath(t, "kez-chat.db")
			tt.setup(t, path)
			before := snapshotFiles(t, path)
			res, err := restore(b, backup.SQLiteTarget{Path: path, DB: sqlite.ChatDatabase}, "b1", backup.PartServer)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Skipped || res.Existing != path {
				t.Errorf("result %+v: want skipped, naming %s", res, path)
			}
			if after := snapshotFiles(t, path); !slices.Equal(before, after) {
				t.Errorf("the files changed: %q, then %q", before, after)
			}
		})
	}
}

func snapshotFiles(t testing.TB, path string) []string {
	var out []string
	for _, p := range []string{path, path + "-wal", path + ".restore-tmp"} {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			out = append(out, p+": none")
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s: %x", p, sha256.Sum256(b)))
	}
	return out
}

func TestRetentionDeletesByCountAndAgeButNeverTheNewBackup(t *testing.T) {
	ctx := context.Background()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	tests := []struct {
		name        string
		keep        backup.Retention
		newAt       time.Duration // after base; the five earlier ones are at 0..4 days
		wantDeleted []string
	}{
		{"no limits keep everything", backup.Retention{}, 5 * day, nil},
		{"count 3 keeps the new and the two newest", backup.Retention{KeepCount: 3}, 5 * day, []string{"b2", "b1", "b0"}},
		{"count 1 keeps only the new", backup.Retention{KeepCount: 1}, 5 * day, []string{"b4", "b3", "b2", "b1", "b0"}},
		{"age 2.5 days", backup.Retention{KeepAge: 60 * time.Hour}, 5 * day, []string{"b2", "b1", "b0"}},
		{"age and count: the stricter wins", backup.Retention{KeepCount: 2, KeepAge: 60 * time.Hour}, 5 * day, []string{"b3", "b2", "b1", "b0"}},
		{"a new backup older than the age limit is kept", backup.Retention{KeepAge: time.Hour}, 5 * day, []string{"b4", "b3", "b2", "b1", "b0"}},
	}
	b := newBucket(t)
	path := tempPath(t, "kez-chat.db")
	if err := openChat(t, path).CreateUser(ctx, user("alice")); err != nil {
		t.Fatal(err)
	}
	src := backup.SQLiteSource{Path: path, DB: sqlite.ChatDatabase}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			layout := backup.Layout{Prefix: fmt.Sprintf("case%d", i)}
			at := func(d time.Duration) func(*backup.Options) {
				return func(o *backup.Options) { o.Layout = layout; o.Now = func() time.Time { return base.Add(d) } }
			}
			for j := range 5 {
				take(t, b, src, fmt.Sprintf("b%d", j), backup.PartServer, at(time.Duration(j)*day))
			}
			// Another part's backups are not this part's to count or delete.
			take(t, b, src, "b0", backup.PartSigServer, at(0))
			// The new backup's clock is the one that took it: with an
			// age limit shorter than the backup took, it is still kept.
			res := take(t, b, src, "new", backup.PartServer, func(o *backup.Options) {
				o.Layout, o.Retention = layout, tt.keep
				calls := 0
				o.Now = func() time.Time { calls++; return base.Add(tt.newAt + time.Duration(calls)*time.Minute) }
			})
			if !slices.Equal(res.Deleted, tt.wantDeleted) && !(len(res.Deleted) == 0 && tt.wantDeleted == nil) {
				t.Errorf("deleted %q, want %q", res.Deleted, tt.wantDeleted)
			}
			list, _, err := backup.List(ctx, b.store, layout, backup.PartServer)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, m := range list {
				ids = append(ids, m.ID)
			}
			want := []string{"new", "b4", "b3", "b2", "b1", "b0"}
			want = slices.DeleteFunc(want, func(id string) bool { return slices.Contains(tt.wantDeleted, id) })
			if !slices.Equal(ids, want) {
				t.Errorf("left %q, want %q", ids, want)
			}
			// A deleted backup leaves no object behind.
			keys, _ := b.store.List(ctx, layout.Root())
			for _, k := range keys {
				for _, id := range tt.wantDeleted {
					if strings.HasPrefix(k, layout.Folder(id, backup.PartServer)) {
						t.Errorf("%s is left of deleted backup %s", k, id)
					}
				}
			}
			if other, _, _ := backup.List(ctx, b.store, layout, backup.PartSigServer); len(other) != 1 {
				t.Errorf("the sigserver part's backups: %d, want 1", len(other))
			}
		})
	}
}

func TestAFolderWithoutManifestIsNotABackup(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	path := tempPath(t, "kez-chat.db")
	if err := openChat(t, path).CreateUser(ctx, user("alice")); err != nil {
		t.Fatal(err)
	}
	take(t, b, backup.SQLiteSource{Path: path, DB: sqlite.ChatDatabase}, "complete", backup.PartServer)
	// An upload cut short before its manifest, and stray objects.
	layout := backup.Layout{Prefix: "kez/prod"}
	for _, key := range []string{
		"kez/prod/incomplete/server/" + backup.SQLiteObject,
		"kez/prod/stray.json",
		"kez/prod/complete/server/manifest.json.bak",
		"kez/prod/a/b/server/manifest.json",
	} {
		if err := b.store.Put(ctx, key, strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
	}
	list, bad, err := backup.List(ctx, b.store, layout, backup.PartServer)
	if err != nil || len(bad) > 0 {
		t.Fatal(err, bad)
	}
	if len(list) != 1 || list[0].ID != "complete" {
		t.Errorf("listed %d backups, want only \"complete\"", len(list))
	}
	_, err = restore(b, backup.SQLiteTarget{Path: tempPath(t, "x.db"), DB: sqlite.ChatDatabase}, "incomplete", backup.PartServer)
	if !errors.Is(err, backup.ErrNotFound) || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("restore from a folder without manifest: %v", err)
	}
}

func TestTakeNeverReplacesACompletedBackup(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	path := tempPath(t, "kez-chat.db")
	if err := openChat(t, path).CreateUser(ctx, user("alice")); err != nil {
		t.Fatal(err)
	}
	src := backup.SQLiteSource{Path: path, DB: sqlite.ChatDatabase}
	first := take(t, b, src, "b1", backup.PartServer)
	_, err := backup.Take(ctx, src, backup.Options{Store: b.store, Layout: backup.Layout{Prefix: "kez/prod"}, ID: "b1", Part: backup.PartServer})
	if err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("a second backup with the same id: %v", err)
	}
	list, _, _ := backup.List(ctx, b.store, backup.Layout{Prefix: "kez/prod"}, backup.PartServer)
	if len(list) != 1 || !list[0].CompletedAt.Equal(first.CompletedAt) {
		t.Errorf("the first backup changed: %+v", list)
	}
}

func TestABackupRemovesTheCopyAKilledBackupLeftButNotARecentOne(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	path := tempPath(t, "kez-chat.db")
	if err := openChat(t, path).CreateUser(ctx, user("alice")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(path)
	stale, recent := filepath.Join(dir, ".kezchat-backup-111"), filepath.Join(dir, ".kezchat-backup-222")
	for _, d := range []string{stale, recent} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "snapshot.db"), []byte("partial copy"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-7 * time.Hour)
	for _, p := range []string{stale, filepath.Join(stale, "snapshot.db")} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	take(t, b, backup.SQLiteSource{Path: path, DB: sqlite.ChatDatabase}, "b1", backup.PartServer)
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stale copy is still there: %v", err)
	}
	if _, err := os.Stat(recent); err != nil {
		t.Errorf("a recent copy (maybe a backup running) was removed: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".kezchat-backup-*"))
	if len(left) != 1 {
		t.Errorf("left beside the database: %q", left)
	}
}
