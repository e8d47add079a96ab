package jsstore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/storetest"
	"kez.lat/chat/server/testutil"
)

func TestTheFederationStoreBehaviour(t *testing.T) {
	storetest.Federation(t, func(t *testing.T) server.FederationStore {
		s := open(t, testutil.StartNATS(t, testutil.NATSOptions{}), 0)
		mustCreate(t, s, "alice", "bob")
		return s
	})
}

func TestTwoReplicasQueueingForOneSenderAtOnceStayWithinItsOutbox(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	a, b := open(t, n, 0), open(t, n, 0)
	mustCreate(t, a, "alice")
	limits := server.OutboxLimits{MaxDocs: 10}
	var wg sync.WaitGroup
	var mu sync.Mutex
	queued, full := 0, 0
	for i := range 30 {
		s := []*jsstore.Store{a, b}[i%2]
		wg.Go(func() {
			_, err := s.Enqueue(context.Background(), []*server.OutboundDoc{storetest.Outbound("alice", "m"+string(rune('A'+i)), "two.example", "bob", 10)}, limits)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				queued++
			case server.ErrorCode(err) == server.CodeOutboxFull:
				full++
			default:
				t.Errorf("Enqueue: %v", err)
			}
		})
	}
	wg.Wait()
	if queued != limits.MaxDocs || full != 30-limits.MaxDocs {
		t.Fatalf("%d queued and %d refused as full, want exactly %d queued", queued, full, limits.MaxDocs)
	}
	entries, err := b.OutboxEntries(context.Background(), "alice", 100)
	if err != nil || len(entries) != limits.MaxDocs {
		t.Fatalf("%d entries (%v), want %d", len(entries), err, limits.MaxDocs)
	}
}

func TestARemoteSendersMessageIDOutlivesItsEnvelopeAndTheStreamsWindow(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "bob")
	ctx := context.Background()
	first := &server.Envelope{Recipient: "bob", Sender: "alice@one.example", ID: "m1", Message: []byte("doc")}
	if _, err := s.AppendMessage(ctx, first, server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ack(ctx, "bob", "dev", first.Seq, nil); err != nil {
		t.Fatal(err)
	}
	// Acknowledged and gone, the stream answers a retry of its id as a
	// duplicate whatever it holds; the remote id record tells a retry
	// (the original seq) from another document (a conflict), for the
	// whole federation window.
	retry := &server.Envelope{Recipient: "bob", Sender: "alice@one.example", ID: "m1", Message: []byte("doc")}
	if dup, err := s.AppendMessage(ctx, retry, server.InboxLimits{}); err != nil || !dup || retry.Seq != first.Seq {
		t.Fatalf("a retry after the ack: dup %v seq %d, %v; want the original seq %d", dup, retry.Seq, err, first.Seq)
	}
	other := &server.Envelope{Recipient: "bob", Sender: "alice@one.example", ID: "m1", Message: []byte("another")}
	if _, err := s.AppendMessage(ctx, other, server.InboxLimits{}); server.ErrorCode(err) != server.CodeMessageIDConflict {
		t.Fatalf("another document under the id: %v, want message_id_conflict", err)
	}
	group := []*server.Envelope{
		{Recipient: "bob", Sender: "alice@one.example", ID: "m1", Message: []byte("doc")},
		{Recipient: "bob", Sender: "alice@one.example", ID: "m2", Message: []byte("doc 2")},
	}
	dups, err := s.AppendMessages(ctx, group, server.InboxLimits{})
	if err != nil || !dups[0] || dups[1] || group[0].Seq != first.Seq || group[1].Seq <= first.Seq {
		t.Fatalf("a relayed batch with the retry: dups %v seqs %d %d, %v", dups, group[0].Seq, group[1].Seq, err)
	}
	st, err := jetStreamOf(t, n).Stream(ctx, jsstore.RemoteIDStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.Config.MaxAge != server.RemoteIDWindow || info.State.Msgs != 2 {
		t.Fatalf("remote ids stream: max age %v, %d ids (%v); want %v and 2", info.Config.MaxAge, info.State.Msgs, err, server.RemoteIDWindow)
	}
}

func TestABlobAQueuedDocumentNamesIsKeptUntilTheRetention(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice")
	id := putBlob(t, s, "alice", []byte("encrypted attachment"))
	d := storetest.Outbound("alice", "m1", "two.example", "bob", 10)
	d.Blobs = []string{id}
	if _, err := s.Enqueue(context.Background(), []*server.OutboundDoc{d}, server.OutboxLimits{}); err != nil {
		t.Fatal(err)
	}
	// A day on, no envelope here names it: a local blob would go.
	if n := pruneBlobs(t, s, time.Now().Add(25*time.Hour)); n != 0 || !blobKept(t, s, id) {
		t.Fatalf("pruned %d blobs a day after upload", n)
	}
	if n := pruneBlobs(t, s, time.Now().Add(blobRetention+time.Hour)); n != 1 {
		t.Fatalf("pruned %d blobs after the retention, want 1", n)
	}
	other := storetest.Outbound("alice", "m2", "two.example", "bob", 10)
	other.Blobs = []string{putBlob(t, s, "bob", []byte("not alice's"))}
	_, err := s.Enqueue(context.Background(), []*server.OutboundDoc{other}, server.OutboxLimits{})
	if server.ErrorCode(err) != server.CodeUnknownBlob {
		t.Fatalf("a blob another person uploaded: %v, want unknown_blob", err)
	}
}
