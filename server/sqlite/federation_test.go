package sqlite

import (
	"bytes"
	"context"
	"testing"
	"time"

	"kez.lat/chat/server"
)

func outbound(sender, id, domain, to string, size int) *server.OutboundDoc {
	return &server.OutboundDoc{Sender: sender, ID: id, Domain: domain, Recipient: to,
		Message: bytes.Repeat([]byte{'m'}, size), TS: time.Now()}
}

func TestTheOutboxIsBoundedInDocumentsAndBytesPerSender(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		limits server.OutboxLimits
		sizes  []int // queued in turn; the last is refused
	}{
		{"documents", server.OutboxLimits{MaxDocs: 3}, []int{10, 10, 10, 10}},
		{"bytes", server.OutboxLimits{MaxBytes: 1000}, []int{400, 400, 201}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db := openTest(t)
			mustCreate(t, db, "alice", "bob")
			last := len(tt.sizes) - 1
			for i, size := range tt.sizes[:last] {
				if _, err := db.Enqueue(ctx, []*server.OutboundDoc{outbound("alice", "m"+string(rune('a'+i)), "two.example", "bob", size)}, tt.limits); err != nil {
					t.Fatalf("Enqueue %d: %v", i, err)
				}
			}
			_, err := db.Enqueue(ctx, []*server.OutboundDoc{outbound("alice", "over", "two.example", "bob", tt.sizes[last])}, tt.limits)
			wantCode(t, err, server.CodeOutboxFull)
			// Another sender's outbox is its own.
			if _, err := db.Enqueue(ctx, []*server.OutboundDoc{outbound("bob", "b1", "two.example", "carol", tt.sizes[last])}, tt.limits); err != nil {
				t.Fatalf("another sender: %v", err)
			}
			// A retry of a queued document is answered, full or not.
			dups, err := db.Enqueue(ctx, []*server.OutboundDoc{outbound("alice", "ma", "two.example", "bob", tt.sizes[0])}, tt.limits)
			if err != nil || !dups[0] {
				t.Fatalf("retry of a queued document: %v %v", dups, err)
			}
			// Delivering the first makes room.
			due, err := db.DueDeliveries(ctx, time.Now().Add(time.Second), 10)
			if err != nil || len(due) == 0 {
				t.Fatalf("DueDeliveries: %v %v", due, err)
			}
			for _, d := range due {
				if d.Sender == "alice" {
					if err := db.FinishDelivery(ctx, []int64{d.Unit}, server.DeliveryResult{State: server.OutboxDelivered, At: time.Now()}); err != nil {
						t.Fatal(err)
					}
				}
			}
			if _, err := db.Enqueue(ctx, []*server.OutboundDoc{outbound("alice", "over", "two.example", "bob", tt.sizes[last])}, tt.limits); err != nil {
				t.Fatalf("after a delivery: %v", err)
			}
		})
	}
}

