package jsstore

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"kez.lat/chat/server"
)

func TestAForwardedRequestDecodesToTheEnvelopesSent(t *testing.T) {
	sent := []*appendRequest{request("bob", "m1", `{"n":1}`), request("carol.smith", "m:2", "")}
	sent[1].at = 0
	got, err := decodeForward(encodeForward(sent))
	if err != nil || len(got) != len(sent) {
		t.Fatalf("decoded %d envelopes, %v; want %d", len(got), err, len(sent))
	}
	for i, r := range got {
		w := sent[i]
		if r.recipient != w.recipient || r.sender != w.sender || r.id != w.id || r.digest != w.digest ||
			r.at != w.at || string(r.message) != string(w.message) || r.key != w.key {
			t.Fatalf("envelope %d: %+v, want %+v", i, r, w)
		}
	}
}

func TestForwardedAnswersDecodeToTheAnswersGiven(t *testing.T) {
	given := []*appendRequest{
		{seq: 42, prev: 7, at: 1_700_000_000},
		{seq: 43, at: 1_700_000_001, dup: true},
		{err: server.Errorf(server.CodeInboxFull, "full")},
		{err: errors.New("disk on fire")},
	}
	got := make([]*appendRequest, len(given))
	for i := range got {
		got[i] = &appendRequest{}
	}
	if err := decodeAnswers(encodeAnswers(given), got); err != nil {
		t.Fatal(err)
	}
	for i, r := range got[:2] {
		if r.seq != given[i].seq || r.prev != given[i].prev || r.at != given[i].at || r.dup != given[i].dup || r.err != nil {
			t.Fatalf("answer %d: %+v, want %+v", i, r, given[i])
		}
	}
	if server.ErrorCode(got[2].err) != server.CodeInboxFull || got[2].err.Error() != given[2].err.Error() {
		t.Fatalf("answer 2: %v, want %v", got[2].err, given[2].err)
	}
	if got[3].err == nil || server.ErrorCode(got[3].err) != server.CodeInternal {
		t.Fatalf("answer 3: %v, want an internal error", got[3].err)
	}
	if err := decodeAnswers(encodeAnswers(given), got[:3]); err == nil {
		t.Fatal("four answers decoded for three envelopes")
	}
}

func TestMalformedForwardedRequestsAreRefused(t *testing.T) {
	valid := encodeForward([]*appendRequest{request("bob", "m1", "{}")})
	for name, b := range map[string][]byte{
		"empty":            nil,
		"truncated":        valid[:len(valid)-1],
		"a huge length":    {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"no recipient":     encodeForward([]*appendRequest{{sender: "alice", digest: "d"}}),
		"trailing garbage": append(append([]byte{}, valid...), 0x05),
	} {
		if reqs, err := decodeForward(b); err == nil {
			t.Errorf("%s: decoded %d envelopes, want an error", name, len(reqs))
		}
	}
}

// FuzzDecodeForward: any body decodes to envelopes or an error, never a
// panic, and what decodes encodes back to the same bytes.
func FuzzDecodeForward(f *testing.F) {
	f.Add(encodeForward([]*appendRequest{request("bob", "m1", "{}"), request("carol", "m2", "[]")}))
	f.Add([]byte{0x03, 'b', 'o', 'b'})
	f.Fuzz(func(t *testing.T, b []byte) {
		reqs, err := decodeForward(b)
		if err != nil {
			return
		}
		if again := encodeForward(reqs); string(again) != string(b) {
			// Uvarints have one shortest form; a longer one decodes too.
			if back, err := decodeForward(again); err != nil || len(back) != len(reqs) {
				t.Fatalf("re-encoded %d envelopes do not decode: %v", len(reqs), err)
			}
		}
	})
}

func TestGatherTakesQueuedEnvelopesUntilTheirBytesPassTheBound(t *testing.T) {
	queue := make(chan *appendRequest, 100)
	for i := range 40 {
		queue <- request("bob", fmt.Sprint(i), strings.Repeat("x", 60<<10))
	}
	first := <-queue
	batch := gather(queue, first, 1<<20/2)
	size := 0
	for _, r := range batch[:len(batch)-1] {
		size += len(r.message)
	}
	if size >= 1<<20/2 || size+len(batch[len(batch)-1].message) < 1<<20/2 {
		t.Fatalf("gathered %d envelopes, %d bytes before the last; want the bound passed by the last only", len(batch), size)
	}
	if len(queue) != 40-len(batch) {
		t.Fatalf("%d left queued after gathering %d of 40", len(queue), len(batch))
	}
}
