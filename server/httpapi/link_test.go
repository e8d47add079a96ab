package httpapi_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// testClock is a Service clock a test moves forward.
type testClock struct {
	offset atomic.Int64
	lastTS atomic.Int64
}

func (c *testClock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// stores are the stores link channels are tested on.
var stores = []string{"sqlite", "jetstream"}

// linkServer starts a server on store with a clock of its own as its
// Service's clock.
func linkServer(t *testing.T, store string) (*testutil.Server, *testClock) {
	t.Helper()
	clock := &testClock{}
	opts := testutil.Options{Config: func(c *app.Config) { c.Service.Now = clock.Now }}
	if store == "jetstream" {
		opts.NATS, opts.JetStream = testutil.StartNATS(t, testutil.NATSOptions{}), true
	}
	return testutil.StartServer(t, opts), clock
}

// newChannel is a fresh channel id: the base64url SHA-256 of a secret.
func newChannel() string {
	secret := make([]byte, 16)
	rand.Read(secret)
	sum := sha256.Sum256(secret)
	return signing.EncodeB64(sum[:])
}

// nextLinkTS makes each link auth unique (the server accepts one once) at
// the Service's clock.
func nextLinkTS(clock *testClock) int64 {
	for {
		last := clock.lastTS.Load()
		ts := max(clock.Now().Unix(), last+1)
		if clock.lastTS.CompareAndSwap(last, ts) {
			return ts
		}
	}
}

func openLink(t *testing.T, srv *testutil.Server, clock *testClock, id *client.Identity, channel string) response {
	t.Helper()
	path := "/v1/link/" + id.Handle
	auth, err := signing.SignRequest(id.Signer, testutil.Domain, http.MethodPost, path, nextLinkTS(clock), "channel="+channel)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, http.MethodPost, srv.URL+path+"?channel="+channel, nil, map[string]string{"X-KEZ-Auth": auth})
}

func linkBody(data []byte) []byte {
	b, _ := json.Marshal(server.LinkData{Data: signing.EncodeB64(data)})
	return b
}

func putRequest(t *testing.T, srv *testutil.Server, channel string, body []byte) response {
	t.Helper()
	return do(t, http.MethodPut, srv.URL+"/v1/link/"+channel+"/request", body, nil)
}

// putResponse writes the response slot signed by signer as handle.
func putResponse(t *testing.T, srv *testutil.Server, clock *testClock, signer *client.Identity, handle, channel string, body []byte) response {
	t.Helper()
	path := "/v1/link/" + channel + "/response"
	auth, err := signing.SignRequest(signer.Signer, testutil.Domain, http.MethodPut, path, nextLinkTS(clock), "handle="+handle, digestBinding(body))
	if err != nil {
		t.Fatal(err)
	}
	return do(t, http.MethodPut, srv.URL+path, body, map[string]string{"X-KEZ-Auth": auth})
}

func getSlot(t *testing.T, srv *testutil.Server, channel, slot, query string) response {
	t.Helper()
	return do(t, http.MethodGet, srv.URL+"/v1/link/"+channel+"/"+slot+query, nil, nil)
}

// slotData decodes a 200 answer's data.
func slotData(t *testing.T, r response) []byte {
	t.Helper()
	var body server.LinkData
	if r.status != http.StatusOK || json.Unmarshal(r.body, &body) != nil {
		t.Fatalf("reading a slot: %d %s", r.status, r.body)
	}
	data, err := signing.DecodeB64(body.Data)
	if err != nil {
		t.Fatalf("slot data %q: %v", body.Data, err)
	}
	return data
}

