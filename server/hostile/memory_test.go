package hostile_test

import (
	"fmt"
	"testing"
	"time"

	"kez.lat/chat/client"
)

// fill registers victim and fills its inbox with n messages of about
// 64 KiB, from senders that each stay within the per-handle send limit's
// burst.
func fill(t *testing.T, tg *target, victim string, n int) *client.Identity {
	t.Helper()
	id, u := tg.register(t, victim)
	for s := 0; n > 0; s++ {
		from, _ := tg.register(t, fmt.Sprintf("%s-sender%d", victim, s))
		k := min(n, 50)
		if codes := tg.send(t, from, u, k); codes[""] != k {
			t.Fatalf("filling %s's inbox: %v", victim, codes)
		}
		n -= k
	}
	return id
}

// An attacker fills an inbox of its own with large messages, then asks for
// pages of up to 1,000 envelopes with one replayable auth header and never
// reads the answers. Each page is bounded in bytes and written envelope by
// envelope, so the polls hold a page each at most, not the inbox (before:
// 4 polls of 300 envelopes held 434 MB of heap for 45 s).
func TestUnreadPollsOfAFullInboxHoldLittleMemory(t *testing.T) {
	tg := start(t)
	const polls, envelopes = 4, 250
	owner := fill(t, tg, "victim", envelopes)
	path := "/v1/inbox/victim"
	header := "X-KEZ-Auth: " + auth(t, owner, "GET", path, "since=0")
	before := tg.heap(t)
	for range polls {
		tg.rawRequest(t, get(path+"?limit=1000", header))
	}
	peak := tg.peakHeapOver(t, 3*time.Second)
	grew := (peak - before) / mib
	t.Logf("heap %.1f MiB before, %.1f MiB at peak with %d unread polls of %d envelopes: +%.1f MiB", before/mib, peak/mib, polls, envelopes, grew)
	if grew > 16 {
		t.Fatalf("%d unread polls grew the server's heap by %.1f MiB, want at most 16", polls, grew)
	}
}

// The same attacker opens streams of that inbox and never reads them
// (before: 8 such streams held 178 MB). A stream reads the store a page,
// bounded in bytes, at a time, and writes a frame at a time.
func TestStreamsThatNeverReadHoldLittleMemory(t *testing.T) {
	tg := start(t)
	const streams, envelopes = 8, 250
	owner := fill(t, tg, "victim", envelopes)
	path := "/v1/inbox/victim/stream"
	before := tg.heap(t)
	for range streams {
		tg.rawRequest(t, get(path+"?auth="+streamAuth(t, owner)))
	}
	peak := tg.peakHeapOver(t, 3*time.Second)
	grew := (peak - before) / mib
	t.Logf("heap %.1f MiB before, %.1f MiB at peak with %d streams that never read: +%.1f MiB", before/mib, peak/mib, streams, grew)
	if grew > 24 {
		t.Fatalf("%d streams that never read grew the server's heap by %.1f MiB, want at most 24", streams, grew)
	}
}
