package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"
	"unicode"
	"unicode/utf8"

	"kez.lat/chat/server/signing"
)

// TypeKeys is the payload type of a key document: which keys currently
// speak for an identity, signed by its primary key (docs/protocol.md, "Key
// documents").
const TypeKeys = "kez.sig.keys/v1"

// Limits of a key document, fixed by the protocol.
const (
	// MaxKeyDocument bounds the body of POST /v1/keys and one stored
	// document; a document with MaxSigningKeys keys and labels is under 4 KiB.
	MaxKeyDocument = 8 << 10
	// MaxSigningKeys bounds signing_keys.
	MaxSigningKeys = 16
	// MaxKeyLabel bounds a signing key's label, in bytes.
	MaxKeyLabel = 64
	// MaxKeyVersion bounds an identity's chain, so verifying one from the
	// start is bounded work for every reader.
	MaxKeyVersion = 4096
)

// SigningKeyJSON is one entry of a key document's signing_keys.
type SigningKeyJSON struct {
	Alg   string `json:"alg"`
	Key   string `json:"key"`
	Label string `json:"label"`
}

// KeyPayload is the signed payload of a key document.
type KeyPayload struct {
	Type        string           `json:"type"`
	PrimaryID   string           `json:"primary_id"`
	Version     uint64           `json:"version"`
	Prev        string           `json:"prev"`
	SigningKeys []SigningKeyJSON `json:"signing_keys"`
	EncKey      string           `json:"enc_key"`
	TS          int64            `json:"ts"`
}

// SigningKey is a key that speaks for an identity, decoded.
type SigningKey struct {
	Alg   string
	Key   []byte
	Label string
}

// KeyDocument is a verified key document: its signature verifies under the
// identity's primary key and every field is well formed. Whether it follows
// the identity's previous document is Follows's question.
type KeyDocument struct {
	PrimaryID   string
	Version     uint64
	Prev        []byte // SHA-256 of the previous document's signed bytes; nil for version 1
	Hash        []byte // SHA-256 of this document's signed bytes (its canonical payload)
	SigningKeys []SigningKey
	EncKey      []byte
	TS          time.Time
	// Signed is the document as stored and served:
	// {"payload": <canonical payload>, "signature": {...}}.
	Signed json.RawMessage
}

// KeyHash is the chain hash of a document's signed bytes: what the next
// version's prev names.
func KeyHash(canonical []byte) []byte {
	h := sha256.Sum256(canonical)
	return h[:]
}

// ParseKeyDocumentJSON decodes a signed key document strictly and verifies
// it with ParseKeyDocument.
func ParseKeyDocumentJSON(data []byte) (*KeyDocument, error) {
	var doc signing.Signed
	if err := DecodeJSON(data, &doc); err != nil {
		return nil, err
	}
	return ParseKeyDocument(doc)
}

// ParseKeyDocument verifies everything a key document says about itself:
// the signature, that the signer is the primary key primary_id derives from,
// the shape of every field, and that version 1 lists the primary key. It
// returns *Error values with the protocol's codes.
func ParseKeyDocument(doc signing.Signed) (*KeyDocument, error) {
	canonical, pub, err := verifySigned(doc)
	if err != nil {
		return nil, err
	}
	if len(canonical) > MaxKeyDocument {
		return nil, Errorf(CodeBodyTooLarge, "the key document is over %d bytes", MaxKeyDocument)
	}
	var p KeyPayload
	if err := DecodeJSON(canonical, &p); err != nil {
		return nil, err
	}
	if p.Type != TypeKeys {
		return nil, Errorf(CodeWrongType, "payload type must be %q, got %q", TypeKeys, p.Type)
	}
	if !validPrimaryID(p.PrimaryID) {
		return nil, Errorf(CodeInvalidField, "primary_id must be 40 lowercase hex characters")
	}
	if want := signing.PrimaryID(doc.Signature.Alg, pub); p.PrimaryID != want {
		return nil, Errorf(CodeNotPrimaryKey, "the document is not signed by the primary key of %s", p.PrimaryID)
	}
	if p.Version < 1 || p.Version > MaxKeyVersion {
		return nil, Errorf(CodeInvalidField, "version must be 1 to %d", MaxKeyVersion)
	}
	d := &KeyDocument{PrimaryID: p.PrimaryID, Version: p.Version, Hash: KeyHash(canonical), TS: time.Unix(p.TS, 0)}
	switch {
	case p.Version == 1 && p.Prev != "":
		return nil, Errorf(CodeInvalidField, "prev must be empty in version 1")
	case p.Version > 1:
		prev, err := signing.DecodeB64(p.Prev)
		if err != nil {
			return nil, Errorf(CodeInvalidEncoding, "prev is not base64url without padding")
		}
		if len(prev) != sha256.Size {
			return nil, Errorf(CodeInvalidField, "prev must be a 32-byte SHA-256, got %d bytes", len(prev))
		}
		d.Prev = prev
	}
	if p.TS < 0 {
		return nil, Errorf(CodeInvalidField, "ts must not be negative")
	}
	if d.SigningKeys, err = parseSigningKeys(p.SigningKeys); err != nil {
		return nil, err
	}
	if d.EncKey, err = decodeKey("enc_key", p.EncKey); err != nil {
		return nil, err
	}
	if p.Version == 1 && !d.Authorizes(doc.Signature.Alg, pub) {
		return nil, Errorf(CodePrimaryKeyMissing, "version 1 must list the primary key in signing_keys")
	}
	if d.Signed, err = envelopeMessage(canonical, doc.Signature); err != nil {
		return nil, fmt.Errorf("encoding key document: %w", err)
	}
	return d, nil
}

