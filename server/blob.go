package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"kez.lat/chat/server/signing"
)

// Blob limits fixed by the protocol.
const (
	// DefaultMaxBlobBytes is the default of Config.MaxBlobBytes, the
	// largest attachment (--max-blob-bytes).
	DefaultMaxBlobBytes = 25 << 20
	// MaxMessageBlobs is how many blobs one message may name.
	MaxMessageBlobs = 16
	// BlobUnreferencedTTL is how long a blob no message names is kept
	// after its upload.
	BlobUnreferencedTTL = 24 * time.Hour
	// blobIDBytes is the randomness in a blob id.
	blobIDBytes = 32
)

// Blob is an uploaded attachment: opaque, encrypted bytes, kept while a
// stored envelope names it.
type Blob struct {
	// ID is 43 characters, 32 random bytes in base64url: a capability.
	ID string
	// Uploader is the handle that uploaded it; only its messages may name it.
	Uploader string
	// Size and SHA256 (raw) are of the bytes as uploaded.
	Size      int64
	SHA256    []byte
	CreatedAt time.Time
}

// BlobStore keeps attachment blobs beside the envelopes that name them.
// Every Store is one: AppendMessage records a reference from the envelope
// to each blob its Envelope.Blobs names, and refuses with unknown_blob a
// blob that is not stored or was not uploaded by the envelope's sender.
type BlobStore interface {
	// PutBlob stores what r yields as b (ID, Uploader and CreatedAt set;
	// the store sets Size) durably before it returns. need is about how
	// many bytes r yields (the upper bound when unknown): a store without
	// room for them refuses with storage_full before reading. When r
	// fails, nothing is kept and the error wraps r's.
	PutBlob(ctx context.Context, b *Blob, r io.Reader, need int64) error
	// OpenBlob returns blob id and its bytes, or unknown_blob. The caller
	// closes the reader.
	OpenBlob(ctx context.Context, id string) (*Blob, io.ReadSeekCloser, error)
	// PruneBlobs deletes the blobs that were referenced and no longer are,
	// those never referenced and uploaded before unreferencedBefore, and
	// every one uploaded before uploadedBefore (the retention), and
	// reports how many.
	PruneBlobs(ctx context.Context, now, unreferencedBefore, uploadedBefore time.Time) (int, error)
}

