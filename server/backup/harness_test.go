package backup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/backup"
	"kez.lat/chat/server/backup/s3"
	"kez.lat/chat/server/backup/s3test"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/sqlite"
	"kez.lat/chat/server/testutil"
)

// bucket is a real S3 server (versitygw) and a backup.ObjectStore on it.
type bucket struct {
	*s3test.Server
	store *s3.Store
}

func newBucket(t testing.TB) *bucket {
	t.Helper()
	srv := s3test.Start(t)
	store, err := s3.New(s3.Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket, InsecureHTTP: true,
		AccessKeyID: srv.AccessKeyID, SecretAccessKey: srv.SecretAccessKey})
	if err != nil {
		t.Fatal(err)
	}
	return &bucket{Server: srv, store: store}
}

func testLog(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

func openChat(t testing.TB, path string) *sqlite.DB {
	t.Helper()
	db, err := sqlite.Open(context.Background(), path, nil)
	if err != nil {
		t.Fatalf("opening %s: %v", path, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func openKeyLog(t testing.TB, path string) *sqlite.KeyLog {
	t.Helper()
	k, err := sqlite.OpenKeyLog(context.Background(), path, nil)
	if err != nil {
		t.Fatalf("opening %s: %v", path, err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

func user(handle string) *server.User {
	return &server.User{Handle: handle, Server: "chat.test", PrimaryID: fmt.Sprintf("%x", sha256.Sum256([]byte(handle)))[:40],
		Alg: "ed25519", Key: []byte("signing-key-" + handle), EncKey: []byte("enc-key-" + handle),
		CreatedAt: time.Unix(1_764_000_000, 0)}
}

func envelope(to, from, id string) *server.Envelope {
	return &server.Envelope{Recipient: to, Sender: from, ID: id,
		Message: []byte(fmt.Sprintf(`{"payload":{"id":%q,"from":%q,"to":%q},"signature":{}}`, id, from, to))}
}

// identity publishes n versions of a new identity's key document in dir.
func publishChain(t testing.TB, dir *server.KeyDirectory, n int) string {
	t.Helper()
	primary, err := signing.GenerateKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	pid := signing.PrimaryID(primary.Alg(), primary.PublicKey())
	var prev []byte
	for v := 1; v <= n; v++ {
		keys := []server.SigningKeyJSON{{Alg: primary.Alg(), Key: signing.EncodeB64(primary.PublicKey()), Label: "primary"}}
		for d := 1; d < v; d++ {
			dev, _ := signing.GenerateKey("ed25519")
			keys = append(keys, server.SigningKeyJSON{Alg: dev.Alg(), Key: signing.EncodeB64(dev.PublicKey()), Label: fmt.Sprintf("device %d", d)})
		}
		p := server.KeyPayload{Type: server.TypeKeys, PrimaryID: pid, Version: uint64(v), SigningKeys: keys,
			EncKey: signing.EncodeB64(make([]byte, 32)), TS: time.Now().Unix()}
		if prev != nil {
			p.Prev = signing.EncodeB64(prev)
		}
		doc, err := signing.Sign(primary, p)
		if err != nil {
			t.Fatal(err)
		}
		d, _, err := dir.Publish(context.Background(), doc)
		if err != nil {
			t.Fatalf("publishing version %d of %s: %v", v, pid, err)
		}
		prev = d.Hash
	}
	return pid
}

func take(t testing.TB, b *bucket, src backup.Source, id string, part backup.Part, opts ...func(*backup.Options)) *backup.Result {
	t.Helper()
	o := backup.Options{Store: b.store, Layout: backup.Layout{Prefix: "kez/prod"}, ID: id, Part: part, Version: "test", Log: testLog(t)}
	for _, f := range opts {
		f(&o)
	}
	res, err := backup.Take(context.Background(), src, o)
	if err != nil {
		t.Fatalf("backup %s of %s: %v", id, part, err)
	}
	return res
}

func restore(b *bucket, dst backup.Target, id string, part backup.Part) (*backup.RestoreResult, error) {
	return backup.Restore(context.Background(), dst, backup.RestoreOptions{Store: b.store,
		Layout: backup.Layout{Prefix: "kez/prod"}, ID: id, Part: part, Log: slog.New(slog.DiscardHandler)})
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tempPath(t testing.TB, name string) string { return filepath.Join(t.TempDir(), name) }

func writeFile(path string, data []byte) error { return os.WriteFile(path, data, 0o644) }

// ackedMessage is a message a store acknowledged, and when.
type ackedMessage struct {
	to, id string
	at     time.Time
}

// writeLoad is four writers appending messages among handles to a store,
// each acknowledgement recorded with its time, until stopped.
type writeLoad struct {
	mu    sync.Mutex
	acked []ackedMessage
	stop  chan struct{}
	wg    sync.WaitGroup
}

func startWriteLoad(t *testing.T, store server.Store, handles []string) *writeLoad {
	l := &writeLoad{stop: make(chan struct{})}
	for w := range 4 {
		l.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				to, id := handles[(w+i)%len(handles)], fmt.Sprintf("w%d-%d", w, i)
				if _, err := store.AppendMessage(context.Background(), envelope(to, handles[w%len(handles)], id), server.InboxLimits{}); err != nil {
					t.Errorf("append: %v", err)
					return
				}
				l.mu.Lock()
				l.acked = append(l.acked, ackedMessage{to, id, time.Now()})
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(l.end)
	return l
}

func (l *writeLoad) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// waitFor waits until n appends in all were acknowledged.
func (l *writeLoad) waitFor(t *testing.T, n int) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, fmt.Sprintf("%d messages acknowledged", n), func() error {
		if got := l.count(); got < n {
			return fmt.Errorf("%d so far", got)
		}
		return nil
	})
}

// end stops the writers; it may be called more than once.
func (l *writeLoad) end() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// checkAckedBefore fails t for every message acknowledged before started
// that restored (by "handle/id") lacks, and says how many there were and
// how many acknowledged later made it in.
func (l *writeLoad) checkAckedBefore(t *testing.T, started time.Time, restored map[string]bool) (before, after int) {
	t.Helper()
	l.end()
	for _, a := range l.acked {
		switch {
		case a.at.Before(started):
			before++
			if !restored[a.to+"/"+a.id] {
				t.Errorf("message %s to %s, acknowledged before the backup started, is not in it", a.id, a.to)
			}
		case restored[a.to+"/"+a.id]:
			after++
		}
	}
	return before, after
}

// putBlob uploads data as a blob of uploader's and returns it.
func putBlob(t testing.TB, store server.BlobStore, uploader string, data []byte) *server.Blob {
	t.Helper()
	sum := sha256.Sum256(data)
	b := &server.Blob{ID: server.NewBlobID(), Uploader: uploader, SHA256: sum[:], CreatedAt: time.Now()}
	if err := store.PutBlob(context.Background(), b, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("uploading a blob: %v", err)
	}
	return b
}

// blobBytes reads blob id, or reports why it cannot.
func blobBytes(store server.BlobStore, id string) ([]byte, error) {
	_, rc, err := store.OpenBlob(context.Background(), id)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// envelopeWithBlobs is envelope(to, from, id) naming blobs.
func envelopeWithBlobs(to, from, id string, blobs ...*server.Blob) *server.Envelope {
	e := envelope(to, from, id)
	for _, b := range blobs {
		e.Blobs = append(e.Blobs, b.ID)
	}
	return e
}