func parseSigningKeys(in []SigningKeyJSON) ([]SigningKey, error) {
	if len(in) == 0 || len(in) > MaxSigningKeys {
		return nil, Errorf(CodeInvalidField, "signing_keys must hold 1 to %d keys, got %d", MaxSigningKeys, len(in))
	}
	out := make([]SigningKey, 0, len(in))
	for i, k := range in {
		if _, err := signing.Lookup(k.Alg); err != nil {
			return nil, Errorf(CodeUnknownAlg, "signing_keys[%d].alg %q is not one of %v", i, k.Alg, signing.Algorithms())
		}
		key, err := decodeKey(fmt.Sprintf("signing_keys[%d].key", i), k.Key)
		if err != nil {
			return nil, err
		}
		if err := checkLabel(k.Label); err != nil {
			return nil, Errorf(CodeInvalidField, "signing_keys[%d].label: %v", i, err)
		}
		for _, prev := range out {
			if prev.Alg == k.Alg && bytes.Equal(prev.Key, key) {
				return nil, Errorf(CodeInvalidField, "signing_keys[%d] repeats a key", i)
			}
		}
		out = append(out, SigningKey{Alg: k.Alg, Key: key, Label: k.Label})
	}
	return out, nil
}

// checkLabel accepts 1 to MaxKeyLabel bytes of text without control or
// bidirectional-override characters, since labels are shown to people.
func checkLabel(l string) error {
	if l == "" || len(l) > MaxKeyLabel || !utf8.ValidString(l) {
		return fmt.Errorf("must be 1 to %d bytes of UTF-8", MaxKeyLabel)
	}
	for _, r := range l {
		if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("must not hold control characters")
		}
	}
	return nil
}

