package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A signed message document as kezchat's client makes it (marshalSigned of
// client.NewMessageAt): the canonical payload, then the signature.
const testDoc = `{"payload":{"ct":"AAAA_-BBBB","from":"bxyz-s1","id":"SPdN5v1Y2dQ8m3tAkzQ0bA","server":"bench.local","to":"bxyz-r7","ts":1796234558,"type":"message"},"signature":{"alg":"ed25519","key":"a2V5","sig":"c2ln"}}`

func TestCentrifugoDeliveryReadsPublications(t *testing.T) {
	for _, c := range []struct {
		name, data string
		mid        string
		seq        uint64
		kind       eventKind
	}{
		{"the connect reply", `{"connect":{"client":"da90","version":"6.9.1 OSS","subs":{"inbox:7":{}},"ping":25}}`, "", 0, notDelivery},
		{"a ping", `{}`, "", 0, notDelivery},
		{"the first publication, with the epoch", `{"channel":"inbox:7","pub":{"data":` + testDoc + `,"offset":1,"epoch":"jspqOdSh"}}`, "SPdN5v1Y2dQ8m3tAkzQ0bA", 1, delivery},
		{"a later publication", `{"channel":"inbox:7","pub":{"data":` + testDoc + `,"offset":1234}}`, "SPdN5v1Y2dQ8m3tAkzQ0bA", 1234, delivery},
		{"no offset (history off)", `{"channel":"inbox:7","pub":{"data":` + testDoc + `}}`, "", 0, malformedDelivery},
		{"no id", `{"channel":"inbox:7","pub":{"data":{"payload":{}},"offset":3}}`, "", 0, malformedDelivery},
		{"another push on the channel", `{"channel":"inbox:7","join":{"info":{"user":"x"}}}`, "", 0, malformedDelivery},
		{"an offset that is no number", `{"channel":"inbox:7","pub":{"data":` + testDoc + `,"offset":"3"}}`, "", 0, malformedDelivery},
	} {
		mid, seq, kind := centrifugoDelivery(nil, nil, []byte(c.data))
		if string(mid) != c.mid || seq != c.seq || kind != c.kind {
			t.Errorf("%s: got %q, %d, %d; want %q, %d, %d", c.name, mid, seq, kind, c.mid, c.seq, c.kind)
		}
	}
}

// TestFollowReadsACentrifugoStream: the shared reader, with Centrifugo's
// parser, records publications by their document's id and checks their
// offsets.
func TestFollowReadsACentrifugoStream(t *testing.T) {
	pub := func(id string, offset string) string {
		doc := strings.Replace(testDoc, "SPdN5v1Y2dQ8m3tAkzQ0bA", id, 1)
		return "data: {\"channel\":\"inbox:0\",\"pub\":{\"data\":" + doc + ",\"offset\":" + offset + "}}\n\n"
	}
	stream := pub("id0", "1") + "data: {}\n\n" + pub("id1", "2") + pub("id1", "3") + pub("id2", "2") + pub("other", "4")
	log := newDeliveryLog([]string{"id0", "id1", "id2"})
	var cur atomic.Pointer[deliveryLog]
	cur.Store(log)
	st := &rawStream{lines: bufio.NewReaderSize(strings.NewReader(stream), 64), parse: centrifugoDelivery}
	st.follow(&cur)
	checkDeliveryLog(t, log, 4, []int32{1, 2, 1}, 1, 1)
}

