package jsstore

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"kez.lat/chat/server"
	"kez.lat/chat/server/natsbus"
)

// Blobs are objects of the Object Store BucketBlobs, named by their id.
// Their uploader, upload time and references are a record in the KV
// bucket BucketBlobRefs under the same id, changed by compare-and-set; the
// same bucket holds, under inbox.<token>, an index of the recipient's
// envelopes that name blobs, by which acknowledging releases references.
//
// JetStream has no transaction across a stream and a bucket, so a
// reference is made in two steps around the append: a pending one (seq 0)
// before, which checks the blob's uploader and keeps the blob from being
// pruned meanwhile, and the envelope's seq after. PruneBlobs drops a
// reference whose envelope is no longer in the stream (acknowledged, or
// expired at the stream's max age) and a pending one older than
// pendingRefTTL, so whatever a crash or a lost answer leaves behind is
// put right at the next prune.
const (
	BucketBlobs    = "kez_chat_blobs"
	BucketBlobRefs = "kez_chat_blob_refs"
	// blobIndexPrefix starts the keys of the per-recipient index; blob
	// ids, base64url, hold no dot.
	blobIndexPrefix = "inbox."
	// pendingRefTTL is how long a reference made before its append counts
	// without the append's seq: longer than any append waits.
	pendingRefTTL = 10 * time.Minute
	// maxIndexEntries bounds a recipient's index (a KV value); envelopes
	// past it are released by PruneBlobs alone.
	maxIndexEntries = 4096
	// orphanObjectAge is how old an object without a record must be
	// before PruneBlobs deletes it: an upload puts its object before its
	// record.
	orphanObjectAge = time.Hour
	// casAttempts bounds the compare-and-set retries of one change.
	casAttempts = 16
)

// blobRecord is a blob's entry in BucketBlobRefs.
type blobRecord struct {
	Uploader  string `json:"uploader"`
	Size      int64  `json:"size"`
	SHA256    []byte `json:"sha256"`
	CreatedAt int64  `json:"created_at"`
	// Referenced is set once a stored envelope named the blob.
	Referenced bool `json:"referenced,omitempty"`
	// Federated: a document queued for another server names the blob,
	// kept until the retention since its readers there are not known.
	Federated bool      `json:"federated,omitempty"`
	Refs      []blobRef `json:"refs,omitempty"`
}

// blobRef is an envelope naming the blob: its recipient and seq (0 while
// its append is in flight), and when the reference was made.
type blobRef struct {
	To  string `json:"to"`
	Seq uint64 `json:"seq,omitempty"`
	At  int64  `json:"at"`
}

// indexEntry is one envelope of a recipient that names blobs.
type indexEntry struct {
	Seq   uint64   `json:"seq"`
	At    int64    `json:"at"`
	Blobs []string `json:"blobs"`
}

func blobIndexKey(recipient string) string { return blobIndexPrefix + natsbus.Token(recipient) }

// setupBlobs creates or updates the object store and the refs bucket.
func (s *Store) setupBlobs(ctx context.Context, cfg Config, storage jetstream.StorageType) error {
	var err error
	if s.objects, err = s.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: BucketBlobs, Description: "kez-chat attachment blobs by id",
		Storage: storage, Replicas: cfg.Replicas,
	}); err != nil {
		return fmt.Errorf("creating object store %s: %w", BucketBlobs, err)
	}
	if s.objectStream, err = s.js.Stream(ctx, "OBJ_"+BucketBlobs); err != nil {
		return fmt.Errorf("opening the stream of object store %s: %w", BucketBlobs, err)
	}
	if s.blobRefs, err = s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: BucketBlobRefs, Description: "kez-chat blobs' uploaders and references; inbox.<token>: envelopes naming blobs",
		History: 1, Storage: storage, Replicas: cfg.Replicas,
	}); err != nil {
		return fmt.Errorf("creating bucket %s: %w", BucketBlobRefs, err)
	}
	return nil
}