func TestLinkChannelCarriesARequestAndAResponseOnceOnEitherStore(t *testing.T) {
	for _, name := range stores {
		t.Run(name, func(t *testing.T) {
			srv, clock := linkServer(t, name)
			_, _, bob := chatPair(t, srv)
			channel := newChannel()
			opened := clock.Now()
			r := openLink(t, srv, clock, bob, channel)
			var open struct {
				Channel string `json:"channel"`
				Expires int64  `json:"expires"`
			}
			json.Unmarshal(r.body, &open)
			if r.status != http.StatusCreated || open.Channel != channel || open.Expires < opened.Add(server.LinkTTL).Unix() || open.Expires > opened.Add(server.LinkTTL).Unix()+1 {
				t.Fatalf("open: %d %s", r.status, r.body)
			}
			if r := getSlot(t, srv, channel, "request", ""); r.status != http.StatusNoContent {
				t.Fatalf("request slot before it is written: %d %s", r.status, r.body)
			}

			// A read waiting on the slot is woken by the write.
			waited := make(chan response, 1)
			start := time.Now()
			go func() { waited <- getSlot(t, srv, channel, "request", "?wait=20") }()
			time.Sleep(100 * time.Millisecond) // let the read start waiting; it works either way
			request := randomCT(t, server.MaxLinkRequest)
			if r := putRequest(t, srv, channel, linkBody(request)); r.status != http.StatusNoContent {
				t.Fatalf("writing the request slot: %d %s", r.status, r.code)
			}
			if got := slotData(t, <-waited); string(got) != string(request) {
				t.Fatal("the waiting read answered other data than was written")
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("the waiting read answered after %v, not on the write", d)
			}
			if r := putRequest(t, srv, channel, linkBody([]byte("again"))); r.status != http.StatusConflict || r.code != server.CodeLinkUsed {
				t.Fatalf("writing the request slot twice: %d %s", r.status, r.code)
			}

			if r := getSlot(t, srv, channel, "response", ""); r.status != http.StatusNoContent {
				t.Fatalf("response slot before it is written: %d", r.status)
			}
			response := randomCT(t, server.MaxLinkResponse)
			if r := putResponse(t, srv, clock, bob, "bob", channel, linkBody(response)); r.status != http.StatusNoContent {
				t.Fatalf("writing the response slot: %d %s", r.status, r.code)
			}
			if got := slotData(t, getSlot(t, srv, channel, "response", "?wait=1")); string(got) != string(response) {
				t.Fatal("the response slot holds other data than was written")
			}
			if got := slotData(t, getSlot(t, srv, channel, "request", "")); string(got) != string(request) {
				t.Fatal("the request slot changed")
			}
		})
	}
}

