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
	// Message is {"payload": <canonical JSON>, "signature": {...}}; the
	// recipient verifies it itself.
	Message json.RawMessage `json:"message"`
}

// MarshalJSON writes received_at as Unix seconds, like every timestamp of
// the protocol, and the message byte for byte: encoding/json would
// HTML-escape it, and the payload is promised in canonical form.
func (e *Envelope) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, len(e.Message)+64)
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"received_at":`...)
	b = strconv.AppendInt(b, e.ReceivedAt.Unix(), 10)
	b = append(b, `,"message":`...)
	b = append(b, e.Message...)
	return append(b, '}'), nil
}

// envelopeMessage builds the stored message document from the canonical
// payload and its signature, without re-encoding the payload.
func envelopeMessage(canonical []byte, sig signing.Signature) ([]byte, error) {
	sigJSON, err := json.Marshal(sig)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, len(canonical)+len(sigJSON)+28)
	b = append(b, `{"payload":`...)
	b = append(b, canonical...)
	b = append(b, `,"signature":`...)
	b = append(b, sigJSON...)
	return append(b, '}'), nil
}

// Receipt answers an accepted message.
type Receipt struct {
	To  string `json:"to"`
	Seq uint64 `json:"seq"`
	ID  string `json:"id"`
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
}