// PutBlob puts r as an object, then creates b's record; see
// server.BlobStore.
func (s *Store) PutBlob(ctx context.Context, b *server.Blob, r io.Reader, need int64) error {
	if err := s.checkBlobRoom(ctx, need); err != nil {
		return err
	}
	counted := &countingReader{r: r}
	// Put reads r a chunk at a time, publishing each; when r fails it
	// purges the chunks it published.
	if _, err := s.objects.Put(ctx, jetstream.ObjectMeta{Name: b.ID}, counted); err != nil {
		return s.blobError(fmt.Errorf("putting blob %s: %w", b.ID, err))
	}
	b.Size = counted.n
	rec, _ := json.Marshal(blobRecord{Uploader: b.Uploader, Size: b.Size, SHA256: b.SHA256, CreatedAt: b.CreatedAt.Unix()})
	if _, err := s.blobRefs.Create(ctx, b.ID, rec); err != nil {
		if derr := s.objects.Delete(context.WithoutCancel(ctx), b.ID); derr != nil {
			s.log.Warn("deleting the object of a blob without a record", "blob", b.ID, "err", derr)
		}
		return s.blobError(fmt.Errorf("recording blob %s: %w", b.ID, err))
	}
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// checkBlobRoom refuses with storage_full when the account's storage has
// no room for need more bytes and a large message after them.
func (s *Store) checkBlobRoom(ctx context.Context, need int64) error {
	info, err := s.js.AccountInfo(ctx)
	if err != nil {
		return fmt.Errorf("JetStream: %w", err)
	}
	if max := info.Limits.MaxStore; max > 0 && int64(info.Store)+need+roomNeeded > max {
		s.full.Add(1)
		return &server.Error{Code: server.CodeStorageFull, RetryAfter: time.Minute,
			Message: "the store has no room for this blob; try again later"}
	}
	return nil
}

// blobError turns JetStream's refusal for want of room into storage_full.
func (s *Store) blobError(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && storageFull(apiErr) {
		s.full.Add(1)
		return &server.Error{Code: server.CodeStorageFull, RetryAfter: time.Minute,
			Message: "the store is full; try again later"}
	}
	return err
}

// OpenBlob reads id's record and opens its object; see server.BlobStore.
// The reader streams the object's chunks; a seek before reading starts
// over and skips to the offset, so Range requests are served without
// holding the blob.
func (s *Store) OpenBlob(ctx context.Context, id string) (*server.Blob, io.ReadSeekCloser, error) {
	e, err := s.blobRefs.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil, server.Errorf(server.CodeUnknownBlob, "no blob %q", id)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading blob %s: %w", id, err)
	}
	var rec blobRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, nil, fmt.Errorf("decoding blob %s: %w", id, err)
	}
	info, err := s.objects.GetInfo(ctx, id)
	if err != nil {
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return nil, nil, server.Errorf(server.CodeUnknownBlob, "no blob %q", id)
		}
		return nil, nil, fmt.Errorf("reading blob %s: %w", id, err)
	}
	b := &server.Blob{ID: id, Uploader: rec.Uploader, Size: rec.Size, SHA256: rec.SHA256, CreatedAt: time.Unix(rec.CreatedAt, 0)}
	return b, &objectReader{ctx: ctx, stream: s.objectStream, info: info, size: rec.Size}, nil
}

// objectReader reads an object from offset pos, opening it at the first
// Read after a seek.
type objectReader struct {
	ctx    context.Context
	stream jetstream.Stream
	info   *jetstream.ObjectInfo
	size   int64

	pos  int64
	open *chunkReader // reading at pos; nil after a seek
}

func (o *objectReader) Read(p []byte) (int, error) {
	if o.pos >= o.size {
		return 0, io.EOF
	}
	if o.open == nil {
		r := newChunkReader(o.ctx, o.stream, o.info)
		if _, err := io.CopyN(io.Discard, r, o.pos); err != nil {
			return 0, fmt.Errorf("reading blob %s to offset %d: %w", o.info.Name, o.pos, err)
		}
		o.open = r
	}
	n, err := o.open.Read(p)
	o.pos += int64(n)
	return n, err
}

func (o *objectReader) Seek(offset int64, whence int) (int64, error) {
	pos := offset
	switch whence {
	case io.SeekCurrent:
		pos += o.pos
	case io.SeekEnd:
		pos += o.size
	}
	if pos < 0 {
		return 0, errors.New("seeking before the start of a blob")
	}
	if pos != o.pos {
		o.open = nil
	}
	o.pos = pos
	return pos, nil
}

func (o *objectReader) Close() error { return nil }

