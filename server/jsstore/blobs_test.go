package jsstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"kez.lat/chat/server"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/testutil"
)

const blobRetention = 30 * 24 * time.Hour

func putBlob(t *testing.T, s *jsstore.Store, uploader string, data []byte) string {
	t.Helper()
	sum := sha256.Sum256(data)
	b := &server.Blob{ID: server.NewBlobID(), Uploader: uploader, SHA256: sum[:], CreatedAt: time.Now()}
	if err := s.PutBlob(context.Background(), b, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("PutBlob: %v", err)
	}
	return b.ID
}

func appendNaming(s *jsstore.Store, to, from, id string, blobs ...string) (*server.Envelope, bool, error) {
	e := &server.Envelope{Recipient: to, Sender: from, ID: id, Message: []byte("msg " + id), Blobs: blobs}
	dup, err := s.AppendMessage(context.Background(), e, server.InboxLimits{})
	return e, dup, err
}

// record reads a blob's record in the refs bucket, as another replica would.
func record(t *testing.T, n *testutil.NATS, id string) (refs []map[string]any, referenced bool) {
	t.Helper()
	js := jetStreamOf(t, n)
	kv, err := js.KeyValue(context.Background(), jsstore.BucketBlobRefs)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("the record of blob %s: %v", id, err)
	}
	var rec struct {
		Refs       []map[string]any `json:"refs"`
		Referenced bool             `json:"referenced"`
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		t.Fatal(err)
	}
	return rec.Refs, rec.Referenced
}

func pruneBlobs(t *testing.T, s *jsstore.Store, now time.Time) int {
	t.Helper()
	n, err := s.PruneBlobs(context.Background(), now, now.Add(-server.BlobUnreferencedTTL), now.Add(-blobRetention))
	if err != nil {
		t.Fatalf("PruneBlobs: %v", err)
	}
	return n
}

func blobKept(t *testing.T, s *jsstore.Store, id string) bool {
	t.Helper()
	_, r, err := s.OpenBlob(context.Background(), id)
	if server.ErrorCode(err) == server.CodeUnknownBlob {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatal(err)
	}
	return true
}

func TestAckReleasesTheReferencesOfTheEnvelopesItDeletes(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob")
	id := putBlob(t, s, "alice", []byte("attachment"))
	e1, _, err := appendNaming(s, "bob", "alice", "m-1", id)
	if err != nil {
		t.Fatal(err)
	}
	// A retry answers the original seq and adds no second reference.
	if _, dup, err := appendNaming(s, "bob", "alice", "m-1", id); err != nil || !dup {
		t.Fatalf("retry: dup %v, %v", dup, err)
	}
	e2, _, err := appendNaming(s, "bob", "alice", "m-2", id)
	if err != nil {
		t.Fatal(err)
	}
	if refs, referenced := record(t, n, id); len(refs) != 2 || !referenced {
		t.Fatalf("after two envelopes: refs %v, referenced %v", refs, referenced)
	}
	if _, err := s.Ack(context.Background(), "bob", "dev", e1.Seq, []string{"dev"}); err != nil {
		t.Fatal(err)
	}
	if refs, _ := record(t, n, id); len(refs) != 1 || uint64(refs[0]["seq"].(float64)) != e2.Seq {
		t.Fatalf("after acknowledging the first: refs %v, want only seq %d", refs, e2.Seq)
	}
	if pruneBlobs(t, s, time.Now()); !blobKept(t, s, id) {
		t.Fatal("pruned while the second envelope names it")
	}
	if _, err := s.Ack(context.Background(), "bob", "dev", e2.Seq, []string{"dev"}); err != nil {
		t.Fatal(err)
	}
	if refs, _ := record(t, n, id); len(refs) != 0 {
		t.Fatalf("after acknowledging both: refs %v", refs)
	}
	if got := pruneBlobs(t, s, time.Now()); got != 1 || blobKept(t, s, id) {
		t.Fatalf("pruned %d once nothing names it; kept %v", got, blobKept(t, s, id))
	}
}

func TestARefusedAppendLeavesTheBlobUnreferenced(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 1) // one envelope fills an inbox
	mustCreate(t, s, "alice", "bob", "carol")
	mustAppend(t, s, "bob", "alice", "m-0", "fills the inbox")
	id := putBlob(t, s, "alice", []byte("attachment"))
	if _, _, err := appendNaming(s, "bob", "alice", "m-1", id); server.ErrorCode(err) != server.CodeInboxFull {
		t.Fatalf("append to a full inbox: %v", err)
	}
	if refs, referenced := record(t, n, id); len(refs) != 0 || referenced {
		t.Fatalf("after a refused append: refs %v, referenced %v", refs, referenced)
	}
	// Not "named and no longer": kept until a day after its upload.
	if pruneBlobs(t, s, time.Now()); !blobKept(t, s, id) {
		t.Fatal("a blob whose only append was refused was pruned at once")
	}
	if pruneBlobs(t, s, time.Now().Add(server.BlobUnreferencedTTL+time.Minute)); blobKept(t, s, id) {
		t.Fatal("an unnamed blob outlived a day")
	}
	// Carol's blob, named by carol's never-stored envelope, cannot be
	// named by alice.
	carols := putBlob(t, s, "carol", []byte("carol's"))
	if _, _, err := appendNaming(s, "carol", "alice", "m-2", carols); server.ErrorCode(err) != server.CodeUnknownBlob {
		t.Fatalf("alice naming carol's blob: %v", err)
	}
}

