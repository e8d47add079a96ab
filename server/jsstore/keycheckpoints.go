package jsstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// A checkpoint's value is its version (8 bytes, big-endian), then the
// document.

// KeyCheckpoint returns the highest key document of primaryID a replica
// verified, nil when there is none.
func (s *Store) KeyCheckpoint(ctx context.Context, primaryID string) ([]byte, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	e, err := s.keys.Get(ctx, primaryID)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("reading the key checkpoint of %s: %w", primaryID, err)
	case len(e.Value()) < 8:
		return nil, fmt.Errorf("reading the key checkpoint of %s: %d bytes", primaryID, len(e.Value()))
	}
	return e.Value()[8:], nil
}

// SaveKeyCheckpoint stores doc as primaryID's checkpoint unless one of a
// version as high is stored, with optimistic concurrency: of two replicas
// saving at once, the higher version stays.
func (s *Store) SaveKeyCheckpoint(ctx context.Context, primaryID string, version uint64, doc []byte) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	val := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(doc)), version)
	val = append(val, doc...)
	for {
		e, err := s.keys.Get(ctx, primaryID)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = s.keys.Create(ctx, primaryID, val)
		case err != nil:
			return fmt.Errorf("reading the key checkpoint of %s: %w", primaryID, err)
		case len(e.Value()) >= 8 && binary.BigEndian.Uint64(e.Value()) >= version:
			return nil
		default:
			_, err = s.keys.Update(ctx, primaryID, val, e.Revision())
		}
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			return nil
		case errors.Is(err, jetstream.ErrKeyExists), errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
			continue // another replica saved meanwhile: look again
		default:
			return fmt.Errorf("saving the key checkpoint of %s at version %d: %w", primaryID, version, err)
		}
	}
}