// chunkReader reads an object's chunks one at a time, each by a get of the
// next message on the object's chunk subject: it holds one chunk however
// slowly its client reads. (The object store's own reader is an ordered
// push consumer, which NATS fills ahead of the reader up to its flow-control
// window: megabytes per download.) At the end it checks the object's
// SHA-256, as that reader does.
type chunkReader struct {
	ctx     context.Context
	stream  jetstream.Stream
	name    string
	subject string
	next    uint64 // the stream sequence the next chunk is looked for from
	left    uint32 // chunks not read yet
	chunk   []byte // the unread rest of the current chunk
	digest  hash.Hash
	want    string // "SHA-256=<base64url>", the object's digest
}

func newChunkReader(ctx context.Context, stream jetstream.Stream, info *jetstream.ObjectInfo) *chunkReader {
	return &chunkReader{ctx: ctx, stream: stream, name: info.Name,
		subject: fmt.Sprintf("$O.%s.C.%s", info.Bucket, info.NUID),
		next:    1, left: info.Chunks, digest: sha256.New(), want: info.Digest}
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.chunk) == 0 {
		if c.left == 0 {
			return 0, io.EOF
		}
		m, err := c.stream.GetMsg(c.ctx, c.next, jetstream.WithGetMsgSubject(c.subject))
		if err != nil {
			return 0, fmt.Errorf("reading a chunk of blob %s: %w", c.name, err)
		}
		c.next, c.left, c.chunk = m.Sequence+1, c.left-1, m.Data
		c.digest.Write(m.Data)
		// Checked before the last chunk is handed out: a reader that stops
		// at the blob's size never asks past it.
		if c.left == 0 {
			if got := "SHA-256=" + base64.URLEncoding.EncodeToString(c.digest.Sum(nil)); c.want != "" && got != c.want {
				c.chunk = nil
				return 0, fmt.Errorf("reading blob %s: its chunks do not match its digest", c.name)
			}
		}
	}
	n := copy(p, c.chunk)
	c.chunk = c.chunk[n:]
	return n, nil
}

// updateRecord applies change to id's record by compare-and-set, reading
// again when another replica changed it meanwhile. change returns false to
// leave the record as it is; an error from it is returned as it is.
func (s *Store) updateRecord(ctx context.Context, id string, change func(*blobRecord) (bool, error)) error {
	for attempt := 0; ; attempt++ {
		e, err := s.blobRefs.Get(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return server.Errorf(server.CodeUnknownBlob, "no blob %q", id)
		}
		if err != nil {
			return fmt.Errorf("reading blob %s: %w", id, err)
		}
		var rec blobRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return fmt.Errorf("decoding blob %s: %w", id, err)
		}
		ok, err := change(&rec)
		if err != nil || !ok {
			return err
		}
		val, _ := json.Marshal(rec)
		_, err = s.blobRefs.Update(ctx, id, val, e.Revision())
		if err == nil {
			return nil
		}
		if attempt >= casAttempts || ctx.Err() != nil {
			return fmt.Errorf("updating blob %s: %w", id, err)
		}
	}
}

// referenceBlobs runs store, the append of e, between the two steps of
// its references (see above): before, a pending reference to each blob of
// e.Blobs, refusing with unknown_blob one that is not stored or not
// e.Sender's; after, e's seq in each and in the recipient's index, or, when
// store failed, the pending references withdrawn. An append path calls
// it once per envelope.
func (s *Store) referenceBlobs(ctx context.Context, e *server.Envelope, store func() error) error {
	if len(e.Blobs) == 0 {
		return store()
	}
	at := s.now().Unix()
	pending := blobRef{To: e.Recipient, At: at}
	var held []string
	release := func() {
		for _, id := range held {
			err := s.updateRecord(context.WithoutCancel(ctx), id, func(rec *blobRecord) (bool, error) {
				i := slices.Index(rec.Refs, pending)
				if i < 0 {
					return false, nil
				}
				rec.Refs = slices.Delete(rec.Refs, i, i+1)
				return true, nil
			})
			if err != nil {
				s.log.Warn("withdrawing a pending blob reference", "blob", id, "err", err)
			}
		}
	}
	for _, id := range e.Blobs {
		err := s.updateRecord(ctx, id, func(rec *blobRecord) (bool, error) {
			if rec.Uploader != e.Sender {
				return false, server.UnknownBlob(id)
			}
			rec.Refs = append(rec.Refs, pending)
			return true, nil
		})
		if err != nil {
			release()
			if server.ErrorCode(err) == server.CodeUnknownBlob {
				return server.UnknownBlob(id)
			}
			return err
		}
		held = append(held, id)
	}
	if err := store(); err != nil {
		release()
		return err
	}
	stored := blobRef{To: e.Recipient, Seq: e.Seq, At: e.ReceivedAt.Unix()}
	for _, id := range e.Blobs {
		err := s.updateRecord(context.WithoutCancel(ctx), id, func(rec *blobRecord) (bool, error) {
			if i := slices.Index(rec.Refs, pending); i >= 0 {
				rec.Refs = slices.Delete(rec.Refs, i, i+1)
			}
			if !slices.ContainsFunc(rec.Refs, func(r blobRef) bool { return r.To == stored.To && r.Seq == stored.Seq }) {
				rec.Refs = append(rec.Refs, stored) // a retry's envelope has it already
			}
			rec.Referenced = true
			return true, nil
		})
		if err != nil {
			// The pending reference keeps the blob for pendingRefTTL.
			s.log.Warn("recording a blob reference", "blob", id, "to", e.Recipient, "seq", e.Seq, "err", err)
		}
	}
	if err := s.indexBlobs(context.WithoutCancel(ctx), e); err != nil {
		s.log.Warn("indexing an envelope's blobs", "to", e.Recipient, "seq", e.Seq, "err", err)
	}
	return nil
}