func TestLinkRequestsOutOfBoundsOrNotTheOpenersAreRefused(t *testing.T) {
	srv, clock := linkServer(t, "sqlite")
	_, alice, bob := chatPair(t, srv)
	used, second, unknown := newChannel(), newChannel(), newChannel()
	for _, ch := range []string{used, second} {
		if r := openLink(t, srv, clock, bob, ch); r.status != http.StatusCreated {
			t.Fatalf("open: %d %s", r.status, r.code)
		}
	}
	if r := putRequest(t, srv, used, linkBody([]byte("first"))); r.status != http.StatusNoContent {
		t.Fatalf("request: %d %s", r.status, r.code)
	}
	if r := putResponse(t, srv, clock, bob, "bob", used, linkBody([]byte("first"))); r.status != http.StatusNoContent {
		t.Fatalf("response: %d %s", r.status, r.code)
	}

	for _, tc := range []struct {
		name   string
		send   func() response
		status int
		code   string
	}{
		{"open: a channel of 42 characters", func() response { return openLink(t, srv, clock, bob, used[:42]) }, 400, server.CodeInvalidField},
		{"open: 43 characters that are not base64url", func() response { return openLink(t, srv, clock, bob, strings.Repeat("!", 43)) }, 400, server.CodeInvalidField},
		{"open: a channel open already", func() response { return openLink(t, srv, clock, alice, used) }, 409, server.CodeLinkExists},
		{"open: a third channel", func() response { return openLink(t, srv, clock, bob, unknown) }, 429, server.CodeTooManyLinks},
		{"open: no auth", func() response {
			return do(t, http.MethodPost, srv.URL+"/v1/link/bob?channel="+newChannel(), nil, nil)
		}, 400, server.CodeMissingAuth},
		{"request: unknown channel", func() response { return putRequest(t, srv, unknown, linkBody([]byte("x"))) }, 404, server.CodeUnknownLink},
		{"request: written already", func() response { return putRequest(t, srv, used, linkBody([]byte("x"))) }, 409, server.CodeLinkUsed},
		{"request: data over 8 KiB", func() response {
			return putRequest(t, srv, second, linkBody(make([]byte, server.MaxLinkRequest+1)))
		}, 400, server.CodeInvalidField},
		{"request: empty data", func() response { return putRequest(t, srv, second, linkBody(nil)) }, 400, server.CodeInvalidField},
		{"request: data not base64url", func() response { return putRequest(t, srv, second, []byte(`{"data":"a+b/"}`)) }, 400, server.CodeInvalidEncoding},
		{"request: body far over the limit", func() response {
			return putRequest(t, srv, second, []byte(`{"data":"`+strings.Repeat("A", 64<<10)+`"}`))
		}, 413, server.CodeBodyTooLarge},
		{"request: unknown member", func() response { return putRequest(t, srv, second, []byte(`{"data":"AAAA","x":1}`)) }, 400, server.CodeUnknownField},
		{"no such slot", func() response {
			return do(t, http.MethodPut, srv.URL+"/v1/link/"+second+"/other", linkBody([]byte("x")), nil)
		}, 404, server.CodeNotFound},
		{"response: signed by another handle", func() response {
			return putResponse(t, srv, clock, alice, "alice", second, linkBody([]byte("x")))
		}, 403, server.CodeKeyNotAuthorized},
		{"response: another key signing as the opener", func() response {
			return putResponse(t, srv, clock, alice, "bob", second, linkBody([]byte("x")))
		}, 403, server.CodeKeyNotAuthorized},
		{"response: no auth", func() response {
			return do(t, http.MethodPut, srv.URL+"/v1/link/"+second+"/response", linkBody([]byte("x")), nil)
		}, 400, server.CodeMissingAuth},
		{"response: data over 64 KiB", func() response {
			return putResponse(t, srv, clock, bob, "bob", second, linkBody(make([]byte, server.MaxLinkResponse+1)))
		}, 400, server.CodeInvalidField},
		{"response: written already", func() response { return putResponse(t, srv, clock, bob, "bob", used, linkBody([]byte("x"))) }, 409, server.CodeLinkUsed},
		{"response: unknown channel", func() response { return putResponse(t, srv, clock, bob, "bob", unknown, linkBody([]byte("x"))) }, 404, server.CodeUnknownLink},
		{"read: unknown channel", func() response { return getSlot(t, srv, unknown, "request", "") }, 404, server.CodeUnknownLink},
		{"read: wait=0", func() response { return getSlot(t, srv, second, "request", "?wait=0") }, 400, server.CodeInvalidField},
		{"read: wait=26", func() response { return getSlot(t, srv, second, "request", "?wait=26") }, 400, server.CodeInvalidField},
		{"read: malformed channel", func() response { return getSlot(t, srv, "abc", "request", "") }, 400, server.CodeInvalidField},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := tc.send(); r.status != tc.status || r.code != tc.code {
				t.Fatalf("%d %s, want %d %s", r.status, r.code, tc.status, tc.code)
			}
		})
	}
	// Nothing refused above changed a slot.
	if got := slotData(t, getSlot(t, srv, used, "request", "")); string(got) != "first" {
		t.Fatalf("request slot %q", got)
	}
	if r := getSlot(t, srv, second, "response", ""); r.status != http.StatusNoContent {
		t.Fatalf("response slot of the second channel: %d", r.status)
	}
}

