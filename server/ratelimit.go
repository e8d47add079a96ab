package server

import (
	"math"
	"sync"
	"time"
)

// RateLimiter is a token bucket per key (a client address or a handle):
// Rate events per second per key, in bursts of up to Burst. It tracks at
// most MaxKeys keys: when full, buckets that have refilled (whose keys are
// idle) are forgotten first, and if none has, the key with the fullest
// bucket goes, so memory stays bounded under a flood of new keys.
//
// A nil *RateLimiter allows everything: a limit that is off.
type RateLimiter struct {
	rate    float64
	burst   float64
	maxKeys int
	now     func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// NewRateLimiter returns a RateLimiter; a rate of 0 or less returns nil,
// which allows everything.
func NewRateLimiter(perSecond float64, burst, maxKeys int) *RateLimiter {
	if perSecond <= 0 {
		return nil
	}
	return &RateLimiter{
		rate:    perSecond,
		burst:   float64(max(burst, 1)),
		maxKeys: max(maxKeys, 1),
		now:     time.Now,
		buckets: make(map[string]*bucket),
	}
}

// Allow spends one token of key's bucket, or reports how long until one is
// available.
func (l *RateLimiter) Allow(key string) (bool, time.Duration) { return l.AllowN(key, 1) }

// AllowN spends n tokens of key's bucket (a quota in bytes spends one a
// byte), or reports how long until n are available. n larger than the
// burst is never allowed.
func (l *RateLimiter) AllowN(key string, n float64) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(key)
	if b.tokens >= n {
		b.tokens -= n
		return true, 0
	}
	return false, l.waitFor(b, n)
}

// Refund gives back n tokens spent for something that did not happen.
func (l *RateLimiter) Refund(key string, n float64) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.buckets[key]; ok {
		b.tokens = min(l.burst, b.tokens+n)
	}
}

// Check reports whether key has a token left without spending it.
func (l *RateLimiter) Check(key string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		return true, 0
	}
	l.fill(b)
	if b.tokens >= 1 {
		return true, 0
	}
	return false, l.wait(b)
}

func (l *RateLimiter) wait(b *bucket) time.Duration { return l.waitFor(b, 1) }

func (l *RateLimiter) waitFor(b *bucket, n float64) time.Duration {
	return time.Duration(math.Ceil((min(n, l.burst) - b.tokens) / l.rate * float64(time.Second)))
}

// refill returns key's bucket, topped up for the time since its last use.
func (l *RateLimiter) refill(key string) *bucket {
	if b, ok := l.buckets[key]; ok {
		l.fill(b)
		return b
	}
	if len(l.buckets) >= l.maxKeys {
		l.evict()
	}
	b := &bucket{tokens: l.burst, last: l.now()}
	l.buckets[key] = b
	return b
}

func (l *RateLimiter) fill(b *bucket) {
	now := l.now()
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
}

// evict forgets every full bucket (an idle key loses nothing by being
// forgotten), or the fullest one if none is full.
func (l *RateLimiter) evict() {
	var fullestKey string
	fullest := -1.0
	for k, b := range l.buckets {
		l.fill(b)
		if b.tokens >= l.burst {
			delete(l.buckets, k)
			continue
		}
		if b.tokens > fullest {
			fullest, fullestKey = b.tokens, k
		}
	}
	if len(l.buckets) >= l.maxKeys {
		delete(l.buckets, fullestKey)
	}
}