// updateIndex applies change to recipient's index by compare-and-set; an
// index left empty is deleted.
func (s *Store) updateIndex(ctx context.Context, recipient string, change func([]indexEntry) ([]indexEntry, bool)) error {
	key := blobIndexKey(recipient)
	for attempt := 0; ; attempt++ {
		var entries []indexEntry
		var rev uint64
		e, err := s.blobRefs.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &entries); err != nil {
				return fmt.Errorf("decoding the blob index of %s: %w", recipient, err)
			}
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return fmt.Errorf("reading the blob index of %s: %w", recipient, err)
		}
		entries, ok := change(entries)
		if !ok {
			return nil
		}
		switch {
		case len(entries) == 0 && rev != 0:
			err = s.blobRefs.Delete(ctx, key, jetstream.LastRevision(rev))
		case len(entries) == 0:
			return nil
		case rev == 0:
			val, _ := json.Marshal(entries)
			_, err = s.blobRefs.Create(ctx, key, val)
		default:
			val, _ := json.Marshal(entries)
			_, err = s.blobRefs.Update(ctx, key, val, rev)
		}
		if err == nil {
			return nil
		}
		if attempt >= casAttempts || ctx.Err() != nil {
			return fmt.Errorf("writing the blob index of %s: %w", recipient, err)
		}
	}
}

// indexBlobs adds e to its recipient's index.
func (s *Store) indexBlobs(ctx context.Context, e *server.Envelope) error {
	return s.updateIndex(ctx, e.Recipient, func(entries []indexEntry) ([]indexEntry, bool) {
		if len(entries) >= maxIndexEntries || slices.ContainsFunc(entries, func(x indexEntry) bool { return x.Seq == e.Seq }) {
			return nil, false
		}
		return append(entries, indexEntry{Seq: e.Seq, At: e.ReceivedAt.Unix(), Blobs: e.Blobs}), true
	})
}

