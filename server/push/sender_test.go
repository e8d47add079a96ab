package push

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"testing"
	"time"

	"kez.lat/chat/server/push/pushtest"
)

// fast retries, so tests of retrying take milliseconds.
var fast = Config{RetryBase: time.Millisecond, RetryMax: 20 * time.Millisecond}

var topicSyntax = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

func TestSenderPushesOnlyTheNoticeToEverySubscription(t *testing.T) {
	h := newHarness(t, Config{}, true)
	bobPhone := h.store.add(t, "bob", h.svc.Subscribe())
	bobLaptop := h.store.add(t, "bob", h.svc.Subscribe())

	h.sender.Notify("bob", 42)
	got := map[string]string{}
	for range 2 {
		p := h.next(t)
		got[p.Endpoint] = string(p.Plaintext)
	}
	want := `{"type":"message","to":"bob","seq":42}`
	if got[bobPhone] != want || got[bobLaptop] != want {
		t.Fatalf("plaintexts = %q, want %s at both endpoints", got, want)
	}
	// The service hands over a push before the sender reads its answer.
	waitFor(t, "both pushes counted as sent", func() bool { return h.outcomes(t, outcomeSent) == 2 })
}

func TestSenderSignsWithTheSubjectThePushServiceExpects(t *testing.T) {
	// webpush-go adds "mailto:" to a subscriber unless it starts with
	// "https:"; the push service sees the subject exactly once either way.
	for _, subject := range []string{"mailto:ops@chat.test", "ops@chat.test", "https://chat.test/contact"} {
		t.Run(subject, func(t *testing.T) {
			h := newHarness(t, Config{Subject: subject}, true)
			h.store.add(t, "bob", h.svc.Subscribe())
			h.sender.Notify("bob", 1)
			h.next(t)
		})
	}
}

func TestSenderSetsTTLUrgencyAndOneTopicPerRecipient(t *testing.T) {
	h := newHarness(t, Config{}, true)
	h.store.add(t, "bob", h.svc.Subscribe())
	h.store.add(t, "carol", h.svc.Subscribe())

	h.sender.Notify("bob", 1)
	first := h.next(t)
	h.sender.Notify("bob", 2)
	second := h.next(t)
	h.sender.Notify("carol", 1)
	carol := h.next(t)

	for name, p := range map[string]pushtest.Push{"bob's first": first, "bob's second": second, "carol's": carol} {
		if p.TTL != "86400" || p.Urgency != "high" || !topicSyntax.MatchString(p.Topic) {
			t.Errorf("%s push: TTL %q, Urgency %q, Topic %q; want 86400, high and at most 32 base64url characters",
				name, p.TTL, p.Urgency, p.Topic)
		}
	}
	if first.Topic != second.Topic {
		t.Errorf("two notices to bob have topics %q and %q, want one, so they collapse", first.Topic, second.Topic)
	}
	if carol.Topic == first.Topic {
		t.Errorf("bob and carol share topic %q", carol.Topic)
	}
}

func TestSenderPrunesASubscriptionItsPushServiceSaysIsGone(t *testing.T) {
	for _, status := range []int{http.StatusNotFound, http.StatusGone} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			h := newHarness(t, fast, true)
			gone := h.store.add(t, "bob", h.svc.Subscribe())
			kept := h.store.add(t, "bob", h.svc.Subscribe())
			h.svc.SetResponse(gone, status, 1)

			h.sender.Notify("bob", 1)
			if p := h.next(t); p.Endpoint != kept {
				t.Fatalf("push went to %s, want the live subscription", p.Endpoint)
			}
			waitFor(t, "the prune", func() bool { return h.outcomes(t, outcomePruned) == 1 })
			if h.store.has("bob", gone) || !h.store.has("bob", kept) {
				t.Fatalf("after %d: gone subscription kept %v, live one kept %v; want only the live one",
					status, h.store.has("bob", gone), h.store.has("bob", kept))
			}
			if n := h.metric(t, "kezchat_push_subscriptions_pruned_total", ""); n != 1 {
				t.Fatalf("subscriptions pruned = %v, want 1", n)
			}
			if n := h.svc.Requests(gone); n != 1 {
				t.Fatalf("the gone subscription got %d requests, want 1 (no retry)", n)
			}
		})
	}
}

