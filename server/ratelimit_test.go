package server

import (
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestLimiter(rate float64, burst, maxKeys int) (*RateLimiter, *fakeClock) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := NewRateLimiter(rate, burst, maxKeys)
	l.now = clock.now
	return l, clock
}

func TestLimiterAllowsBurstThenRefusesWithRetryAfter(t *testing.T) {
	l, _ := newTestLimiter(2, 3, 10)
	for i := range 3 {
		if ok, _ := l.Allow("a"); !ok {
			t.Fatalf("event %d refused inside the burst", i)
		}
	}
	ok, wait := l.Allow("a")
	if ok {
		t.Fatal("event past the burst allowed")
	}
	if wait != 500*time.Millisecond {
		t.Fatalf("retry after %v, want 500ms at 2/s", wait)
	}
}

func TestLimiterRefillsOverTime(t *testing.T) {
	l, clock := newTestLimiter(1, 1, 10)
	l.Allow("a")
	if ok, _ := l.Allow("a"); ok {
		t.Fatal("second event allowed with an empty bucket")
	}
	clock.t = clock.t.Add(time.Second)
	if ok, _ := l.Allow("a"); !ok {
		t.Fatal("event refused after the bucket refilled")
	}
}

func TestLimiterKeysAreIndependent(t *testing.T) {
	l, _ := newTestLimiter(1, 1, 10)
	l.Allow("a")
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("key b refused because key a spent its token")
	}
}

func TestLimiterCheckDoesNotSpend(t *testing.T) {
	l, _ := newTestLimiter(1, 1, 10)
	for range 3 {
		if ok, _ := l.Check("a"); !ok {
			t.Fatal("Check refused a fresh key")
		}
	}
	l.Allow("a")
	if ok, _ := l.Check("a"); ok {
		t.Fatal("Check allowed a key with an empty bucket")
	}
}

func TestLimiterStaysWithinMaxKeys(t *testing.T) {
	l, _ := newTestLimiter(1, 5, 100)
	for i := range 10_000 {
		l.Allow(string(rune('a'+i%26)) + string(rune(i)))
	}
	if n := len(l.buckets); n > 100 {
		t.Fatalf("limiter holds %d keys, bound is 100", n)
	}
}

func TestLimiterEvictsIdleKeysBeforeExhaustedOnes(t *testing.T) {
	l, clock := newTestLimiter(1, 1, 2)
	l.Allow("idle")
	clock.t = clock.t.Add(time.Second) // idle's bucket is full again
	l.Allow("abuser")
	l.Allow("newcomer")
	if _, ok := l.buckets["idle"]; ok {
		t.Fatal("idle key kept while the map was full")
	}
	if ok, _ := l.Allow("abuser"); ok {
		t.Fatal("exhausted key was forgotten and got a fresh bucket")
	}
}

func TestNilLimiterAllowsEverything(t *testing.T) {
	l := NewRateLimiter(0, 1, 1)
	if ok, _ := l.Allow("x"); !ok {
		t.Fatal("nil limiter refused")
	}
}

func TestAByteQuotaSpendsBytesRefundsThemAndSaysWhenEnoughAreBack(t *testing.T) {
	l, clock := newTestLimiter(100, 1000, 10) // 100 bytes a second, 1,000 at once
	if ok, _ := l.AllowN("a", 600); !ok {
		t.Fatal("600 of 1,000 refused")
	}
	ok, wait := l.AllowN("a", 500)
	if ok || wait != time.Second {
		t.Fatalf("500 more with 400 left: %v, retry after %v; want refused, 1s", ok, wait)
	}
	l.Refund("a", 600)
	if ok, _ := l.AllowN("a", 1000); !ok {
		t.Fatal("the whole quota refused after a refund")
	}
	clock.t = clock.t.Add(5 * time.Second)
	if ok, _ := l.AllowN("a", 500); !ok {
		t.Fatal("500 refused after 5 s at 100/s")
	}
	if ok, _ := l.AllowN("b", 1001); ok {
		t.Fatal("more than the burst allowed")
	}
}