func TestCentrifugoConfigIsWhatTheBenchMeasures(t *testing.T) {
	raw, err := centrifugoConfig(centrifugoSettings{port: 40123, hmacSecret: "s3cret", apiKey: "k3y", historySize: 100, historyTTL: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		HTTPServer struct {
			Address string `json:"address"`
			Port    int    `json:"port"`
		} `json:"http_server"`
		Engine struct {
			Type string `json:"type"`
		} `json:"engine"`
		Client struct {
			Token struct {
				HMACSecretKey string `json:"hmac_secret_key"`
			} `json:"token"`
		} `json:"client"`
		HTTPAPI struct {
			Key      string `json:"key"`
			Insecure bool   `json:"insecure"`
		} `json:"http_api"`
		UniSSE struct {
			Enabled bool `json:"enabled"`
		} `json:"uni_sse"`
		Health struct {
			Enabled bool `json:"enabled"`
		} `json:"health"`
		UsageStats struct {
			Disabled bool `json:"disabled"`
		} `json:"usage_stats"`
		Channel struct {
			Namespaces []struct {
				Name        string `json:"name"`
				HistorySize int    `json:"history_size"`
				HistoryTTL  string `json:"history_ttl"`
			} `json:"namespaces"`
		} `json:"channel"`
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%v in %s", err, raw)
	}
	switch ns := c.Channel.Namespaces; {
	case c.HTTPServer.Address != "127.0.0.1" || c.HTTPServer.Port != 40123:
		t.Errorf("listens on %s:%d, want 127.0.0.1:40123 (loopback only)", c.HTTPServer.Address, c.HTTPServer.Port)
	case c.Engine.Type != "memory":
		t.Errorf("engine %q, want memory", c.Engine.Type)
	case c.Client.Token.HMACSecretKey != "s3cret":
		t.Errorf("token secret %q", c.Client.Token.HMACSecretKey)
	case c.HTTPAPI.Key != "k3y" || c.HTTPAPI.Insecure:
		t.Errorf("HTTP API %+v, want the key and not insecure", c.HTTPAPI)
	case !c.UniSSE.Enabled || !c.Health.Enabled || !c.UsageStats.Disabled:
		t.Errorf("uni_sse %v, health %v, usage stats disabled %v; want all true", c.UniSSE.Enabled, c.Health.Enabled, c.UsageStats.Disabled)
	case len(ns) != 1 || ns[0].Name != centrifugoNamespace || ns[0].HistorySize != 100 || ns[0].HistoryTTL != "5m0s":
		t.Errorf("namespaces %+v, want inbox with history 100 for 5m0s", ns)
	}
	if centrifugoChannel(7) != "inbox:7" {
		t.Errorf("channel of recipient 7 is %q", centrifugoChannel(7))
	}
}

func TestConnectTokenIsAnHS256JWTForOneChannel(t *testing.T) {
	tok := connectToken("s3cret", "r7", "inbox:7")
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("%q is not header.claims.signature", tok)
	}
	var header struct{ Alg, Typ string }
	var claims struct {
		Sub      string   `json:"sub"`
		Channels []string `json:"channels"`
		Exp      *int64   `json:"exp"`
	}
	for i, v := range []any{&header, &claims} {
		raw, err := b64url.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		if err := json.Unmarshal(raw, v); err != nil {
			t.Fatalf("part %d %s: %v", i, raw, err)
		}
	}
	if header.Alg != "HS256" || header.Typ != "JWT" {
		t.Errorf("header %+v", header)
	}
	if claims.Sub != "r7" || len(claims.Channels) != 1 || claims.Channels[0] != "inbox:7" || claims.Exp != nil {
		t.Errorf("claims %+v, want sub r7, channels [inbox:7], no exp", claims)
	}
	mac := hmac.New(sha256.New, []byte("s3cret"))
	mac.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := b64url.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, mac.Sum(nil)) {
		t.Errorf("the signature is not HMAC-SHA256 of header.claims with the secret")
	}
	if connectToken("other", "r7", "inbox:7") == tok {
		t.Errorf("another secret signs the same token")
	}
}

