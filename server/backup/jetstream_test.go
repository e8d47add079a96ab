package backup_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"kez.lat/chat/server"
	"kez.lat/chat/server/backup"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/storetest"
	"kez.lat/chat/server/testutil"
)

func openJetStream(t testing.TB, n *testutil.NATS) *jsstore.Store {
	t.Helper()
	s, err := jsstore.Open(context.Background(), jsstore.Config{NATS: natsbus.Config{URL: n.URL, ReconnectWait: 20 * time.Millisecond}}, testLog(t))
	if err != nil {
		t.Fatalf("opening the JetStream store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func connect(t testing.TB, n *testutil.NATS) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

var (
	jsHandles    = []string{"alice", "bob", "carol"}
	jsCheckpoint = []byte(`{"payload":"v2","signature":{}}`)
)

// jsSeed is what seedJetStream stored.
type jsSeed struct {
	store *jsstore.Store
	// blob is alice's, named by a message to carol; blobData its bytes.
	blob     *server.Blob
	blobData []byte
}

// seedJetStream fills a JetStream store with users, messages (some of
// bob's acknowledged, one to carol naming a blob) and a key checkpoint, and
// backs it up as id.
func seedJetStream(t *testing.T, b *bucket, id string) *jsSeed {
	t.Helper()
	ctx := context.Background()
	src := testutil.StartNATS(t, testutil.NATSOptions{})
	store := openJetStream(t, src)
	for _, h := range jsHandles {
		if err := store.CreateUser(ctx, user(h)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 30 {
		if _, err := store.AppendMessage(ctx, envelope(jsHandles[i%3], jsHandles[(i+1)%3], fmt.Sprintf("m%02d", i)), server.InboxLimits{}); err != nil {
			t.Fatal(err)
		}
	}
	first, _ := store.Messages(ctx, "bob", 0, 3, 0)
	if _, err := store.Ack(ctx, "bob", "dev", first[2].Seq, []string{"dev"}); err != nil {
		t.Fatal(err)
	}
	if err := store.SaveKeyCheckpoint(ctx, user("alice").PrimaryID, 2, jsCheckpoint); err != nil {
		t.Fatal(err)
	}
	seed := &jsSeed{store: store, blobData: bytes.Repeat([]byte("blob"), 100_000)}
	seed.blob = putBlob(t, store, "alice", seed.blobData)
	if _, err := store.AppendMessage(ctx, envelopeWithBlobs("carol", "alice", "with-file", seed.blob), server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	// Federation's state: a document queued for another server, a pin, a
	// privacy setting, a remote sender's message id.
	if _, err := store.Enqueue(ctx, []*server.OutboundDoc{storetest.Outbound("alice", "out-1", "two.example", "dave", 10)}, server.OutboxLimits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.PinRemote(ctx, &server.RemotePin{Address: "dave@two.example", PrimaryID: "p-dave", Alg: "ed25519", Key: []byte("k")}); err != nil {
		t.Fatal(err)
	}
	if err := store.SavePrivacy(ctx, "bob", &server.Privacy{Strangers: server.StrangersRefuse, Known: []string{}, Blocked: []string{"evil.example"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.AppendMessage(ctx, envelope("bob", "dave@two.example", "remote-1"), server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	take(t, b, backup.JetStreamSource{NC: connect(t, src), TempDir: t.TempDir()}, id, backup.PartServer)
	return seed
}

// backUpOneMessage backs up, as id, a JetStream store holding alice and
// one message to her.
func backUpOneMessage(t *testing.T, b *bucket, id string) {
	t.Helper()
	ctx := context.Background()
	src := testutil.StartNATS(t, testutil.NATSOptions{})
	store := openJetStream(t, src)
	if err := store.CreateUser(ctx, user("alice")); err != nil {
		t.Fatal(err)
	}
	if _, err := store.AppendMessage(ctx, envelope("alice", "alice", "m1"), server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	take(t, b, backup.JetStreamSource{NC: connect(t, src), TempDir: t.TempDir()}, id, backup.PartServer)
}

// checkJetStreamRestored checks that the store on dst holds what
// seedJetStream put in store, and takes new messages.
func checkJetStreamRestored(t *testing.T, seed *jsSeed, dst *testutil.NATS) {
	t.Helper()
	ctx := context.Background()
	store := seed.store
	got := openJetStream(t, dst)
	if d, err := blobBytes(got, seed.blob.ID); err != nil || !bytes.Equal(d, seed.blobData) {
		t.Errorf("restored blob: %d bytes, %v; want its %d bytes", len(d), err, len(seed.blobData))
	}
	for _, h := range jsHandles {
		want, _ := store.UserByHandle(ctx, h)
		u, err := got.UserByHandle(ctx, h)
		if err != nil {
			t.Fatalf("restored user %s: %v", h, err)
		}
		if u.PrimaryID != want.PrimaryID || !bytes.Equal(u.Key, want.Key) {
			t.Errorf("restored %s = %+v, want %+v", h, u, want)
		}
		wantMsgs, _ := store.Messages(ctx, h, 0, 100, 0)
		msgs, err := got.Messages(ctx, h, 0, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != len(wantMsgs) || len(msgs) == 0 {
			t.Fatalf("%s: %d undelivered messages restored, want %d", h, len(msgs), len(wantMsgs))
		}
		for i := range msgs {
			if msgs[i].Seq != wantMsgs[i].Seq || msgs[i].ID != wantMsgs[i].ID || !bytes.Equal(msgs[i].Message, wantMsgs[i].Message) {
				t.Errorf("%s message %d = %d %s, want %d %s", h, i, msgs[i].Seq, msgs[i].ID, wantMsgs[i].Seq, wantMsgs[i].ID)
			}
		}
	}
	if msgs, _ := got.Messages(ctx, "bob", 0, 100, 0); len(msgs) != 8 {
		t.Errorf("bob has %d messages after the restore, want the 8 he had not acknowledged", len(msgs))
	}
	if cp, err := got.KeyCheckpoint(ctx, user("alice").PrimaryID); err != nil || !bytes.Equal(cp, jsCheckpoint) {
		t.Errorf("restored key checkpoint %q, %v", cp, err)
	}
	if e, err := got.OutboxEntries(ctx, "alice", 10); err != nil || len(e) != 1 || e[0].ID != "out-1" || e[0].State != server.OutboxQueued {
		t.Errorf("restored outbox: %+v, %v", e, err)
	}
	if due, err := got.DueDeliveries(ctx, time.Now().Add(time.Second), 10); err != nil || len(due) != 1 || due[0].Domain != "two.example" {
		t.Errorf("restored outbox's due deliveries: %+v, %v", due, err)
	}
	if p, err := got.PinRemote(ctx, &server.RemotePin{Address: "dave@two.example", PrimaryID: "other"}); err != nil || p.PrimaryID != "p-dave" {
		t.Errorf("restored pin: %+v, %v", p, err)
	}
	if p, err := got.Privacy(ctx, "bob"); err != nil || p.Strangers != server.StrangersRefuse {
		t.Errorf("restored privacy setting: %+v, %v", p, err)
	}
	if dup, err := got.AppendMessage(ctx, envelope("bob", "dave@two.example", "remote-1"), server.InboxLimits{}); err != nil || !dup {
		t.Errorf("a remote sender's retry after the restore: dup %v, %v", dup, err)
	}
	// The handle stays taken, and the restored store takes new messages.
	if err := got.CreateUser(ctx, user("alice")); err == nil {
		t.Errorf("alice could register again after the restore")
	}
	if _, err := got.AppendMessage(ctx, envelope("alice", "bob", "after"), server.InboxLimits{}); err != nil {
		t.Errorf("append after restore: %v", err)
	}
}

func TestJetStreamRoundTripRestoresUsersUndeliveredMessagesAndKeyCheckpoints(t *testing.T) {
	b := newBucket(t)
	seed := seedJetStream(t, b, "js-1")
	dst := testutil.StartNATS(t, testutil.NATSOptions{})
	if _, err := restore(b, backup.JetStreamTarget{NC: connect(t, dst), TempDir: t.TempDir()}, "js-1", backup.PartServer); err != nil {
		t.Fatal(err)
	}
	checkJetStreamRestored(t, seed, dst)

	// A second restore finds the marker and does nothing.
	res, err := restore(b, backup.JetStreamTarget{NC: connect(t, dst), TempDir: t.TempDir()}, "js-1", backup.PartServer)
	if err != nil || !res.Skipped || !strings.Contains(res.Existing, "backup js-1 was restored") {
		t.Errorf("restore onto a restored store: %+v, %v", res, err)
	}
}

func TestJetStreamBackupUnderWriteLoadHasEveryMessageAcknowledgedBeforeItStarted(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	src := testutil.StartNATS(t, testutil.NATSOptions{})
	store := openJetStream(t, src)
	handles := []string{"alice", "bob", "carol", "dave"}
	for _, h := range handles {
		if err := store.CreateUser(ctx, user(h)); err != nil {
			t.Fatal(err)
		}
	}
	load := startWriteLoad(t, store, handles)
	load.waitFor(t, 500)
	started := time.Now()
	take(t, b, backup.JetStreamSource{NC: connect(t, src), TempDir: t.TempDir()}, "load", backup.PartServer)
	load.waitFor(t, load.count()+100) // the writers went on after it, too
	load.end()

	dst := testutil.StartNATS(t, testutil.NATSOptions{})
	if _, err := restore(b, backup.JetStreamTarget{NC: connect(t, dst), TempDir: t.TempDir()}, "load", backup.PartServer); err != nil {
		t.Fatal(err)
	}
	got := openJetStream(t, dst)
	have := map[string]bool{}
	for _, h := range handles {
		if _, err := got.UserByHandle(ctx, h); err != nil {
			t.Fatalf("user %s: %v", h, err)
		}
		msgs, err := got.Messages(ctx, h, 0, 1_000_000, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			have[h+"/"+m.ID] = true
		}
	}
	before, _ := load.checkAckedBefore(t, started, have)
	t.Logf("%d acknowledged before the backup, %d restored", before, len(have))
}

func TestJetStreamRestoreOfADamagedSnapshotCreatesNoStream(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	backUpOneMessage(t, b, "js")
	// The users bucket's snapshot, restored after the envelopes', is damaged:
	// nothing may be restored at all.
	obj := b.ObjectPath("kez/prod/js/server/KV_" + jsstore.BucketUsers + ".snapshot")
	data := readFile(t, obj)
	data[len(data)/2] ^= 0x40
	if err := writeFile(obj, data); err != nil {
		t.Fatal(err)
	}
	dst := testutil.StartNATS(t, testutil.NATSOptions{})
	nc := connect(t, dst)
	_, err := restore(b, backup.JetStreamTarget{NC: nc, TempDir: t.TempDir()}, "js", backup.PartServer)
	if err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("restore of a damaged snapshot: %v", err)
	}
	for _, stream := range jsstore.BackupStreams() {
		if exists, _, err := jsstore.StreamMessages(ctx, nc, stream); err != nil || exists {
			t.Errorf("stream %s exists after a refused restore (%v)", stream, err)
		}
	}
}

func TestJetStreamRestoreThatFailsHalfWayTakesBackTheStreamsItMade(t *testing.T) {
	ctx := context.Background()
	b := newBucket(t)
	backUpOneMessage(t, b, "js")
	// The users bucket's configuration names another stream, checksums and
	// all: JetStream refuses it after the envelopes are restored.
	folder := "kez/prod/js/server/"
	meta := readFile(t, b.ObjectPath(folder+"KV_"+jsstore.BucketUsers+".json"))
	bad := bytes.Replace(meta, []byte(`"name":"KV_`+jsstore.BucketUsers+`"`), []byte(`"name":"KV_other"`), 1)
	if bytes.Equal(bad, meta) {
		t.Fatalf("no stream name in %s", meta)
	}
	replaceObject(t, b, folder, "KV_"+jsstore.BucketUsers+".json", bad)

	dst := testutil.StartNATS(t, testutil.NATSOptions{})
	nc := connect(t, dst)
	_, err := restore(b, backup.JetStreamTarget{NC: nc, TempDir: t.TempDir()}, "js", backup.PartServer)
	if err == nil || !strings.Contains(err.Error(), "KV_"+jsstore.BucketUsers) {
		t.Fatalf("restore with a bad stream configuration: %v", err)
	}
	for _, stream := range jsstore.BackupStreams() {
		if exists, _, err := jsstore.StreamMessages(ctx, nc, stream); err != nil || exists {
			t.Errorf("stream %s is left after a failed restore (%v)", stream, err)
		}
	}
	// Fixed, the next attempt restores everything.
	replaceObject(t, b, folder, "KV_"+jsstore.BucketUsers+".json", meta)
	if _, err := restore(b, backup.JetStreamTarget{NC: nc, TempDir: t.TempDir()}, "js", backup.PartServer); err != nil {
		t.Fatalf("the restore after the failed one: %v", err)
	}
	if _, msgs, _ := jsstore.StreamMessages(ctx, nc, jsstore.StreamName); msgs != 1 {
		t.Errorf("%d envelopes restored, want 1", msgs)
	}
}
