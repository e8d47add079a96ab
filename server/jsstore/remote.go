package jsstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"kez.lat/chat/server"
	"kez.lat/chat/server/natsbus"
)

// What a server keeps of people on other servers: their message ids for
// the federation window (the stream's duplicate window is 15 minutes), the
// first identity it accepted per address, and its own people's privacy
// settings.

// remoteSender reports whether sender is a person on another server.
func remoteSender(sender string) bool { return strings.Contains(sender, "@") }

// remoteID is a remote sender's message as stored, the message on
// kez.chat.remoteid.<idKey(sender, id)> of RemoteIDStream.
type remoteID struct {
	To     string `json:"to"`
	Seq    uint64 `json:"seq"`
	At     int64  `json:"at"`
	Digest string `json:"digest"`
}

// storedRemote answers e, a remote sender's envelope whose message has
// digest (hex SHA-256, as appendRequest's), from RemoteIDStream:
// found (e's seq and time set to the stored one's) when its (sender, id)
// was stored within the window with the same message; message_id_conflict
// with another.
func (s *Store) storedRemote(ctx context.Context, e *server.Envelope, digest string) (bool, error) {
	m, err := s.fed.remoteIDs.GetLastMsgForSubject(ctx, remoteIDPrefix+idKey(e.Sender, e.ID))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("looking up message id %q from %s: %w", e.ID, e.Sender, err)
	}
	var rec remoteID
	if err := json.Unmarshal(m.Data, &rec); err != nil {
		return false, fmt.Errorf("decoding message id %q from %s: %w", e.ID, e.Sender, err)
	}
	if rec.Digest != digest || rec.To != e.Recipient {
		return false, server.Errorf(server.CodeMessageIDConflict,
			"message id %q from %s was already used for a different message", e.ID, e.Sender)
	}
	e.Seq, e.Prev, e.ReceivedAt = rec.Seq, 0, time.Unix(rec.At, 0)
	return true, nil
}

// rememberRemote records reqs, remote senders' envelopes just stored, for
// the window, and waits for JetStream to acknowledge them. A failure is
// logged: the message stream's own duplicate window still answers a retry
// within 15 minutes.
func (s *Store) rememberRemote(ctx context.Context, reqs []*appendRequest) {
	if len(reqs) == 0 {
		return
	}
	msgs := make([]*nats.Msg, len(reqs))
	for i, r := range reqs {
		data, _ := json.Marshal(remoteID{To: r.recipient, Seq: r.seq, At: r.at, Digest: r.digest})
		msgs[i] = &nats.Msg{Subject: remoteIDPrefix + r.key, Data: data, Header: nats.Header{}}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
	defer cancel()
	// Each record stands alone: published at once, in a pipeline, and
	// not as an atomic batch, whose staging costs JetStream milliseconds.
	acks := make([]jetstream.PubAckFuture, 0, len(msgs))
	var err error
	for _, m := range msgs {
		var ack jetstream.PubAckFuture
		if ack, err = s.js.PublishMsgAsync(m); err != nil {
			break
		}
		acks = append(acks, ack)
	}
	for _, ack := range acks {
		select {
		case <-ack.Ok():
		case e := <-ack.Err():
			err = e
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		s.log.Warn("recording remote senders' message ids", "from", reqs[0].sender, "envelopes", len(reqs), "err", err)
	}
}

// remotePin is a pin in BucketRemotePins.
type remotePin struct {
	Address   string `json:"address"`
	PrimaryID string `json:"primary_id"`
	Alg       string `json:"alg"`
	Key       []byte `json:"key"`
	PinnedAt  int64  `json:"pinned_at"`
}

// pinKey is an address's key in BucketRemotePins (addresses hold
// characters keys may not).
func pinKey(address string) string {
	h := sha256.Sum256([]byte(address))
	return hex.EncodeToString(h[:20])
}

// PinRemote creates pin's key unless it exists, and returns the pin
// stored; see server.FederationStore.
func (s *Store) PinRemote(ctx context.Context, pin *server.RemotePin) (*server.RemotePin, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	key := pinKey(pin.Address)
	val, _ := json.Marshal(remotePin{Address: pin.Address, PrimaryID: pin.PrimaryID, Alg: pin.Alg, Key: pin.Key, PinnedAt: s.now().Unix()})
	_, err := s.fed.pins.Create(ctx, key, val)
	if err == nil {
		return &server.RemotePin{Address: pin.Address, PrimaryID: pin.PrimaryID, Alg: pin.Alg, Key: slices.Clone(pin.Key)}, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, fmt.Errorf("pinning %s: %w", pin.Address, err)
	}
	entry, err := s.fed.pins.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading the pin of %s: %w", pin.Address, err)
	}
	var rec remotePin
	if err := json.Unmarshal(entry.Value(), &rec); err != nil {
		return nil, fmt.Errorf("decoding the pin of %s: %w", pin.Address, err)
	}
	return &server.RemotePin{Address: rec.Address, PrimaryID: rec.PrimaryID, Alg: rec.Alg, Key: rec.Key}, nil
}

// Unpin deletes address's pin; see server.FederationStore.
func (s *Store) Unpin(ctx context.Context, address string) (bool, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	return unpin(ctx, s.fed.pins, address)
}

// UnpinRemote deletes address's pin from the store on nc's JetStream
// without opening the store (which would compete for its writer lease):
// `kezchat unpin` beside running replicas.
func UnpinRemote(ctx context.Context, nc *nats.Conn, address string) (bool, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return false, fmt.Errorf("JetStream: %w", err)
	}
	kv, err := js.KeyValue(ctx, BucketRemotePins)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return false, nil // no server federated on this store yet
	}
	if err != nil {
		return false, fmt.Errorf("opening bucket %s: %w", BucketRemotePins, err)
	}
	return unpin(ctx, kv, address)
}

func unpin(ctx context.Context, pins jetstream.KeyValue, address string) (bool, error) {
	key := pinKey(address)
	entry, err := pins.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("reading the pin of %s: %w", address, err)
	}
	if err := pins.Delete(ctx, key, jetstream.LastRevision(entry.Revision())); err != nil {
		return false, fmt.Errorf("unpinning %s: %w", address, err)
	}
	return true, nil
}

// Privacy reads handle's setting; see server.FederationStore.
func (s *Store) Privacy(ctx context.Context, handle string) (*server.Privacy, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	entry, err := s.fed.privacy.Get(ctx, natsbus.Token(handle))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return &server.Privacy{Strangers: server.StrangersAccept, Known: []string{}, Blocked: []string{}}, nil
	case err != nil:
		return nil, fmt.Errorf("reading the privacy setting of %s: %w", handle, err)
	}
	var p server.Privacy
	if err := json.Unmarshal(entry.Value(), &p); err != nil {
		return nil, fmt.Errorf("decoding the privacy setting of %s: %w", handle, err)
	}
	return &p, nil
}

// SavePrivacy replaces handle's setting.
func (s *Store) SavePrivacy(ctx context.Context, handle string, p *server.Privacy) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	val, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encoding the privacy setting of %s: %w", handle, err)
	}
	if _, err := s.fed.privacy.Put(ctx, natsbus.Token(handle), val); err != nil {
		return fmt.Errorf("saving the privacy setting of %s: %w", handle, err)
	}
	return nil
}