// An envelope that leaves the stream without Ack releasing it (expired at
// the max age, or a replica that died between purge and release) loses its
// reference at the next prune.
func TestPruneDropsReferencesWhoseEnvelopeIsGone(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob")
	id := putBlob(t, s, "alice", []byte("attachment"))
	if _, _, err := appendNaming(s, "bob", "alice", "m-1", id); err != nil {
		t.Fatal(err)
	}
	js := jetStreamOf(t, n)
	stream, err := js.Stream(context.Background(), jsstore.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := pruneBlobs(t, s, time.Now()); got != 1 || blobKept(t, s, id) {
		t.Fatalf("pruned %d after its envelope left the stream, want 1", got)
	}
	if _, _, err := s.OpenBlob(context.Background(), id); server.ErrorCode(err) != server.CodeUnknownBlob {
		t.Fatalf("OpenBlob after pruning: %v", err)
	}
}

func TestAGroupSendReferencesTheBlobForEveryRecipientOrNone(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice", "bob", "carol")
	id := putBlob(t, s, "alice", []byte("attachment"))
	group := func(mid string, blobs ...string) []*server.Envelope {
		var envs []*server.Envelope
		for _, to := range []string{"bob", "carol", "alice"} {
			envs = append(envs, &server.Envelope{Recipient: to, Sender: "alice", ID: mid + ":" + to, Message: []byte("msg " + mid + to), Blobs: blobs})
		}
		return envs
	}
	envs := group("m-1", id)
	if _, err := s.AppendMessages(context.Background(), envs, server.InboxLimits{}); err != nil {
		t.Fatal(err)
	}
	if refs, referenced := record(t, n, id); len(refs) != 3 || !referenced {
		t.Fatalf("after a group send to three: refs %v, referenced %v", refs, referenced)
	}
	// A group naming a blob that is not alice's stores nothing and names the
	// envelope it is about.
	other := putBlob(t, s, "bob", []byte("bob's"))
	_, err := s.AppendMessages(context.Background(), group("m-2", other), server.InboxLimits{})
	if server.ErrorCode(err) != server.CodeUnknownBlob {
		t.Fatalf("a group naming another's blob: %v, want unknown_blob", err)
	}
	var se *server.Error
	if !errors.As(err, &se) || se.Index == nil || *se.Index != 0 {
		t.Fatalf("the refusal names no envelope: %#v", err)
	}
	if refs, _ := record(t, n, other); len(refs) != 0 {
		t.Fatalf("a refused group left references: %v", refs)
	}
	for i, to := range []string{"bob", "carol"} {
		if _, err := s.Ack(context.Background(), to, "dev", envs[i].Seq, []string{"dev"}); err != nil {
			t.Fatal(err)
		}
	}
	if refs, _ := record(t, n, id); len(refs) != 1 {
		t.Fatalf("after bob and carol acknowledged: refs %v, want alice's sync copy only", refs)
	}
}

// A blob of several chunks reads back whole and from any offset (a Range
// request seeks), a chunk at a time; a chunk replaced behind the store's
// back fails the read at its end, the object's SHA-256 not matching.
func TestABlobReadsBackAChunkAtATimeAndAReplacedChunkFailsTheDigest(t *testing.T) {
	n := testutil.StartNATS(t, testutil.NATSOptions{})
	s := open(t, n, 0)
	mustCreate(t, s, "alice")
	data := make([]byte, 3*128<<10+1000) // four chunks of the object store's 128 KiB
	for i := range data {
		data[i] = byte(i * 7)
	}
	id := putBlob(t, s, "alice", data)

	_, r, err := s.OpenBlob(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("whole read: %d bytes, %v; want the %d put", len(got), err, len(data))
	}
	for _, off := range []int64{0, 1, 128 << 10, 3*128<<10 + 999} {
		if _, err := r.Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, data[off:]) {
			t.Fatalf("read from %d: %d bytes, %v; want %d", off, len(got), err, len(data)-int(off))
		}
	}
	r.Close()

	// Replace the second chunk: delete its message, publish other bytes on
	// its subject (after the last chunk, where a reader by subject finds it).
	js := jetStreamOf(t, n)
	obs, err := js.ObjectStore(context.Background(), jsstore.BucketBlobs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.GetInfo(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(context.Background(), "OBJ_"+jsstore.BucketBlobs)
	if err != nil {
		t.Fatal(err)
	}
	subject := "$O." + jsstore.BucketBlobs + ".C." + info.NUID
	first, err := stream.GetMsg(context.Background(), 1, jetstream.WithGetMsgSubject(subject))
	if err != nil {
		t.Fatal(err)
	}
	second, err := stream.GetMsg(context.Background(), first.Sequence+1, jetstream.WithGetMsgSubject(subject))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(context.Background(), second.Sequence); err != nil {
		t.Fatal(err)
	}
	forged := bytes.Clone(second.Data)
	forged[0] ^= 1
	if _, err := js.Publish(context.Background(), subject, forged); err != nil {
		t.Fatal(err)
	}
	_, r, err = s.OpenBlob(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.Copy(io.Discard, r); err == nil {
		t.Fatal("a blob with a replaced chunk read to its end without an error")
	}
}