func TestSenderRetriesOverloadAndServerErrorsMaxAttemptsThenKeepsTheSubscription(t *testing.T) {
	for _, status := range []int{http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			cfg := fast
			cfg.MaxAttempts = 4
			h := newHarness(t, cfg, true)
			ep := h.store.add(t, "bob", h.svc.Subscribe())
			h.svc.SetResponse(ep, status, 100)

			h.sender.Notify("bob", 1)
			waitFor(t, "the push to fail", func() bool { return h.outcomes(t, outcomeFailed) == 1 })
			if n := h.svc.Requests(ep); n != 4 {
				t.Fatalf("requests = %d, want MaxAttempts = 4", n)
			}
			if n := h.outcomes(t, outcomeRetried); n != 3 {
				t.Fatalf("retried = %v, want 3", n)
			}
			if !h.store.has("bob", ep) {
				t.Fatal("the subscription was deleted")
			}
			h.noPush(t)
		})
	}
}

func TestSenderSucceedsWhenARetryDoes(t *testing.T) {
	h := newHarness(t, fast, true)
	ep := h.store.add(t, "bob", h.svc.Subscribe())
	h.svc.SetResponse(ep, http.StatusBadGateway, 2)

	h.sender.Notify("bob", 1)
	if p := h.next(t); string(p.Plaintext) != `{"type":"message","to":"bob","seq":1}` {
		t.Fatalf("plaintext = %s", p.Plaintext)
	}
	if n := h.svc.Requests(ep); n != 3 {
		t.Fatalf("requests = %d, want 3", n)
	}
}

func TestSenderWaitsAsLongAsRetryAfterAsks(t *testing.T) {
	cfg := fast
	cfg.RetryMax = 5 * time.Second
	h := newHarness(t, cfg, true)
	ep := h.store.add(t, "bob", h.svc.Subscribe())
	h.svc.SetReply(ep, pushtestReply(http.StatusTooManyRequests, "1"), 1)

	start := time.Now()
	h.sender.Notify("bob", 1)
	h.next(t)
	if waited := time.Since(start); waited < time.Second {
		t.Fatalf("retried after %v, want at least Retry-After's 1s", waited)
	}
	if n := h.svc.Requests(ep); n != 2 {
		t.Fatalf("requests = %d, want 2", n)
	}
}

func TestSenderGivesUpWhenRetryAfterExceedsRetryMax(t *testing.T) {
	h := newHarness(t, fast, true)
	ep := h.store.add(t, "bob", h.svc.Subscribe())
	h.svc.SetReply(ep, pushtestReply(http.StatusTooManyRequests, "3600"), 1)

	h.sender.Notify("bob", 1)
	waitFor(t, "the push to fail", func() bool { return h.outcomes(t, outcomeFailed) == 1 })
	if n := h.svc.Requests(ep); n != 1 {
		t.Fatalf("requests = %d, want 1: the service asked to wait an hour", n)
	}
	if !h.store.has("bob", ep) {
		t.Fatal("the subscription was deleted")
	}
}

func TestSenderDropsOtherClientErrorsAndKeepsTheSubscription(t *testing.T) {
	for _, status := range []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestEntityTooLarge} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			h := newHarness(t, fast, true)
			ep := h.store.add(t, "bob", h.svc.Subscribe())
			h.svc.SetResponse(ep, status, 100)

			h.sender.Notify("bob", 1)
			waitFor(t, "the push to fail", func() bool { return h.outcomes(t, outcomeFailed) == 1 })
			if n := h.svc.Requests(ep); n != 1 {
				t.Fatalf("requests = %d, want 1 (no retry)", n)
			}
			if !h.store.has("bob", ep) {
				t.Fatal("the subscription was deleted")
			}
		})
	}
}

