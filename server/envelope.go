package server

import (
	"encoding/json"
	"strconv"
	"time"

	"kez.lat/chat/server/signing"
)

// Envelope is a stored message as its recipient receives it: the sender's
// signed document, unchanged, plus the order the server gave it.
type Envelope struct {
	Recipient  string    `json:"-"`
	Seq        uint64    `json:"seq"`
	ReceivedAt time.Time `json:"-"`
	// Sender and ID repeat the payload's from and id for the store's
	// idempotency key.
	Sender string `json:"-"`
	ID     string `json:"-"`
	// Prev is the seq of the recipient's envelope stored just before this
	// one, when the store vouches for it (JetStream, whose seqs have gaps,
	// checks it as it stores); 0 when unknown, and then only Seq-1 follows.
	Prev uint64 `json:"-"`
	// Blobs are the ids the payload's blobs member names: the store keeps
	// them while it keeps the envelope.
	Blobs []string `json:"-"`
	// Message is {"payload": <canonical JSON>, "signature": {...}}; the
	// recipient verifies it itself.
	Message json.RawMessage `json:"message"`
	// AcceptedAt is when this process took the envelope to store it (with
	// the monotonic clock, unlike ReceivedAt's seconds), for the delivery
	// latency metric; zero for envelopes read back from the store or
	// published by another replica.
	AcceptedAt time.Time `json:"-"`
}

// MarshalJSON writes received_at as Unix seconds, like every timestamp of
// the protocol, and the message byte for byte: encoding/json would
// HTML-escape it, and the payload is promised in canonical form.
func (e *Envelope) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, len(e.Message)+64)), nil
}

// AppendJSON appends what MarshalJSON returns to b.
func (e *Envelope) AppendJSON(b []byte) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"received_at":`...)
	b = strconv.AppendInt(b, e.ReceivedAt.Unix(), 10)
	b = append(b, `,"message":`...)
	b = append(b, e.Message...)
	return append(b, '}')
}

// envelopePrefix starts a stored message document; the canonical payload
// follows it.
const envelopePrefix = `{"payload":`

// envelopeMessage builds the stored message document from the canonical
// payload and its signature, without re-encoding the payload.
func envelopeMessage(canonical []byte, sig signing.Signature) ([]byte, error) {
	b := make([]byte, 0, len(envelopePrefix)+len(canonical)+signatureSize(sig))
	b = append(b, envelopePrefix...)
	b = append(b, canonical...)
	return appendEnvelopeSignature(b, sig)
}

// signatureSize is about the length of the rest of a stored message
// document after its payload.
func signatureSize(sig signing.Signature) int {
	return len(sig.Alg) + len(sig.Key) + len(sig.Sig) + 48
}

// appendEnvelopeSignature ends a stored message document whose payload b
// holds: the signature member as encoding/json writes it, and the closing
// brace.
func appendEnvelopeSignature(b []byte, sig signing.Signature) ([]byte, error) {
	b = append(b, `,"signature":`...)
	if plain(sig.Alg) && plain(sig.Key) && plain(sig.Sig) {
		// Nothing to escape: what json.Marshal writes, without its
		// allocations.
		b = append(b, `{"alg":"`...)
		b = append(b, sig.Alg...)
		b = append(b, `","key":"`...)
		b = append(b, sig.Key...)
		b = append(b, `","sig":"`...)
		b = append(b, sig.Sig...)
		b = append(b, `"}`...)
	} else {
		sigJSON, err := json.Marshal(sig)
		if err != nil {
			return nil, err
		}
		b = append(b, sigJSON...)
	}
	return append(b, '}'), nil
}

// plain reports whether s holds only base64url characters, which JSON
// strings carry unescaped. Verified keys, signatures and algorithm names
// are plain.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Receipt answers an accepted message.
type Receipt struct {
	To  string `json:"to"`
	Seq uint64 `json:"seq,omitempty"` // absent for a document queued for another server
	ID  string `json:"id"`
	// State is "queued" for a document queued for another server, whose
	// To is then the recipient's address; absent for one stored here.
	State string `json:"state,omitempty"`
}

// RegisterPayload is the signed body of POST /v1/register.
type RegisterPayload struct {
	Type      string `json:"type"`
	Server    string `json:"server"`
	Handle    string `json:"handle"`
	PrimaryID string `json:"primary_id"`
	EncKey    string `json:"enc_key"`
	TS        int64  `json:"ts"`
}

// MessagePayload is the signed body of POST /v1/messages.
type MessagePayload struct {
	Type   string `json:"type"`
	Server string `json:"server"`
	From   string `json:"from"`
	To     string `json:"to"`
	ID     string `json:"id"`
	TS     int64  `json:"ts"`
	CT     string `json:"ct"`
	// Blobs, optional, names 1 to 16 blobs the sender uploaded.
	Blobs []string `json:"blobs,omitempty"`
}
