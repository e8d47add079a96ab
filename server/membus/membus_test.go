package membus

import (
	"context"
	"errors"
	"testing"

	"kez.lat/chat/server"
)

func envelope(to string, seq uint64) *server.Envelope {
	return &server.Envelope{Recipient: to, Seq: seq}
}

func TestPublishReachesEverySubscriptionOfTheRecipientOnly(t *testing.T) {
	ctx := context.Background()
	b := New()
	a1, _ := b.Subscribe(ctx, "alice", 4)
	a2, _ := b.Subscribe(ctx, "alice", 4)
	bob, _ := b.Subscribe(ctx, "bob", 4)

	b.Publish(ctx, envelope("alice", 1))

	for i, sub := range []server.Subscription{a1, a2} {
		select {
		case e := <-sub.C():
			if e.Seq != 1 {
				t.Fatalf("subscription %d got seq %d, want 1", i, e.Seq)
			}
		default:
			t.Fatalf("subscription %d got nothing", i)
		}
	}
	select {
	case e := <-bob.C():
		t.Fatalf("bob's subscription got alice's envelope %d", e.Seq)
	default:
	}
}

func TestFullSubscriptionIsClosedWithoutBlockingThePublisher(t *testing.T) {
	ctx := context.Background()
	b := New()
	slow, _ := b.Subscribe(ctx, "alice", 2)
	fast, _ := b.Subscribe(ctx, "alice", 8)
	for seq := uint64(1); seq <= 3; seq++ {
		b.Publish(ctx, envelope("alice", seq))
	}
	var got []uint64
	for e := range slow.C() {
		got = append(got, e.Seq)
	}
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("slow subscription delivered %v before closing, want [1 2]", got)
	}
	if n := len(fast.C()); n != 3 {
		t.Fatalf("fast subscription holds %d envelopes, want 3", n)
	}
	slow.Close() // closing a dropped subscription again is harmless
}

func TestClosedSubscriptionIsForgotten(t *testing.T) {
	ctx := context.Background()
	b := New()
	sub, _ := b.Subscribe(ctx, "alice", 1)
	sub.Close()
	sub.Close()
	b.Publish(ctx, envelope("alice", 1))
	if _, ok := <-sub.C(); ok {
		t.Fatal("closed subscription received an envelope")
	}
	if len(b.subs) != 0 {
		t.Fatalf("bus still tracks %d recipients", len(b.subs))
	}
}

func TestHooksSeeEachRecipientsFirstAndLastSubscription(t *testing.T) {
	ctx := context.Background()
	var events []string
	b := NewWithHooks(Hooks{
		First: func(r string) error { events = append(events, "first "+r); return nil },
		Last:  func(r string) { events = append(events, "last "+r) },
	})
	a1, _ := b.Subscribe(ctx, "alice", 1)
	b.Subscribe(ctx, "alice", 1)
	b.Subscribe(ctx, "bob", 1)
	a1.Close()
	b.Drop("alice")
	b.Publish(ctx, envelope("bob", 1))
	b.Publish(ctx, envelope("bob", 2)) // bob's buffer of 1 is full: dropped
	want := []string{"first alice", "first bob", "last alice", "last bob"}
	if len(events) != len(want) {
		t.Fatalf("hooks saw %v, want %v", events, want)
	}
	for i := range want {
		if events[i] != want[i] {
			t.Fatalf("hooks saw %v, want %v", events, want)
		}
	}
	if len(b.subs) != 0 {
		t.Fatalf("bus still tracks %d recipients", len(b.subs))
	}
}

func TestAFirstHookErrorRefusesTheSubscription(t *testing.T) {
	refused := errors.New("no")
	b := NewWithHooks(Hooks{First: func(string) error { return refused }})
	if _, err := b.Subscribe(context.Background(), "alice", 1); !errors.Is(err, refused) {
		t.Fatalf("Subscribe = %v, want the hook's error", err)
	}
	if len(b.subs) != 0 {
		t.Fatalf("bus tracks %d recipients after a refusal", len(b.subs))
	}
}

func TestTypingFloodIsBoundedPerSubscriptionAndNeverEndsIt(t *testing.T) {
	ctx := context.Background()
	b := New()
	sub, _ := b.Subscribe(ctx, "bob", 4)
	for range 1000 {
		b.PublishTyping(ctx, &server.Typing{Recipient: "bob", From: "alice", CT: "AAAA"})
	}
	if n := len(sub.Typing()); n != server.TypingBuffer {
		t.Fatalf("%d typing events wait for a reader that never reads; the bound is %d", n, server.TypingBuffer)
	}
	// Still subscribed: envelopes get through, and typing after a read.
	b.Publish(ctx, envelope("bob", 1))
	select {
	case e, ok := <-sub.C():
		if !ok || e.Seq != 1 {
			t.Fatalf("envelope after the flood: %v %v", e, ok)
		}
	default:
		t.Fatal("the subscription lost an envelope after a typing flood")
	}
	<-sub.Typing()
	b.PublishTyping(ctx, &server.Typing{Recipient: "bob", From: "carol", CT: "BBBB"})
	if n := len(sub.Typing()); n != server.TypingBuffer {
		t.Fatalf("%d typing events wait after one was read and one published, want %d", n, server.TypingBuffer)
	}
}
