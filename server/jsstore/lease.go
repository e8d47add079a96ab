package jsstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The writer lease: the key "holder" of the bucket kez_chat_writer names
// the replica whose writer commits envelopes. It is taken by an atomic
// create, kept by updates at its revision, and lapses with the bucket's
// TTL when its holder stops renewing it; a holder that shuts down deletes
// it, so that another replica takes over at its next poll. Two holders at
// once (a holder paused past the TTL) cost speed, not correctness: each
// batch is checked against the stream's last seq.
const (
	BucketWriter = "kez_chat_writer"
	leaseKey     = "holder"
	leaseTTL     = 3 * time.Second
	leaseRenew   = time.Second
	leasePoll    = 250 * time.Millisecond
)

// holdLease takes, keeps and gives back the writer lease until stop.
func (s *Store) holdLease(kv jetstream.KeyValue) {
	defer close(s.leaseDone)
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := []byte(hex.EncodeToString(b[:]))
	var rev uint64
	var renewed time.Time // the last create or update that took
	var subs []*nats.Subscription
	stepDown := func() {
		s.leader.Store(false)
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
		subs = nil
	}
	takeOver := func(r uint64) {
		renewed = time.Now()
		if s.leader.Load() {
			rev = r
			return
		}
		select { // what the writer knew may be stale
		case s.w.resync <- struct{}{}:
		default:
		}
		for subj, serve := range map[string]nats.MsgHandler{WriterSubject: s.serveForwarded, GroupSubject: s.serveGroup} {
			sub, err := s.nc.QueueSubscribe(subj, writerQueue, serve)
			if err != nil {
				s.log.Warn("serving forwarded envelopes", "subject", subj, "err", err)
				for _, sub := range subs {
					_ = sub.Unsubscribe()
				}
				subs = nil
				return
			}
			subs = append(subs, sub)
		}
		rev = r
		s.leaseTerm.Add(1)
		s.leader.Store(true)
		s.log.Info("holding the writer lease")
	}
	try := func() time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
		defer cancel()
		if s.leader.Load() {
			r, err := kv.Update(ctx, leaseKey, id, rev)
			switch {
			case err == nil:
				rev, renewed = r, time.Now()
				return leaseRenew
			case errors.Is(err, jetstream.ErrKeyExists), time.Since(renewed) > leaseTTL-leaseRenew:
				// Taken by another replica, or about to lapse.
				s.log.Warn("renewing the writer lease; stepping down", "err", err)
				stepDown()
			default: // still ours for a while: try again soon
				s.log.Warn("renewing the writer lease; trying again", "err", err)
			}
			return leasePoll
		}
		r, err := kv.Create(ctx, leaseKey, id)
		if errors.Is(err, jetstream.ErrKeyExists) {
			// Still ours, after a renewal whose answer was lost?
			if e, gerr := kv.Get(ctx, leaseKey); gerr == nil && string(e.Value()) == string(id) {
				r, err = e.Revision(), nil
			}
		}
		if err != nil {
			return leasePoll
		}
		takeOver(r)
		return leaseRenew
	}
	t := time.NewTimer(try())
	defer t.Stop()
	for {
		select {
		case <-t.C:
			t.Reset(try())
		case <-s.stop:
			if s.leader.Load() {
				stepDown()
				ctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
				if err := kv.Delete(ctx, leaseKey, jetstream.LastRevision(rev)); err != nil {
					s.log.Warn("giving back the writer lease", "err", err)
				}
				cancel()
			}
			return
		}
	}
}

// HoldsWriterLease reports whether this replica's writer commits envelopes.
func (s *Store) HoldsWriterLease() bool { return s.leader.Load() }