func TestSenderTimesOutAHangingPushService(t *testing.T) {
	cfg := fast
	cfg.Timeout, cfg.MaxAttempts = 100*time.Millisecond, 2
	h := newHarness(t, cfg, true)
	ep := h.store.add(t, "bob", h.svc.Subscribe())
	h.svc.Hang(ep)

	h.sender.Notify("bob", 1)
	waitFor(t, "the push to time out", func() bool { return h.outcomes(t, outcomeFailed) == 1 })
	if n := h.svc.Requests(ep); n != 2 {
		t.Fatalf("requests = %d, want 2: a timeout is retried", n)
	}
	if !h.store.has("bob", ep) {
		t.Fatal("the subscription was deleted")
	}
}

func TestSenderDropsAndCountsNoticesWhenTheQueueIsFull(t *testing.T) {
	h := newHarness(t, Config{Workers: 1, QueueSize: 1, Timeout: time.Minute}, true)
	ep := h.store.add(t, "bob", h.svc.Subscribe())
	h.svc.Hang(ep)

	h.sender.Notify("bob", 1) // taken by the only worker, which hangs
	waitFor(t, "the worker to hang", func() bool { return h.svc.Requests(ep) == 1 })
	h.sender.Notify("bob", 2) // queued
	h.sender.Notify("bob", 3) // dropped: Notify does not wait for the hung worker
	if d := h.sender.QueueDepth(); d != 1 {
		t.Fatalf("QueueDepth = %d, want 1", d)
	}
	if g := h.metric(t, "kezchat_push_queue_depth", ""); g != 1 {
		t.Fatalf("queue depth gauge = %v, want 1", g)
	}
	if n := h.outcomes(t, outcomeDropped); n != 1 {
		t.Fatalf("dropped = %v, want 1", n)
	}

	// Closing within a short deadline abandons the hung push and drops the
	// queued notice.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := h.sender.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want the deadline exceeded", err)
	}
	if n := h.outcomes(t, outcomeDropped); n != 3 {
		t.Fatalf("dropped = %v after Close, want 3: the full queue's, the queued and the abandoned", n)
	}
	h.sender.Notify("bob", 4) // after Close: dropped, not a panic
	if n := h.outcomes(t, outcomeDropped); n != 4 {
		t.Fatalf("dropped = %v after a Notify on a closed sender, want 4", n)
	}
}

func TestSenderSendsNoticesQueuedBeforeStartAndDrainsOnClose(t *testing.T) {
	h := newHarness(t, Config{}, false)
	h.store.add(t, "bob", h.svc.Subscribe())
	for seq := range uint64(3) {
		h.sender.Notify("bob", seq+1)
	}
	h.sender.Start()
	if err := h.sender.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := h.outcomes(t, outcomeSent); n != 3 {
		t.Fatalf("sent = %v, want every queued notice", n)
	}
	if err := h.sender.Close(t.Context()); err != nil {
		t.Fatalf("a second Close: %v", err)
	}
}

func TestSenderCloseWithoutStartDropsTheQueue(t *testing.T) {
	h := newHarness(t, Config{}, false)
	h.sender.Notify("bob", 1)
	if err := h.sender.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := h.outcomes(t, outcomeDropped); n != 1 {
		t.Fatalf("dropped = %v, want 1", n)
	}
}

func TestSenderDoesNotContactAnEndpointThePolicyNoLongerAllows(t *testing.T) {
	h := newHarness(t, fast, true)
	other := newHarness(t, fast, false) // a push service h's policy does not trust
	ep := h.store.add(t, "bob", other.svc.Subscribe())

	h.sender.Notify("bob", 1)
	waitFor(t, "the push to fail", func() bool { return h.outcomes(t, outcomeFailed) == 1 })
	if n := other.svc.Requests(ep); n != 0 {
		t.Fatalf("the untrusted service got %d requests", n)
	}
	if n := h.outcomes(t, outcomeRetried); n != 0 {
		t.Fatalf("retried = %v, want 0", n)
	}
}
