// Package storetest holds the behaviour every implementation of a store
// interface shares, as tests each implementation runs against itself.
package storetest

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"kez.lat/chat/server"
)

// Outbound is a document of size bytes from sender for to@domain.
func Outbound(sender, id, domain, to string, size int) *server.OutboundDoc {
	return &server.OutboundDoc{Sender: sender, ID: id, Domain: domain, Recipient: to,
		Message: bytes.Repeat([]byte{'m'}, size), TS: time.Now()}
}

func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	if got := server.ErrorCode(err); got != code {
		t.Fatalf("error code = %s (%v), want %s", got, err, code)
	}
}

// Federation runs the server.FederationStore behaviour against the stores
// open returns, each new and with the users alice and bob registered.
func Federation(t *testing.T, open func(t *testing.T) server.FederationStore) {
	t.Run("the outbox is bounded in documents and bytes per sender", func(t *testing.T) { outboxBounded(t, open) })
	t.Run("each sender's queue for a domain is delivered one unit at a time in order", func(t *testing.T) { queueOrder(t, open(t)) })
	t.Run("a delivery carries the whole sends queued behind it that fit", func(t *testing.T) { batching(t, open(t)) })
	t.Run("a message id is queued once, and another document under it is refused", func(t *testing.T) { queuedOnce(t, open(t)) })
	t.Run("pins keep the first identity of an address", func(t *testing.T) { pins(t, open(t)) })
	t.Run("a privacy setting is accept with no lists until saved", func(t *testing.T) { privacy(t, open(t)) })
}

func enqueue(t *testing.T, fs server.FederationStore, docs ...*server.OutboundDoc) []bool {
	t.Helper()
	dups, err := fs.Enqueue(context.Background(), docs, server.OutboxLimits{})
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return dups
}

func due(t *testing.T, fs server.FederationStore) []*server.Delivery {
	t.Helper()
	ds, err := fs.DueDeliveries(context.Background(), time.Now().Add(time.Second), 10)
	if err != nil {
		t.Fatalf("DueDeliveries: %v", err)
	}
	return ds
}

func outboxBounded(t *testing.T, open func(t *testing.T) server.FederationStore) {
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
			fs := open(t)
			last := len(tt.sizes) - 1
			for i, size := range tt.sizes[:last] {
				if _, err := fs.Enqueue(ctx, []*server.OutboundDoc{Outbound("alice", "m"+strconv.Itoa(i), "two.example", "bob", size)}, tt.limits); err != nil {
					t.Fatalf("Enqueue %d: %v", i, err)
				}
			}
			_, err := fs.Enqueue(ctx, []*server.OutboundDoc{Outbound("alice", "over", "two.example", "bob", tt.sizes[last])}, tt.limits)
			wantCode(t, err, server.CodeOutboxFull)
			// Another sender's outbox is its own.
			if _, err := fs.Enqueue(ctx, []*server.OutboundDoc{Outbound("bob", "b1", "two.example", "carol", tt.sizes[last])}, tt.limits); err != nil {
				t.Fatalf("another sender: %v", err)
			}
			// A retry of a queued document is answered, full or not.
			dups, err := fs.Enqueue(ctx, []*server.OutboundDoc{Outbound("alice", "m0", "two.example", "bob", tt.sizes[0])}, tt.limits)
			if err != nil || !dups[0] {
				t.Fatalf("retry of a queued document: %v %v", dups, err)
			}
			// Delivering the first makes room.
			for _, d := range due(t, fs) {
				if d.Sender == "alice" {
					if err := fs.FinishDelivery(ctx, []int64{d.Unit}, server.DeliveryResult{State: server.OutboxDelivered, At: time.Now()}); err != nil {
						t.Fatal(err)
					}
				}
			}
			if _, err := fs.Enqueue(ctx, []*server.OutboundDoc{Outbound("alice", "over", "two.example", "bob", tt.sizes[last])}, tt.limits); err != nil {
				t.Fatalf("after a delivery: %v", err)
			}
		})
	}
}

