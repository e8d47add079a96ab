package sqlite

import (
	"context"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/storetest"
)

func TestTheFederationStoreBehaviour(t *testing.T) {
	storetest.Federation(t, func(t *testing.T) server.FederationStore {
		db := openTest(t)
		mustCreate(t, db, "alice", "bob")
		return db
	})
}

func TestABlobAFederatedMessageNamesIsKeptUntilTheRetention(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustCreate(t, db, "alice")
	b := putBlob(t, db, "alice", []byte("encrypted attachment"), blobEpoch)
	d := storetest.Outbound("alice", "m1", "two.example", "bob", 10)
	d.Blobs = []string{b.ID}
	if _, err := db.Enqueue(ctx, []*server.OutboundDoc{d}, server.OutboxLimits{}); err != nil {
		t.Fatal(err)
	}
	// A day later, no envelope here names it; a local blob would go.
	if n := pruneBlobsAt(t, db, blobEpoch.Add(25*time.Hour)); n != 0 {
		t.Fatalf("pruned %d blobs a day after upload", n)
	}
	if n := pruneBlobsAt(t, db, blobEpoch.Add(testRetention+time.Hour)); n != 1 {
		t.Fatalf("pruned %d blobs after the retention, want 1", n)
	}
	other := storetest.Outbound("alice", "m2", "two.example", "bob", 10)
	other.Blobs = []string{"not-alices"}
	_, err := db.Enqueue(ctx, []*server.OutboundDoc{other}, server.OutboxLimits{})
	wantCode(t, err, server.CodeUnknownBlob)
}

func TestARemoteSendersMessageIDsOutliveTheLocalWindow(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustCreate(t, db, "bob")
	now := time.Now()
	e := envelope("bob", "alice@one.example", "m1", "doc")
	if _, err := db.AppendMessage(ctx, e, server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Ack(ctx, "bob", "dev", e.Seq, nil); err != nil {
		t.Fatal(err)
	}
	// An hour on, past sent_ids' 15 minutes, a retry is still known.
	if _, err := db.Prune(ctx, now.Add(time.Hour), now.Add(-testRetention)); err != nil {
		t.Fatal(err)
	}
	dup, err := db.AppendMessage(ctx, envelope("bob", "alice@one.example", "m1", "doc"), server.InboxLimits{})
	if err != nil || !dup {
		t.Fatalf("a retry an hour later: dup %v, %v", dup, err)
	}
	if _, err := db.Prune(ctx, now.Add(server.RemoteIDWindow+time.Hour), now.Add(-testRetention)); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, "SELECT count(*) FROM remote_sent_ids"); n != 0 {
		t.Fatalf("%d remote ids left after their window", n)
	}
}
