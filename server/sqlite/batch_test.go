package sqlite

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"kez.lat/chat/server"
)

// inboxLen counts recipient's stored envelopes.
func inboxLen(t *testing.T, db *DB, recipient string) int {
	t.Helper()
	envs, err := db.Messages(context.Background(), recipient, 0, 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	return len(envs)
}

func TestAppendMessagesGivesEachEnvelopeASeqOfItsRecipientsInbox(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob", "carol")
	mustAppend(t, db, "bob", "carol", "before", "x") // bob's next seq is 2
	envs := []*server.Envelope{envelope("bob", "alice", "g:bob", "to bob"), envelope("carol", "alice", "g:carol", "to carol"),
		envelope("alice", "alice", "g:alice", "sync copy")}
	dups, err := db.AppendMessages(context.Background(), envs, server.InboxLimits{MaxPending: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []uint64{2, 1, 1} {
		if dups[i] || envs[i].Seq != want || envs[i].ReceivedAt.IsZero() {
			t.Fatalf("envelope %d: seq %d dup %v received %v, want seq %d, stored now", i, envs[i].Seq, dups[i], envs[i].ReceivedAt, want)
		}
	}
	got, err := db.Messages(context.Background(), "carol", 0, 10, 0)
	if err != nil || len(got) != 1 || string(got[0].Message) != "to carol" || got[0].ID != "g:carol" {
		t.Fatalf("carol's inbox: %v, %v", got, err)
	}
}

func TestAppendMessagesStoresNothingWhenOneEnvelopeIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		second *server.Envelope
		code   string
	}{
		{"a full inbox", envelope("carol", "alice", "g:carol", "x"), server.CodeInboxFull},
		{"an unknown recipient", envelope("nobody", "alice", "g:nobody", "x"), server.CodeUnknownHandle},
		{"a message id used for another message", envelope("carol", "alice", "used", "other"), server.CodeMessageIDConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := openTest(t)
			mustCreate(t, db, "alice", "bob", "carol")
			mustAppend(t, db, "carol", "alice", "used", "first")
			mustAppend(t, db, "carol", "bob", "fills", "x") // carol holds 2 of 2
			envs := []*server.Envelope{envelope("bob", "alice", "g:bob", "x"), tc.second, envelope("alice", "alice", "g:alice", "x")}
			_, err := db.AppendMessages(context.Background(), envs, server.InboxLimits{MaxPending: 2})
			wantCode(t, err, tc.code)
			var e *server.Error
			if !errors.As(err, &e) || e.Index == nil || *e.Index != 1 {
				t.Fatalf("refusal %v does not name envelope 1", err)
			}
			if n := inboxLen(t, db, "bob") + inboxLen(t, db, "alice"); n != 0 {
				t.Fatalf("%d envelopes of a refused group stored", n)
			}
			// The seqs the undone appends took are given again: nothing was committed.
			if s := mustAppend(t, db, "bob", "alice", "after", "x"); s != 1 {
				t.Fatalf("bob's next seq = %d, want 1", s)
			}
		})
	}
}

func TestAppendMessagesAnswersARetryWithTheOriginalSeqs(t *testing.T) {
	db := openTest(t)
	mustCreate(t, db, "alice", "bob", "carol")
	group := func() []*server.Envelope {
		return []*server.Envelope{envelope("bob", "alice", "g:bob", "x"), envelope("carol", "alice", "g:carol", "y")}
	}
	first := group()[:1] // an earlier attempt stored bob's only
	if _, err := db.AppendMessages(context.Background(), first, server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	retry := group()
	dups, err := db.AppendMessages(context.Background(), retry, server.InboxLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if !dups[0] || retry[0].Seq != first[0].Seq || dups[1] || retry[1].Seq != 1 {
		t.Fatalf("retry: dups %v seqs %d %d, want [true false] %d 1", dups, retry[0].Seq, retry[1].Seq, first[0].Seq)
	}
	again := group()
	dups, err = db.AppendMessages(context.Background(), again, server.InboxLimits{})
	if err != nil || !dups[0] || !dups[1] {
		t.Fatalf("second retry: %v, %v; want all duplicates", dups, err)
	}
	if n := inboxLen(t, db, "bob") + inboxLen(t, db, "carol"); n != 2 {
		t.Fatalf("%d envelopes stored, want 2", n)
	}
}

func TestAckDeletesOnlyWhatEveryDeviceAcknowledged(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	for i := range 4 {
		mustAppend(t, db, "bob", "alice", fmt.Sprint(i), "x")
	}
	both := []string{"laptop", "phone"}
	ack := func(device string, upto uint64, devices []string) int {
		t.Helper()
		n, err := db.Ack(ctx, "bob", device, upto, devices)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := ack("phone", 0, both); n != 0 {
		t.Fatalf("upto=0 deleted %d", n)
	}
	if n := ack("laptop", 3, both); n != 0 {
		t.Fatalf("the laptop's ack deleted %d while the phone holds the inbox at 0", n)
	}
	if n := ack("phone", 2, both); n != 2 {
		t.Fatalf("the phone's ack to 2 deleted %d, want 2", n)
	}
	if n := ack("laptop", 1, both); n != 0 {
		t.Fatalf("an ack behind the laptop's point deleted %d", n)
	}
	if n := ack("phone", 4, both); n != 1 {
		t.Fatalf("the phone's ack to 4 deleted %d, want 1 (the laptop's point, 3, did not move back)", n)
	}
	// The laptop's key is revoked: its point (3) no longer holds envelope 4.
	if n := ack("phone", 4, []string{"phone"}); n != 1 {
		t.Fatalf("after the laptop's revocation the phone's ack deleted %d, want 1", n)
	}
	if n := inboxLen(t, db, "bob"); n != 0 {
		t.Fatalf("%d envelopes left", n)
	}
	// nil devices (unknown now) forgets nobody: a new point of the laptop
	// holds the inbox again.
	mustAppend(t, db, "bob", "alice", "5", "x")
	ack("laptop", 0, nil)
	if n := ack("phone", 5, nil); n != 0 {
		t.Fatalf("the phone's ack deleted %d while the laptop holds the inbox", n)
	}
	if n, err := db.Ack(ctx, "nobody", "phone", 3, nil); err != nil || n != 0 {
		t.Fatalf("Ack of an unknown inbox: %d, %v", n, err)
	}
}

func TestAnAckBehindTheDevicesPointDeletesUpToThePoint(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustCreate(t, db, "alice", "bob")
	for i := range 6 {
		mustAppend(t, db, "bob", "alice", fmt.Sprint(i), "x")
	}
	both := []string{"laptop", "phone"}
	for _, a := range []struct {
		device      string
		upto        uint64
		devices     []string
		wantDeleted int
	}{
		{"laptop", 0, both, 0},
		{"phone", 5, both, 0},
		{"laptop", 2, both, 2},
		// The laptop is revoked; the phone acknowledges behind its point,
		// which stays at 5 and now alone holds the inbox.
		{"phone", 4, []string{"phone"}, 3},
		{"phone", 6, []string{"phone"}, 1},
	} {
		n, err := db.Ack(ctx, "bob", a.device, a.upto, a.devices)
		if err != nil || n != a.wantDeleted {
			t.Fatalf("%s acknowledging %d: deleted %d, %v; want %d", a.device, a.upto, n, err, a.wantDeleted)
		}
	}
}