func TestExpiredLinkChannelsAreUnknownFreeTheirPlaceAndArePruned(t *testing.T) {
	for _, name := range stores {
		t.Run(name, func(t *testing.T) {
			srv, clock := linkServer(t, name)
			_, _, bob := chatPair(t, srv)
			first := []string{newChannel(), newChannel()}
			for _, ch := range first {
				if r := openLink(t, srv, clock, bob, ch); r.status != http.StatusCreated {
					t.Fatalf("open: %d %s", r.status, r.code)
				}
			}
			opened := clock.Now()
			clock.Advance(server.LinkTTL - 2*time.Second)
			if r := getSlot(t, srv, first[0], "request", ""); r.status != http.StatusNoContent {
				t.Fatalf("a channel before its expiry: %d %s", r.status, r.code)
			}
			clock.Advance(3 * time.Second)
			if r := getSlot(t, srv, first[0], "request", ""); r.status != 404 || r.code != server.CodeUnknownLink {
				t.Fatalf("an expired channel: %d %s", r.status, r.code)
			}
			if r := putRequest(t, srv, first[1], linkBody([]byte("late"))); r.status != 404 || r.code != server.CodeUnknownLink {
				t.Fatalf("writing an expired channel: %d %s", r.status, r.code)
			}
			// Expired channels no longer count against the handle, and an
			// expired id may be opened again.
			for _, ch := range []string{first[0], newChannel()} {
				if r := openLink(t, srv, clock, bob, ch); r.status != http.StatusCreated {
					t.Fatalf("opening after the first two expired: %d %s", r.status, r.code)
				}
			}
			if _, err := srv.Store.Prune(context.Background(), clock.Now(), clock.Now().Add(-time.Hour)); err != nil {
				t.Fatal(err)
			}
			if name == "sqlite" {
				// Deleted, not only judged expired: a read as of before the
				// expiry finds nothing.
				if _, err := srv.Store.Link(context.Background(), first[1], opened); server.ErrorCode(err) != server.CodeUnknownLink {
					t.Fatalf("an expired channel after Prune, read as of before its expiry: %v", err)
				}
			}
			if _, err := srv.Store.Link(context.Background(), first[0], clock.Now()); err != nil {
				t.Fatalf("the reopened channel after Prune: %v", err)
			}
		})
	}
}

func TestConcurrentWritesOfOneLinkSlotStoreExactlyOne(t *testing.T) {
	for _, name := range stores {
		t.Run(name, func(t *testing.T) {
			srv, clock := linkServer(t, name)
			_, _, bob := chatPair(t, srv)
			for round := range 2 {
				channel := newChannel()
				if r := openLink(t, srv, clock, bob, channel); r.status != http.StatusCreated {
					t.Fatalf("open: %d %s", r.status, r.code)
				}
				for _, slot := range []string{"request", "response"} {
					bodies := [][]byte{linkBody([]byte("one")), linkBody([]byte("two"))}
					results := make([]response, 2)
					var wg sync.WaitGroup
					for i := range 2 {
						wg.Go(func() {
							if slot == "request" {
								results[i] = putRequest(t, srv, channel, bodies[i])
							} else {
								results[i] = putResponse(t, srv, clock, bob, "bob", channel, bodies[i])
							}
						})
					}
					wg.Wait()
					ok, used := 0, 0
					var winner int
					for i, r := range results {
						switch {
						case r.status == http.StatusNoContent:
							ok, winner = ok+1, i
						case r.status == http.StatusConflict && r.code == server.CodeLinkUsed:
							used++
						default:
							t.Fatalf("round %d %s: %d %s", round, slot, r.status, r.code)
						}
					}
					if ok != 1 || used != 1 {
						t.Fatalf("round %d %s: %d written, %d link_used; want exactly one of each", round, slot, ok, used)
					}
					var want server.LinkData
					json.Unmarshal(bodies[winner], &want)
					if got := slotData(t, getSlot(t, srv, channel, slot, "")); signing.EncodeB64(got) != want.Data {
						t.Fatalf("round %d %s holds %q, not the winner's", round, slot, got)
					}
				}
				// Free the handle's places for the next round.
				clock.Advance(server.LinkTTL)
			}
		})
	}
}

func TestShutdownEndsAWaitingLinkRead(t *testing.T) {
	srv, clock := linkServer(t, "sqlite")
	_, _, bob := chatPair(t, srv)
	channel := newChannel()
	if r := openLink(t, srv, clock, bob, channel); r.status != http.StatusCreated {
		t.Fatalf("open: %d %s", r.status, r.code)
	}
	done := make(chan response, 1)
	go func() { done <- getSlot(t, srv, channel, "request", "?wait=25") }()
	time.Sleep(200 * time.Millisecond) // the read is waiting (or about to)
	start := time.Now()
	srv.API.CloseStreams()
	select {
	case r := <-done:
		if r.status != http.StatusNoContent {
			t.Fatalf("a waiting read at shutdown: %d %s", r.status, r.code)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("a waiting read still open %v after shutdown began", time.Since(start))
	}
}