func TestCentrifugoPublishBodyCarriesTheDocumentUnderAnotherID(t *testing.T) {
	body, err := centrifugoPublishBody([]byte(testDoc), "inbox:7", "NEWIDNEWIDNEWIDNEWID00")
	if err != nil {
		t.Fatal(err)
	}
	var req struct {
		Channel string          `json:"channel"`
		Data    json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	want := strings.Replace(testDoc, "SPdN5v1Y2dQ8m3tAkzQ0bA", "NEWIDNEWIDNEWIDNEWID00", 1)
	if req.Channel != "inbox:7" || string(req.Data) != want {
		t.Fatalf("publishes %s to %q, want %s to inbox:7", req.Data, req.Channel, want)
	}
	if got := messageID(body); string(got) != "NEWIDNEWIDNEWIDNEWID00" {
		t.Fatalf("messageID = %q", got)
	}
	if _, err := centrifugoPublishBody([]byte(`{"payload":{}}`), "inbox:7", "x"); err == nil {
		t.Fatal("a document without an id was accepted")
	}
}

func TestSendersFlagTakesAList(t *testing.T) {
	var f sendersFlag
	if err := f.Set("64, 8"); err != nil || len(f) != 2 || f[0] != 64 || f[1] != 8 || f.String() != "64,8" {
		t.Fatalf("Set(64, 8): %v, %v", f, err)
	}
	for _, bad := range []string{"", "0", "8,x", "-1", "8,,4"} {
		if err := f.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}

// TestTimedClosedLoopStopsAtItsDuration: a closed loop with an end starts
// no message after it; the messages it did not reach are neither sent nor
// refused, and the rate counts only what was sent.
func TestTimedClosedLoopStopsAtItsDuration(t *testing.T) {
	ids := newMessageIDs(100000)
	log := newDeliveryLog(ids)
	var fail failureCounts
	send := func(_ context.Context, i int) (bool, string) {
		time.Sleep(time.Millisecond)
		log.deliver([]byte(ids[i]))
		return true, ""
	}
	until := log.now() + int64(100*time.Millisecond)
	sendClosedLoop(context.Background(), send, len(ids), 4, until, log, &fail)
	run := &loadRun{p: &benchPrinter{w: io.Discard}}
	res := run.collect(context.Background(), log, startCPUMeter(), &fail)
	if res.sent == 0 || res.sent > 4*100 || res.accepted != res.sent || res.failed != 0 || len(fail.m) != 0 {
		t.Fatalf("sent %d, accepted %d, failed %d (%v); want about 4 per ms for 100ms, all accepted", res.sent, res.accepted, res.failed, fail.m)
	}
	if !res.exactlyOnce() || res.delivered != res.sent {
		t.Fatalf("delivery %+v", res)
	}
	// The wall ends with the last answer, which may come a little before
	// the end when no sender had time for another message.
	if res.wall < 95*time.Millisecond || res.wall > 2*time.Second {
		t.Fatalf("wall %s, want about 100ms", res.wall)
	}
}

func TestWarmRateReadsTheSecondHalf(t *testing.T) {
	log := newDeliveryLog(newMessageIDs(8))
	// Four answers 10 ms apart, then four 1 ms apart: the second half
	// runs at 1,000/s.
	for i, at := range []int64{10, 20, 30, 40, 41, 42, 43, 44} {
		log.answeredAt[i] = at * int64(time.Millisecond)
		log.accepted[i] = true
	}
	if got := warmRate(log); got < 999 || got > 1001 {
		t.Fatalf("warmRate = %.1f/s, want 1000/s", got)
	}
}

// TestCentrifugoLoadSpeaksItsProtocol runs centrifugoLoad against a stand-in
// for Centrifugo's uni_sse and publish endpoints that answers as v6.9.1
// does (the frames copied from a session with it): the stream opens once
// the connect reply subscribing the token's channel has come, and a
// publish goes with the API key.
func TestCentrifugoLoadSpeaksItsProtocol(t *testing.T) {
	const secret, key = "s3cret", "k3y"
	published := make(chan []byte, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /connection/uni_sse", func(w http.ResponseWriter, r *http.Request) {
		var connect struct{ Token string }
		if err := json.Unmarshal([]byte(r.URL.Query().Get("cf_connect")), &connect); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		parts := strings.Split(connect.Token, ".")
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(parts[0] + "." + parts[1]))
		sig, _ := b64url.DecodeString(parts[2])
		claims, _ := b64url.DecodeString(parts[1])
		var c struct{ Channels []string }
		_ = json.Unmarshal(claims, &c)
		if !hmac.Equal(sig, mac.Sum(nil)) || len(c.Channels) != 1 {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		fmt.Fprintf(w, "\r\ndata: {\"connect\":{\"client\":\"c1\",\"subs\":{%q:{}},\"ping\":25}}\n\n", c.Channels[0])
		w.(http.Flusher).Flush()
		select {
		case body := <-published:
			var req struct {
				Channel string          `json:"channel"`
				Data    json.RawMessage `json:"data"`
			}
			_ = json.Unmarshal(body, &req)
			fmt.Fprintf(w, "data: {\"channel\":%q,\"pub\":{\"data\":%s,\"offset\":1,\"epoch\":\"e\"}}\n\n", req.Channel, req.Data)
			w.(http.Flusher).Flush()
		case <-r.Context().Done():
			return
		}
		<-r.Context().Done()
	})
	mux.HandleFunc("POST /api/publish", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Header.Get("X-API-Key") != key {
			fmt.Fprint(w, `{"error":{"code":401,"message":"unauthorized"}}`)
			return
		}
		published <- body
		fmt.Fprint(w, `{"result":{"offset":1,"epoch":"e"}}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c := &centrifugoLoad{addr: addr, publishURL: srv.URL + "/api/publish", apiKey: key, hmacSecret: secret}
	st, err := c.openStream(ctx, 7, 4<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	log := newDeliveryLog([]string{"NEWIDNEWIDNEWIDNEWID00"})
	var cur atomic.Pointer[deliveryLog]
	cur.Store(log)
	done := make(chan struct{})
	go func() { st.follow(&cur); close(done) }()

	hc := benchHTTPClient(1)
	defer hc.CloseIdleConnections()
	wrong := *c
	wrong.apiKey = "nope"
	if ok, why := wrong.send(ctx, hc, 0, []byte(`{}`)); ok || why != "200 401 unauthorized" {
		t.Fatalf("a publish with the wrong key: %v, %q", ok, why)
	}
	body, err := centrifugoPublishBody([]byte(testDoc), centrifugoChannel(7), "NEWIDNEWIDNEWIDNEWID00")
	if err != nil {
		t.Fatal(err)
	}
	if ok, why := c.send(ctx, hc, 0, body); !ok {
		t.Fatalf("publish refused: %s", why)
	}
	for log.delivered.Load() == 0 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	if log.deliveries[0].Load() != 1 || log.unexpected.Load() != 0 {
		t.Fatalf("delivered %d times, %d unexpected", log.deliveries[0].Load(), log.unexpected.Load())
	}

	// A token the server refuses fails the open, with the status.
	bad := *c
	bad.hmacSecret = "other"
	if _, err := bad.openStream(ctx, 8, 4<<10); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("a stream with a token the server refuses: %v", err)
	}
	st.close()
	<-done
}
