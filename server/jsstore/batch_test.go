package jsstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/natstest"
)

// batchWriter is a writer of its own on a fresh store. The store's own
// writer gets no work: nothing is appended through it.
func batchWriter(t *testing.T, maxPending int, handles ...string) (*Store, *writer) {
	t.Helper()
	n, err := natstest.Start(natstest.Options{Name: "kez-test", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	return batchWriterOn(t, n.URL, 1, maxPending, handles...)
}

// batchWriterOn is batchWriter on the NATS servers at url, with the
// stream on replicas of them.
func batchWriterOn(t *testing.T, url string, replicas, maxPending int, handles ...string) (*Store, *writer) {
	t.Helper()
	s, err := Open(context.Background(), Config{
		NATS: natsbus.Config{URL: url, ReconnectWait: 20 * time.Millisecond}, MaxPending: maxPending, Replicas: replicas,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	for _, h := range handles {
		if err := s.CreateUser(context.Background(), &server.User{Handle: h, Server: "example.test",
			PrimaryID: "pid-" + h, Alg: "ed25519", Key: []byte(h)}); err != nil {
			t.Fatal(err)
		}
	}
	return s, newWriter(s)
}

// commitBatch has w commit reqs as one batch, whatever a publish alone
// would cost.
func commitBatch(w *writer, reqs ...*appendRequest) {
	w.costAlone, w.costBatch = 1, 0
	w.commit(reqs)
}

func request(to, id, msg string) *appendRequest {
	sum := sha256.Sum256([]byte(msg))
	return &appendRequest{ctx: context.Background(), recipient: to, sender: "alice", id: id,
		key: idKey("alice", id), digest: hex.EncodeToString(sum[:]), at: 1_700_000_000, message: []byte(msg)}
}

func TestABatchTakesConsecutiveSeqsAndChainsEachRecipientsPrevs(t *testing.T) {
	t.Run("one server", func(t *testing.T) {
		_, w := batchWriter(t, 0, "alice", "bob", "carol")
		checkBatchSeqsAndPrevs(t, w)
	})
	t.Run("three clustered servers, three stream replicas", func(t *testing.T) {
		c, err := natstest.StartCluster(3, natstest.Options{Name: "kez-test", Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Shutdown)
		_, w := batchWriterOn(t, c.URL(), 3, 0, "alice", "bob", "carol")
		checkBatchSeqsAndPrevs(t, w)
	})
}

func checkBatchSeqsAndPrevs(t *testing.T, w *writer) {
	t.Helper()
	first := []*appendRequest{request("bob", "0", "{}")}
	commitBatch(w, first...)
	reqs := []*appendRequest{request("bob", "1", "{}"), request("carol", "2", "{}"), request("bob", "3", "{}"), request("bob", "4", "{}")}
	commitBatch(w, reqs...)
	if batches, envelopes := w.committedBatches.Load(), w.committedEnvelopes.Load(); batches != 2 || envelopes != 5 {
		t.Fatalf("committed %d envelopes in %d batches; want 5 in 2", envelopes, batches)
	}
	wantPrev := []uint64{first[0].seq, 0, reqs[0].seq, reqs[2].seq}
	for i, r := range reqs {
		if r.err != nil || r.dup || r.seq != first[0].seq+1+uint64(i) || r.prev != wantPrev[i] {
			t.Fatalf("envelope %d: seq %d prev %d dup %v err %v; want seq %d prev %d",
				i, r.seq, r.prev, r.dup, r.err, first[0].seq+1+uint64(i), wantPrev[i])
		}
	}
}

func TestABatchWithOneFullInboxStoresTheOthers(t *testing.T) {
	_, w := batchWriter(t, 1, "alice", "bob", "carol", "dave")
	commitBatch(w, request("bob", "0", "{}"))
	reqs := []*appendRequest{request("carol", "1", "{}"), request("bob", "2", "{}"), request("dave", "3", "{}")}
	commitBatch(w, reqs...)
	if code := server.ErrorCode(reqs[1].err); code != server.CodeInboxFull {
		t.Fatalf("bob's second envelope: %v; want %s", reqs[1].err, server.CodeInboxFull)
	}
	for _, r := range []*appendRequest{reqs[0], reqs[2]} {
		if r.err != nil || r.seq == 0 {
			t.Fatalf("%s's envelope: seq %d, %v", r.recipient, r.seq, r.err)
		}
	}
}

func TestABatchWithARetryAnswersItWithTheOriginalAndStoresTheOthers(t *testing.T) {
	s, w := batchWriter(t, 0, "alice", "bob")
	orig := request("bob", "m1", `{"n":1}`)
	commitBatch(w, orig)
	retry, reuse, next := request("bob", "m1", `{"n":1}`), request("bob", "m1", `{"n":"other"}`), request("bob", "m2", `{"n":2}`)
	commitBatch(w, retry, next)
	commitBatch(w, reuse, request("bob", "m3", "{}"))
	if retry.err != nil || !retry.dup || retry.seq != orig.seq {
		t.Fatalf("retry: seq %d dup %v err %v; want the duplicate of %d", retry.seq, retry.dup, retry.err, orig.seq)
	}
	if next.err != nil || next.dup || next.seq <= orig.seq {
		t.Fatalf("the other envelope: seq %d dup %v err %v", next.seq, next.dup, next.err)
	}
	if server.ErrorCode(reuse.err) != server.CodeMessageIDConflict {
		t.Fatalf("the id with another message: %v; want %s", reuse.err, server.CodeMessageIDConflict)
	}
	envs, err := s.Messages(context.Background(), "bob", 0, 10, 0)
	if err != nil || len(envs) != 3 {
		t.Fatalf("bob's inbox: %d envelopes, %v; want 3 (m1, m2, m3)", len(envs), err)
	}
}

func TestABatchRefusedByAStreamWithoutAtomicPublishIsStoredOneByOne(t *testing.T) {
	s, w := batchWriter(t, 0, "alice", "bob", "carol")
	// A replica of an earlier version updated the stream to its config.
	cfg := s.stream.CachedInfo().Config
	cfg.AllowAtomicPublish = false
	if _, err := s.js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	reqs := []*appendRequest{request("bob", "1", "{}"), request("carol", "2", "{}"), request("bob", "3", "{}")}
	commitBatch(w, reqs...)
	for i, r := range reqs {
		if r.err != nil || r.seq == 0 {
			t.Fatalf("envelope %d: seq %d, %v", i, r.seq, r.err)
		}
	}
	if r := reqs[2]; r.prev != reqs[0].seq {
		t.Fatalf("bob's second envelope: prev %d, want %d", r.prev, reqs[0].seq)
	}
	if w.costBatch != math.Inf(1) {
		t.Fatalf("a batch still expected to cost %v ns", w.costBatch)
	}
}
