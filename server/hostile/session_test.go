package hostile_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server"
)

// A stream's auth travels in its URL, where others may see it (a log, a
// history, the Go CLI's reconnect message). Opened with an auth that
// leaves the clock-skew window in 2 s, the stream ends then: the URL
// cannot read new ciphertext for longer than its auth holds (before, the
// stream lived until the client left).
func TestAStreamEndsWhenItsAuthLeavesTheWindow(t *testing.T) {
	tg := start(t)
	owner, _ := tg.register(t, "owner")
	path := "/v1/inbox/owner/stream"
	ts := time.Now().Add(-server.ClockSkew + 2*time.Second).Unix()
	conn := tg.rawRequest(t, get(path+"?auth="+authAt(t, owner, ts, "GET", path)))
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	r := bufio.NewReader(conn)
	status, err := r.ReadString('\n')
	if err != nil || !strings.Contains(status, " 200 ") {
		t.Fatalf("opening the stream: %q %v", status, err)
	}
	start := time.Now()
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatalf("the stream did not end when its auth expired: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the stream ended %s after opening, its auth expired after 2 s", took)
	}
}

// Someone with a stream URL opens it again and again: the server accepts
// a stream auth once, so the URL opens one stream at most, and the owner,
// with a fresh auth, still gets a stream (before: the URL filled all 8
// slots and the owner got too_many_streams).
func TestAStreamURLOpensOneStreamAndCannotFillTheOwnersSlots(t *testing.T) {
	tg := start(t)
	owner, _ := tg.register(t, "owner")
	url := tg.url + "/v1/inbox/owner/stream?auth=" + streamAuth(t, owner)
	statuses := map[int]int{}
	for range 9 {
		res, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		statuses[res.StatusCode]++
		if res.StatusCode != http.StatusOK {
			res.Body.Close()
		} else {
			t.Cleanup(func() { res.Body.Close() })
		}
	}
	if statuses[http.StatusOK] != 1 || statuses[http.StatusUnauthorized] != 8 {
		t.Fatalf("one URL opened 9 times: %v, want one 200 and eight 401 replayed_auth", statuses)
	}
	res, err := http.Get(tg.url + "/v1/inbox/owner/stream?auth=" + streamAuth(t, owner))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("the owner's own stream: %d", res.StatusCode)
	}
}
