package sqlite

import (
	"context"
	"fmt"
	"testing"
	"time"

	"kez.lat/chat/server"
)

func pushSub(handle, endpoint string, at time.Time) *server.PushSubscription {
	return &server.PushSubscription{Handle: handle, Endpoint: endpoint, P256dh: []byte{4, 1}, Auth: []byte{2}, CreatedAt: at}
}

func endpoints(t *testing.T, subs []*server.PushSubscription) []string {
	var out []string
	for _, s := range subs {
		out = append(out, s.Endpoint)
	}
	return out
}

func TestPushSubscriptionsUpsertByEndpointAndEvictTheOldest(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustCreate(t, db, "alice")
	base := time.Unix(1_700_000_000, 0)
	for i := range 4 {
		// Same second for all: the order must still be kept.
		if err := db.SavePushSubscription(ctx, pushSub("alice", fmt.Sprintf("https://push.example/%d", i), base.Add(time.Duration(i))), 3); err != nil {
			t.Fatal(err)
		}
	}
	subs, err := db.PushSubscriptions(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(endpoints(t, subs)); got != "[https://push.example/1 https://push.example/2 https://push.example/3]" {
		t.Fatalf("after 4 subscriptions with a cap of 3: %s", got)
	}
	// Re-subscribing an endpoint refreshes it instead of adding one.
	if err := db.SavePushSubscription(ctx, pushSub("alice", "https://push.example/1", base.Add(time.Second)), 3); err != nil {
		t.Fatal(err)
	}
	subs, _ = db.PushSubscriptions(ctx, "alice")
	if got := fmt.Sprint(endpoints(t, subs)); got != "[https://push.example/2 https://push.example/3 https://push.example/1]" {
		t.Fatalf("after refreshing 1: %s", got)
	}
	deleted, err := db.DeletePushSubscription(ctx, "alice", "https://push.example/2")
	if err != nil || !deleted {
		t.Fatalf("delete: %v %v", deleted, err)
	}
	if deleted, _ := db.DeletePushSubscription(ctx, "alice", "https://push.example/2"); deleted {
		t.Fatal("deleting twice reported a deletion")
	}
	if subs, _ := db.PushSubscriptions(ctx, "bob"); len(subs) != 0 {
		t.Fatalf("bob has %d subscriptions", len(subs))
	}
}