// ReleaseBlobRefs drops the references of recipient's envelopes with seq
// at or below upto, which are deleted; Ack calls it once they are. What it
// fails to release, PruneBlobs does.
func (s *Store) ReleaseBlobRefs(ctx context.Context, recipient string, upto uint64) error {
	var gone []indexEntry
	err := s.updateIndex(ctx, recipient, func(entries []indexEntry) ([]indexEntry, bool) {
		gone = gone[:0]
		kept := entries[:0:0]
		for _, x := range entries {
			if x.Seq <= upto {
				gone = append(gone, x)
			} else {
				kept = append(kept, x)
			}
		}
		return kept, len(gone) > 0
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, x := range gone {
		for _, id := range x.Blobs {
			err := s.updateRecord(ctx, id, func(rec *blobRecord) (bool, error) {
				n := len(rec.Refs)
				rec.Refs = slices.DeleteFunc(rec.Refs, func(r blobRef) bool { return r.To == recipient && r.Seq == x.Seq })
				return len(rec.Refs) < n, nil
			})
			if err != nil && server.ErrorCode(err) != server.CodeUnknownBlob {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("releasing the blob references of %s up to %d: %w", recipient, upto, err)
	}
	return nil
}

// PruneBlobs walks the objects: it drops each record's references whose
// envelope is gone, then deletes the blobs server.BlobStore says go,
// record first and object after, and objects left without a record. It
// also drops index entries of envelopes past the retention. Replicas may
// prune at once: every change is a compare-and-set.
func (s *Store) PruneBlobs(ctx context.Context, now, unreferencedBefore, uploadedBefore time.Time) (int, error) {
	objs, err := s.objects.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return 0, s.pruneIndexes(ctx, uploadedBefore)
	}
	if err != nil {
		return 0, fmt.Errorf("listing blobs: %w", err)
	}
	deleted := 0
	for _, o := range objs {
		gone, err := s.pruneBlob(ctx, o, now, unreferencedBefore, uploadedBefore)
		if err != nil {
			if ctx.Err() != nil {
				return deleted, err
			}
			s.log.Warn("pruning a blob", "blob", o.Name, "err", err)
			continue
		}
		if gone {
			deleted++
		}
	}
	return deleted, s.pruneIndexes(ctx, uploadedBefore)
}

func (s *Store) pruneBlob(ctx context.Context, o *jetstream.ObjectInfo, now, unreferencedBefore, uploadedBefore time.Time) (bool, error) {
	e, err := s.blobRefs.Get(ctx, o.Name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		if now.Sub(o.ModTime) < orphanObjectAge {
			return false, nil
		}
		return true, s.deleteObject(ctx, o.Name)
	}
	if err != nil {
		return false, err
	}
	var rec blobRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return false, fmt.Errorf("decoding blob %s: %w", o.Name, err)
	}
	live := rec.Refs[:0:0]
	for _, r := range rec.Refs {
		alive, err := s.refAlive(ctx, r, now, uploadedBefore)
		if err != nil {
			return false, err
		}
		if alive {
			live = append(live, r)
		}
	}
	created := time.Unix(rec.CreatedAt, 0)
	if created.Before(uploadedBefore) || (len(live) == 0 && !rec.Federated && (rec.Referenced || created.Before(unreferencedBefore))) {
		// By revision: a reference made meanwhile keeps the blob.
		if err := s.blobRefs.Delete(ctx, o.Name, jetstream.LastRevision(e.Revision())); err != nil {
			return false, nil // changed meanwhile: the next prune decides
		}
		return true, s.deleteObject(ctx, o.Name)
	}
	if len(live) < len(rec.Refs) {
		rec.Refs = live
		val, _ := json.Marshal(rec)
		_, _ = s.blobRefs.Update(ctx, o.Name, val, e.Revision()) // changed meanwhile: the next prune
	}
	return false, nil
}

// refAlive reports whether r's envelope may still be stored.
func (s *Store) refAlive(ctx context.Context, r blobRef, now, expiredBefore time.Time) (bool, error) {
	if r.Seq == 0 {
		return now.Sub(time.Unix(r.At, 0)) < pendingRefTTL, nil
	}
	if time.Unix(r.At, 0).Before(expiredBefore) {
		return false, nil
	}
	_, err := s.stream.GetMsg(ctx, r.Seq)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("looking up envelope %d: %w", r.Seq, err)
	}
}

func (s *Store) deleteObject(ctx context.Context, name string) error {
	if err := s.objects.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("deleting blob %s: %w", name, err)
	}
	return nil
}

// pruneIndexes drops the index entries of envelopes expired at the
// stream's max age.
func (s *Store) pruneIndexes(ctx context.Context, expiredBefore time.Time) error {
	keys, err := s.blobRefs.ListKeysFiltered(ctx, blobIndexPrefix+">")
	if err != nil {
		return fmt.Errorf("listing blob indexes: %w", err)
	}
	var tokens []string
	for k := range keys.Keys() {
		tokens = append(tokens, k[len(blobIndexPrefix):])
	}
	for _, token := range tokens {
		recipient := strings.ReplaceAll(token, "=", ".") // natsbus.Token undone
		err := s.updateIndex(ctx, recipient, func(entries []indexEntry) ([]indexEntry, bool) {
			kept := slices.DeleteFunc(slices.Clone(entries), func(x indexEntry) bool { return time.Unix(x.At, 0).Before(expiredBefore) })
			return kept, len(kept) < len(entries)
		})
		if err != nil {
			return err
		}
	}
	return nil
}