func queueOrder(t *testing.T, fs server.FederationStore) {
	ctx := context.Background()
	// One group send to two servers, then a message to the first.
	enqueue(t, fs, Outbound("alice", "g:bob", "two.example", "bob", 5),
		Outbound("alice", "g:carol", "three.example", "carol", 5), Outbound("alice", "g:bea", "two.example", "bea", 5))
	enqueue(t, fs, Outbound("alice", "later", "two.example", "bob", 5))
	ds := due(t, fs)
	if len(ds) != 2 || ds[0].Domain != "two.example" || ds[1].Domain != "three.example" || ds[0].Sender != "alice" {
		t.Fatalf("due = %+v, want two.example's first unit and three.example's", ds)
	}
	if err := fs.DeliveryMessages(ctx, ds[0], true, 256, 1<<20); err != nil || len(ds[0].Messages) != 2 {
		t.Fatalf("the first unit's documents: %d, %v; want the two for two.example", len(ds[0].Messages), err)
	}
	// A retry later holds back two.example's next unit.
	if err := fs.FinishDelivery(ctx, []int64{ds[0].Unit}, server.DeliveryResult{State: server.OutboxQueued, At: time.Now(),
		NextAt: time.Now().Add(time.Hour), Code: server.CodeUnavailable}); err != nil {
		t.Fatal(err)
	}
	if ds := due(t, fs); len(ds) != 1 || ds[0].Domain != "three.example" {
		t.Fatalf("due after a retry is scheduled = %+v, want three.example's alone", ds)
	}
	// Due again once its time comes, with its attempt counted.
	again, err := fs.DueDeliveries(ctx, time.Now().Add(2*time.Hour), 10)
	if err != nil || len(again) != 2 || again[0].Domain != "two.example" || again[0].Attempts != 1 || again[0].Unit != ds[0].Unit {
		t.Fatalf("due an hour later = %+v %v, want two.example's head again after 1 attempt", again, err)
	}
	entries, err := fs.OutboxEntries(ctx, "alice", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 || entries[0].ID != "later" || entries[2].ID != "g:bea" || entries[2].To != "bea@two.example" ||
		entries[2].State != server.OutboxQueued || entries[2].Error == nil || entries[2].Error.Code != server.CodeUnavailable {
		t.Fatalf("entries = %s", show(entries))
	}
	// Failed for good: the unit's documents show why, the next unit is due.
	if err := fs.FinishDelivery(ctx, []int64{ds[0].Unit}, server.DeliveryResult{State: server.OutboxFailed, At: time.Now(),
		Code: server.CodeStrangerRefused, Message: "no"}); err != nil {
		t.Fatal(err)
	}
	next := due(t, fs)
	if len(next) != 2 || next[1].Domain != "two.example" || next[1].Unit == ds[0].Unit || next[1].Attempts != 0 {
		t.Fatalf("due after a failure = %+v, want three.example's unit, then two.example's next one", next)
	}
	entries, err = fs.OutboxEntries(ctx, "alice", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0].ID != "later" || entries[0].State != server.OutboxQueued {
		t.Fatalf("the 2 newest entries = %+v", entries)
	}
	entries, _ = fs.OutboxEntries(ctx, "alice", 10)
	for _, e := range entries {
		if e.ID == "g:bob" && (e.State != server.OutboxFailed || e.Error == nil || e.Error.Code != server.CodeStrangerRefused) {
			t.Fatalf("g:bob after its failure: %+v", e)
		}
	}
}

func batching(t *testing.T, fs server.FederationStore) {
	ctx := context.Background()
	// Three single sends to two.example, a group send of two there, one to
	// three.example between them.
	for _, docs := range [][]*server.OutboundDoc{
		{Outbound("alice", "a1", "two.example", "bob", 100)},
		{Outbound("alice", "c1", "three.example", "carol", 100)},
		{Outbound("alice", "a2", "two.example", "bob", 100)},
		{Outbound("alice", "g:bob", "two.example", "bob", 100), Outbound("alice", "g:bea", "two.example", "bea", 100)},
		{Outbound("alice", "a3", "two.example", "bob", 100)},
	} {
		enqueue(t, fs, docs...)
	}
	head := func() *server.Delivery {
		ds := due(t, fs)
		if len(ds) == 0 || ds[0].Domain != "two.example" {
			t.Fatalf("due = %+v", ds)
		}
		return ds[0]
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
		{"a group send is never split", false, 4, 1 << 20, 3, 4},
		{"within the byte cap", false, 256, 250, 2, 2},
		{"the head alone", true, 256, 1 << 20, 1, 1},
		{"the head even when over the caps", false, 0, 0, 1, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := head()
			if err := fs.DeliveryMessages(ctx, d, tt.alone, tt.maxDocs, tt.maxBytes); err != nil {
				t.Fatal(err)
			}
			if len(d.Units) != tt.units || len(d.Messages) != tt.documents || d.Units[0] != d.Unit {
				t.Fatalf("units %v, %d documents; want %d units, %d documents, the head first", d.Units, len(d.Messages), tt.units, tt.documents)
			}
		})
	}
	d := head()
	if err := fs.DeliveryMessages(ctx, d, false, 256, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := fs.FinishDelivery(ctx, d.Units, server.DeliveryResult{State: server.OutboxDelivered, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	// Recorded twice (a courier that lost its answer): nothing changes.
	if err := fs.FinishDelivery(ctx, d.Units, server.DeliveryResult{State: server.OutboxFailed, At: time.Now(), Code: "late"}); err != nil {
		t.Fatal(err)
	}
	entries, err := fs.OutboxEntries(ctx, "alice", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 6 {
		t.Fatalf("%d entries, want 6", len(entries))
	}
	for _, e := range entries {
		if want := map[bool]string{true: server.OutboxQueued, false: server.OutboxDelivered}[e.ID == "c1"]; e.State != want || e.Error != nil {
			t.Errorf("%s is %s (%+v), want %s", e.ID, e.State, e.Error, want)
		}
	}
	if ds := due(t, fs); len(ds) != 1 || ds[0].Domain != "three.example" {
		t.Fatalf("due after two.example's queue was delivered = %+v", ds)
	}
}

func queuedOnce(t *testing.T, fs server.FederationStore) {
	ctx := context.Background()
	enqueue(t, fs, Outbound("alice", "m1", "two.example", "bob", 10))
	dups := enqueue(t, fs, Outbound("alice", "m1", "two.example", "bob", 10), Outbound("alice", "m2", "two.example", "bob", 10))
	if !dups[0] || dups[1] {
		t.Fatalf("dups = %v, want the first a retry and the second new", dups)
	}
	_, err := fs.Enqueue(ctx, []*server.OutboundDoc{Outbound("alice", "m1", "two.example", "bob", 11)}, server.OutboxLimits{})
	wantCode(t, err, server.CodeMessageIDConflict)
	entries, err := fs.OutboxEntries(ctx, "alice", 10)
	if err != nil || len(entries) != 2 {
		t.Fatalf("entries = %+v %v, want m1 and m2 once each", entries, err)
	}
}

func pins(t *testing.T, fs server.FederationStore) {
	ctx := context.Background()
	first := &server.RemotePin{Address: "alice@one.example", PrimaryID: "p1", Alg: "ed25519", Key: []byte("k1")}
	if got, err := fs.PinRemote(ctx, first); err != nil || got.PrimaryID != "p1" {
		t.Fatalf("first pin: %+v %v", got, err)
	}
	got, err := fs.PinRemote(ctx, &server.RemotePin{Address: "alice@one.example", PrimaryID: "p2", Alg: "ed25519", Key: []byte("k2")})
	if err != nil || got.PrimaryID != "p1" || !bytes.Equal(got.Key, []byte("k1")) {
		t.Fatalf("second pin = %+v %v, want the first kept", got, err)
	}
	other, err := fs.PinRemote(ctx, &server.RemotePin{Address: "alice@two.example", PrimaryID: "p3", Alg: "ed25519", Key: []byte("k3")})
	if err != nil || other.PrimaryID != "p3" {
		t.Fatalf("another address's pin = %+v %v", other, err)
	}
	// Unpinned, the address takes the next identity accepted, and only it.
	if was, err := fs.Unpin(ctx, "alice@one.example"); err != nil || !was {
		t.Fatalf("Unpin = %v, %v; want the pin there", was, err)
	}
	if was, err := fs.Unpin(ctx, "alice@one.example"); err != nil || was {
		t.Fatalf("Unpin again = %v, %v; want nothing there", was, err)
	}
	for _, id := range []string{"p2", "p4"} {
		got, err := fs.PinRemote(ctx, &server.RemotePin{Address: "alice@one.example", PrimaryID: id, Alg: "ed25519", Key: []byte("k-" + id)})
		if err != nil || got.PrimaryID != "p2" {
			t.Fatalf("pin %s after the unpin = %+v %v, want p2", id, got, err)
		}
	}
	if p, err := fs.PinRemote(ctx, &server.RemotePin{Address: "alice@two.example", PrimaryID: "p5", Alg: "ed25519", Key: []byte("k5")}); err != nil || p.PrimaryID != "p3" {
		t.Fatalf("another address's pin after the unpin = %+v %v", p, err)
	}
}

func privacy(t *testing.T, fs server.FederationStore) {
	ctx := context.Background()
	p, err := fs.Privacy(ctx, "bob")
	if err != nil || p.Strangers != server.StrangersAccept || len(p.Known) != 0 || len(p.Blocked) != 0 || p.Known == nil {
		t.Fatalf("default setting = %+v %v", p, err)
	}
	want := &server.Privacy{Strangers: server.StrangersRefuse, Known: []string{"alice@one.example"}, Blocked: []string{"evil.example"}}
	if err := fs.SavePrivacy(ctx, "bob", want); err != nil {
		t.Fatal(err)
	}
	p, err = fs.Privacy(ctx, "bob")
	if err != nil || p.Strangers != want.Strangers || len(p.Known) != 1 || p.Known[0] != want.Known[0] || len(p.Blocked) != 1 || p.Blocked[0] != want.Blocked[0] {
		t.Fatalf("saved setting read back = %+v %v", p, err)
	}
	if p, err := fs.Privacy(ctx, "alice"); err != nil || p.Strangers != server.StrangersAccept {
		t.Fatalf("another handle's setting = %+v %v", p, err)
	}
}

func show(entries []*server.OutboxEntry) string {
	var b bytes.Buffer
	for _, e := range entries {
		fmt.Fprintf(&b, "%s to %s %s after %d (%+v); ", e.ID, e.To, e.State, e.Attempts, e.Error)
	}
	return b.String()
}