func TestEachSendersQueueForADomainIsDeliveredOneUnitAtATimeInOrder(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustCreate(t, db, "alice")
	// One group send to two servers, then a message to the first.
	if _, err := db.Enqueue(ctx, []*server.OutboundDoc{outbound("alice", "g:bob", "two.example", "bob", 5),
		outbound("alice", "g:carol", "three.example", "carol", 5), outbound("alice", "g:bea", "two.example", "bea", 5)}, server.OutboxLimits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Enqueue(ctx, []*server.OutboundDoc{outbound("alice", "later", "two.example", "bob", 5)}, server.OutboxLimits{}); err != nil {
		t.Fatal(err)
	}
	due, err := db.DueDeliveries(ctx, time.Now().Add(time.Second), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 2 || due[0].Domain != "two.example" || due[1].Domain != "three.example" {
		t.Fatalf("due = %+v, want two.example's first unit and three.example's", due)
	}
	if err := db.DeliveryMessages(ctx, due[0], true, 256, 1<<20); err != nil || len(due[0].Messages) != 2 {
		t.Fatalf("the first unit's documents: %d, %v; want the two for two.example", len(due[0].Messages), err)
	}
	// A retry later holds back two.example's next unit.
	if err := db.FinishDelivery(ctx, []int64{due[0].Unit}, server.DeliveryResult{State: server.OutboxQueued, At: time.Now(),
		NextAt: time.Now().Add(time.Hour), Code: server.CodeUnavailable}); err != nil {
		t.Fatal(err)
	}
	if due, err = db.DueDeliveries(ctx, time.Now().Add(time.Second), 10); err != nil || len(due) != 1 || due[0].Domain != "three.example" {
		t.Fatalf("due after a retry is scheduled = %+v %v, want three.example's alone", due, err)
	}
	entries, err := db.OutboxEntries(ctx, "alice", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 || entries[0].ID != "later" || entries[2].ID != "g:bea" || entries[2].Error == nil || entries[2].Error.Code != server.CodeUnavailable {
		t.Fatalf("entries = %+v", entries)
	}
}

func TestABlobAFederatedMessageNamesIsKeptUntilTheRetention(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustCreate(t, db, "alice")
	b := putBlob(t, db, "alice", []byte("encrypted attachment"), blobEpoch)
	d := outbound("alice", "m1", "two.example", "bob", 10)
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
	other := outbound("alice", "m2", "two.example", "bob", 10)
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

func TestPinsKeepTheFirstIdentityOfAnAddress(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	first := &server.RemotePin{Address: "alice@one.example", PrimaryID: "p1", Alg: "ed25519", Key: []byte("k1")}
	if got, err := db.PinRemote(ctx, first); err != nil || got.PrimaryID != "p1" {
		t.Fatalf("first pin: %+v %v", got, err)
	}
	got, err := db.PinRemote(ctx, &server.RemotePin{Address: "alice@one.example", PrimaryID: "p2", Alg: "ed25519", Key: []byte("k2")})
	if err != nil || got.PrimaryID != "p1" || !bytes.Equal(got.Key, []byte("k1")) {
		t.Fatalf("second pin = %+v %v, want the first kept", got, err)
	}
}

func TestADeliveryCarriesTheWholeSendsQueuedBehindItThatFit(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustCreate(t, db, "alice")
	// Three single sends to two.example, a group send of two there, one to
	// three.example between them, and a send by bob.
	for _, docs := range [][]*server.OutboundDoc{
		{outbound("alice", "a1", "two.example", "bob", 100)},
		{outbound("alice", "c1", "three.example", "carol", 100)},
		{outbound("alice", "a2", "two.example", "bob", 100)},
		{outbound("alice", "g:bob", "two.example", "bob", 100), outbound("alice", "g:bea", "two.example", "bea", 100)},
		{outbound("alice", "a3", "two.example", "bob", 100)},
	} {
		if _, err := db.Enqueue(ctx, docs, server.OutboxLimits{}); err != nil {
			t.Fatal(err)
		}
	}
	head := func() *server.Delivery {
		due, err := db.DueDeliveries(ctx, time.Now().Add(time.Second), 10)
		if err != nil || len(due) == 0 || due[0].Domain != "two.example" {
			t.Fatalf("due = %+v, %v", due, err)
		}
		return due[0]
	}
	for _, tt := range []struct {
		name             string
		alone            bool
		maxDocs          int
		maxBytes         int64
		units, documents int
	}{
		{"everything that fits", false, 256, 1 << 20, 4, 5},
		{"whole sends within the document cap", false, 3, 1 << 20, 2, 2},
		{"a group send is never split", false, 3, 1 << 20, 2, 2},
		{"within the byte cap", false, 256, 250, 2, 2},
		{"the head alone", true, 256, 1 << 20, 1, 1},
		{"the head even when over the caps", false, 0, 0, 1, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := head()
			if err := db.DeliveryMessages(ctx, d, tt.alone, tt.maxDocs, tt.maxBytes); err != nil {
				t.Fatal(err)
			}
			if len(d.Units) != tt.units || len(d.Messages) != tt.documents || d.Units[0] != d.Unit {
				t.Fatalf("units %v, %d documents; want %d units, %d documents, the head first", d.Units, len(d.Messages), tt.units, tt.documents)
			}
		})
	}
	d := head()
	if err := db.DeliveryMessages(ctx, d, false, 256, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := db.FinishDelivery(ctx, d.Units, server.DeliveryResult{State: server.OutboxDelivered, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	entries, err := db.OutboxEntries(ctx, "alice", 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if want := map[bool]string{true: server.OutboxQueued, false: server.OutboxDelivered}[e.ID == "c1"]; e.State != want {
			t.Errorf("%s is %s, want %s", e.ID, e.State, want)
		}
	}
}