func validPrimaryID(id string) bool {
	if len(id) != 40 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidPrimaryID reports whether id is 40 lowercase hex characters.
func ValidPrimaryID(id string) bool { return validPrimaryID(id) }

// Follows checks the chain rule: d is the version after prev of the same
// identity, and names prev's hash. prev nil means d must be version 1.
func (d *KeyDocument) Follows(prev *KeyDocument) error {
	if prev == nil {
		if d.Version != 1 {
			return Errorf(CodeVersionGap, "%s has no documents; the first must be version 1, not %d", d.PrimaryID, d.Version)
		}
		return nil
	}
	if d.PrimaryID != prev.PrimaryID {
		return Errorf(CodeInvalidField, "document of %s cannot follow one of %s", d.PrimaryID, prev.PrimaryID)
	}
	if d.Version != prev.Version+1 {
		return Errorf(CodeVersionGap, "the next version of %s is %d, not %d", d.PrimaryID, prev.Version+1, d.Version)
	}
	if !bytes.Equal(d.Prev, prev.Hash) {
		return Errorf(CodeWrongPrev, "prev must be %s, the hash of version %d", signing.EncodeB64(prev.Hash), prev.Version)
	}
	return nil
}

// Authorizes reports whether (alg, key) is one of d's signing keys.
func (d *KeyDocument) Authorizes(alg string, key []byte) bool {
	if d == nil {
		return false
	}
	ok := false
	for _, k := range d.SigningKeys {
		// Every key is compared, so the time taken says nothing of which matched.
		if k.Alg == alg && subtle.ConstantTimeCompare(k.Key, key) == 1 {
			ok = true
		}
	}
	return ok
}

// KeyStore keeps the sig-server's log of key documents. server/sqlite
// implements it.
type KeyStore interface {
	// AppendKeyDocument stores d as the next version of its identity,
	// atomically checking that it follows the latest one (d.Follows:
	// version_gap, wrong_prev). A version already stored as the same
	// document reports duplicate; as another one, version_taken.
	AppendKeyDocument(ctx context.Context, d *KeyDocument) (duplicate bool, err error)
	// KeyDocument returns one version, or an unknown_identity *Error.
	KeyDocument(ctx context.Context, primaryID string, version uint64) (*KeyDocument, error)
	// LatestKeyDocument returns the highest version, or an unknown_identity
	// *Error.
	LatestKeyDocument(ctx context.Context, primaryID string) (*KeyDocument, error)
	// KeyDocuments returns up to limit versions from version from on, in
	// order; none when there are none.
	KeyDocuments(ctx context.Context, primaryID string, from uint64, limit int) ([]*KeyDocument, error)
	Ping(ctx context.Context) error
	Close() error
}

// KeyResolver tells the chat server which keys an identity has published.
// server/sigclient implements it over a sig-server.
type KeyResolver interface {
	// ResolveKeys returns the latest verified key document of primaryID, or
	// nil when the identity has published none. An error means it cannot be
	// known now (the sig-server is unreachable and nothing is cached).
	ResolveKeys(ctx context.Context, primaryID string) (*KeyDocument, error)
	// RefreshKeys is ResolveKeys for a key the cached document does not
	// hold: it asks the sig-server again unless it did so a moment ago, so
	// that a device linked since the document was cached is known at once
	// while unknown keys cost at most one request per identity per moment.
	RefreshKeys(ctx context.Context, primaryID string) (*KeyDocument, error)
}

// KeyCheckpoints keep, per identity, the highest key document a chat
// server verified, in its store: no replica and no restart then takes an
// older one from a sig-server that rolls back (and so undoes a
// revocation), or another document for a version already verified.
type KeyCheckpoints interface {
	// KeyCheckpoint returns the stored document of primaryID (the signed
	// JSON a sig-server served), nil when there is none.
	KeyCheckpoint(ctx context.Context, primaryID string) ([]byte, error)
	// SaveKeyCheckpoint stores doc, the verified document of version
	// version, unless a version as high is stored already.
	SaveKeyCheckpoint(ctx context.Context, primaryID string, version uint64, doc []byte) error
}

// KeyDirectory enforces the sig-server's rules: documents are verified,
// and appended only as the next link of their identity's chain.
type KeyDirectory struct {
	store KeyStore
	log   *slog.Logger
	now   func() time.Time
}

// NewKeyDirectory returns a KeyDirectory over store. now nil means
// time.Now.
func NewKeyDirectory(store KeyStore, log *slog.Logger, now func() time.Time) *KeyDirectory {
	if now == nil {
		now = time.Now
	}
	return &KeyDirectory{store: store, log: log, now: now}
}

// Publish verifies doc and appends it. Posting a document that is already
// stored answers it again with replayed set, so a retry is harmless; a
// different document for a stored version is a fork (version_taken).
func (k *KeyDirectory) Publish(ctx context.Context, doc signing.Signed) (d *KeyDocument, replayed bool, err error) {
	d, err = ParseKeyDocument(doc)
	if err != nil {
		return nil, false, err
	}
	existing, err := k.store.KeyDocument(ctx, d.PrimaryID, d.Version)
	switch {
	case err == nil && bytes.Equal(existing.Hash, d.Hash):
		return existing, true, nil
	case err == nil:
		return nil, false, ForkError(d)
	case ErrorCode(err) != CodeUnknownIdentity:
		return nil, false, fmt.Errorf("reading version %d of %s: %w", d.Version, d.PrimaryID, err)
	}
	// Only a new version must be fresh: a stored one may be re-posted later.
	if skew := k.now().Sub(d.TS); skew > ClockSkew || skew < -ClockSkew {
		return nil, false, Errorf(CodeStaleTimestamp, "ts %d is more than %v from the server's clock", d.TS.Unix(), ClockSkew)
	}
	dup, err := k.store.AppendKeyDocument(ctx, d)
	if err != nil {
		return nil, false, fmt.Errorf("appending version %d of %s: %w", d.Version, d.PrimaryID, err)
	}
	if dup {
		return d, true, nil
	}
	k.log.InfoContext(ctx, "published key document", "primary_id", d.PrimaryID, "version", d.Version, "signing_keys", len(d.SigningKeys))
	return d, false, nil
}

// ForkError is the version_taken *Error for d: its version is stored as
// another document.
func ForkError(d *KeyDocument) error {
	return Errorf(CodeVersionTaken, "version %d of %s is already a different document (a fork)", d.Version, d.PrimaryID)
}

// Latest returns primaryID's latest document.
func (k *KeyDirectory) Latest(ctx context.Context, primaryID string) (*KeyDocument, error) {
	if !validPrimaryID(primaryID) {
		return nil, Errorf(CodeUnknownIdentity, "no identity %.64q", primaryID)
	}
	return k.store.LatestKeyDocument(ctx, primaryID)
}

// Log returns up to limit of primaryID's documents from version from on.
// An identity with no documents at all is unknown_identity; one whose chain
// ends before from answers none.
func (k *KeyDirectory) Log(ctx context.Context, primaryID string, from uint64, limit int) ([]*KeyDocument, error) {
	if !validPrimaryID(primaryID) {
		return nil, Errorf(CodeUnknownIdentity, "no identity %.64q", primaryID)
	}
	docs, err := k.store.KeyDocuments(ctx, primaryID, max(from, 1), limit)
	if err != nil {
		return nil, fmt.Errorf("reading the log of %s: %w", primaryID, err)
	}
	if len(docs) == 0 {
		if _, err := k.store.LatestKeyDocument(ctx, primaryID); err != nil {
			return nil, err
		}
	}
	return docs, nil
}

// Ready fails while the store cannot serve.
func (k *KeyDirectory) Ready(ctx context.Context) error { return k.store.Ping(ctx) }