// BlobReceipt answers an upload.
type BlobReceipt struct {
	ID     string `json:"id"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// BlobUpload is an authenticated upload, as the HTTP layer hands it over.
type BlobUpload struct {
	Session *Session
	// Digest is the base64url SHA-256 the request signed.
	Digest string
	// Body yields the bytes; Length is their count when the request said
	// it (Content-Length), else -1.
	Body   io.Reader
	Length int64
}

// NewBlobID returns a fresh random blob id.
func NewBlobID() string {
	b := make([]byte, blobIDBytes)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return signing.EncodeB64(b)
}

// ValidBlobID reports whether id has the shape of a blob id.
func ValidBlobID(id string) bool {
	if len(id) != 43 {
		return false
	}
	b, err := signing.DecodeB64(id)
	return err == nil && len(b) == blobIDBytes
}

// ParseBlobDigest decodes the signed digest of an upload.
func ParseBlobDigest(d string) ([]byte, error) {
	sum, err := signing.DecodeB64(d)
	switch {
	case err != nil:
		return nil, Errorf(CodeInvalidEncoding, "sha256 is not base64url without padding")
	case len(sum) != sha256.Size:
		return nil, Errorf(CodeInvalidField, "sha256 must be 32 bytes, got %d", len(sum))
	}
	return sum, nil
}

// BlobTooLarge is the refusal of an upload over max bytes.
func BlobTooLarge(max int64) *Error {
	return Errorf(CodeBlobTooLarge, "the blob is over %d bytes", max)
}

// UploadBlob stores an authenticated upload: it counts the bytes against
// the sender's quota as they arrive (all at once when the length is
// known), refuses more than MaxBlobBytes, hashes them, and has the store
// keep them only when their SHA-256 is the signed one. What was not
// stored is given back to the quota.
func (s *Service) UploadBlob(ctx context.Context, up BlobUpload) (BlobReceipt, error) {
	want, err := ParseBlobDigest(up.Digest)
	if err != nil {
		return BlobReceipt{}, err
	}
	max := s.cfg.MaxBlobBytes
	if up.Length > max {
		return BlobReceipt{}, BlobTooLarge(max)
	}
	handle := up.Session.User.Handle
	meter := &QuotaMeter{R: up.Body, Limiter: s.SenderQuota, Key: handle, Refusal: func(wait time.Duration) error {
		return &Error{Code: CodeSenderQuota, RetryAfter: wait,
			Message: fmt.Sprintf("%s has stored its day's quota of bytes; wait %s", handle, wait.Round(time.Second))}
	}}
	if err := meter.Prepay(up.Length); err != nil {
		return BlobReceipt{}, err
	}
	check := &digestReader{r: &capReader{r: meter, max: max}, h: sha256.New(), want: want}
	b := &Blob{ID: NewBlobID(), Uploader: handle, SHA256: want, CreatedAt: s.now()}
	need := up.Length
	if need < 0 {
		need = max
	}
	if err := s.store.PutBlob(ctx, b, check, need); err != nil {
		meter.Refund()
		return BlobReceipt{}, fmt.Errorf("storing a blob of %s: %w", handle, err)
	}
	s.log.InfoContext(ctx, "stored blob", "from", handle, "size", b.Size)
	return BlobReceipt{ID: b.ID, Size: b.Size, SHA256: up.Digest}, nil
}

// MaxBlobBytes is the largest blob an upload may carry.
func (s *Service) MaxBlobBytes() int64 { return s.cfg.MaxBlobBytes }

// OpenBlob returns blob id and its bytes, or unknown_blob.
func (s *Service) OpenBlob(ctx context.Context, id string) (*Blob, io.ReadSeekCloser, error) {
	if !ValidBlobID(id) {
		return nil, nil, Errorf(CodeUnknownBlob, "no blob %q", id)
	}
	return s.store.OpenBlob(ctx, id)
}

// checkBlobIDs checks a payload's blobs member: 1 to MaxMessageBlobs
// distinct ids of the blob id shape (absent is fine). An id of another
// shape names no blob.
func checkBlobIDs(ids []string) error {
	if ids == nil {
		return nil
	}
	if len(ids) == 0 || len(ids) > MaxMessageBlobs {
		return Errorf(CodeInvalidField, "blobs must name 1 to %d blobs", MaxMessageBlobs)
	}
	for i, id := range ids {
		if !ValidBlobID(id) {
			return Errorf(CodeUnknownBlob, "no blob %q", id)
		}
		for _, prev := range ids[:i] {
			if prev == id {
				return Errorf(CodeInvalidField, "blobs names %q twice", id)
			}
		}
	}
	return nil
}

// UnknownBlob is the refusal of a message naming id, which is not stored
// or not its sender's.
func UnknownBlob(id string) *Error {
	return Errorf(CodeUnknownBlob, "no blob %q uploaded by the sender", id)
}

// QuotaMeter charges the bytes read through it to a byte quota, refusing
// with Refusal once the quota is spent; Refund gives back what it charged.
// Prepay charges a length known in advance at once, so that a body too
// large for the quota is refused before it is read.
type QuotaMeter struct {
	R       io.Reader
	Limiter *RateLimiter
	Key     string
	Refusal func(wait time.Duration) error

	prepaid, read int64
	charged       float64
}

// Prepay charges n bytes (nothing when n < 0: unknown).
func (m *QuotaMeter) Prepay(n int64) error {
	if n <= 0 {
		return nil
	}
	if ok, wait := m.Limiter.AllowN(m.Key, float64(n)); !ok {
		return m.Refusal(wait)
	}
	m.prepaid, m.charged = n, float64(n)
	return nil
}

func (m *QuotaMeter) Read(p []byte) (int, error) {
	n, err := m.R.Read(p)
	m.read += int64(n)
	if over := m.read - m.prepaid; over > 0 {
		if ok, wait := m.Limiter.AllowN(m.Key, float64(over)); !ok {
			return n, m.Refusal(wait)
		}
		m.prepaid, m.charged = m.read, m.charged+float64(over)
	}
	return n, err
}

// Refund gives back everything charged.
func (m *QuotaMeter) Refund() {
	m.Limiter.Refund(m.Key, m.charged)
	m.charged = 0
}

// capReader fails with blob_too_large once more than max bytes were read.
type capReader struct {
	r    io.Reader
	max  int64
	read int64
}

func (c *capReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += int64(n)
	if c.read > c.max {
		return n, BlobTooLarge(c.max)
	}
	return n, err
}

// digestReader hashes what it reads and, at the end, answers
// digest_mismatch instead of io.EOF when the bytes are not the signed
// ones: a store copying it never keeps them.
type digestReader struct {
	r    io.Reader
	h    hash.Hash
	want []byte
}

func (d *digestReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.h.Write(p[:n])
	if errors.Is(err, io.EOF) && !bytes.Equal(d.h.Sum(nil), d.want) {
		return n, Errorf(CodeDigestMismatch, "the body's SHA-256 is not the signed one")
	}
	return n, err
}
