package backup

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/nats-io/nats.go"

	"kez.lat/chat/server/jsstore"
)

// JetStream parts hold two objects per stream: <stream>.snapshot, JetStream's
// own snapshot (S2-compressed), and <stream>.json, the configuration and
// state its restore needs.
const (
	snapshotSuffix = ".snapshot"
	metaSuffix     = ".json"
)

// JetStreamSource is the chat server's JetStream store (jsstore): its
// stream of envelopes and its KV buckets.
type JetStreamSource struct {
	NC *nats.Conn
	// TempDir holds each stream's snapshot while it is uploaded
	// (os.TempDir when empty).
	TempDir string
	Log     *slog.Logger
}

func (JetStreamSource) Kind() string { return KindJetStream }

// Snapshot takes JetStream's snapshot of each stream in
// jsstore.BackupStreams's order. Each stream's snapshot is consistent; the
// order makes the set consistent for what restores depend on (see
// BackupStreams). Writes go on meanwhile.
func (s JetStreamSource) Snapshot(ctx context.Context, put func(string, io.Reader) error) error {
	for _, stream := range jsstore.BackupStreams() {
		exists, msgs, err := jsstore.StreamMessages(ctx, s.NC, stream)
		if err != nil {
			return err
		}
		if !exists {
			if stream == jsstore.StreamName {
				return fmt.Errorf("NATS holds no stream %s: is this the chat server's NATS, and has the server run with --store jetstream?", stream)
			}
			s.log().Warn("stream not found, not backed up", "stream", stream)
			continue
		}
		// Spooled to a local file first: JetStream abandons a snapshot whose
		// chunks go unanswered for 5 s, which an upload to a slow bucket
		// would cause.
		f, err := os.CreateTemp(s.TempDir, "kezchat-backup-"+stream+"-")
		if err != nil {
			return fmt.Errorf("making a temporary file for %s: %w", stream, err)
		}
		meta, err := spoolSnapshot(ctx, s.NC, stream, f)
		if err == nil {
			err = put(stream+snapshotSuffix, f)
		}
		f.Close()
		os.Remove(f.Name())
		if err != nil {
			return err
		}
		b, err := json.Marshal(meta)
		if err != nil {
			return err
		}
		if err := put(stream+metaSuffix, strings.NewReader(string(b))); err != nil {
			return err
		}
		s.log().Info("stream snapshot taken", "stream", stream, "messages", msgs)
	}
	return nil
}

func spoolSnapshot(ctx context.Context, nc *nats.Conn, stream string, f *os.File) (*jsstore.StreamSnapshotMeta, error) {
	meta, err := jsstore.SnapshotStream(ctx, nc, stream, f)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return meta, nil
}

func (s JetStreamSource) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// JetStreamTarget is a NATS JetStream to restore the chat server's store
// into. Every chat server replica restores into the same one at once, so
// the restore holds jsstore's restore lock: one restores, the others wait
// for its marker and skip, or take over when it dies.
type JetStreamTarget struct {
	NC *nats.Conn
	// TempDir holds each object while it is checked, before JetStream sees
	// any of it (os.TempDir when empty).
	TempDir string
	// Lock tunes the restore lock (zero: production's lease and wait).
	Lock jsstore.RestoreLockOptions
	Log  *slog.Logger
}

func (JetStreamTarget) Kind() string { return KindJetStream }

// Existing reports the marker of a finished restore. Whether streams hold
// messages is checked under the lock, in Restore: another restore may be
// filling them right now.
func (t JetStreamTarget) Existing(ctx context.Context) (string, bool, error) {
	rec, err := jsstore.ReadRestoreRecord(ctx, t.NC)
	if err != nil || rec == nil || !rec.Done() {
		return "", false, err
	}
	return rec.String(), true, nil
}

// fullStreams lists the streams that hold messages.
func (t JetStreamTarget) fullStreams(ctx context.Context) ([]string, error) {
	var full []string
	for _, stream := range jsstore.BackupStreams() {
		exists, msgs, err := jsstore.StreamMessages(ctx, t.NC, stream)
		if err != nil {
			return nil, err
		}
		if exists && msgs > 0 {
			full = append(full, fmt.Sprintf("stream %s (%d messages)", stream, msgs))
		}
	}
	return full, nil
}

type restoreItem struct {
	stream string
	meta   *jsstore.StreamSnapshotMeta
	data   *os.File
}

// Restore takes the restore lock (or waits for another restore's marker
// and skips), skips when the streams hold messages, downloads and checks
// every object, then replaces each stream that exists but is empty (a
// server that started before the restore made it) and restores it from its
// snapshot, and leaves the marker.
func (t JetStreamTarget) Restore(ctx context.Context, m *Manifest, open func(string) (io.ReadCloser, error)) (err error) {
	var items []restoreItem
	defer func() {
		for _, it := range items {
			if it.data != nil {
				it.data.Close()
				os.Remove(it.data.Name())
			}
		}
	}()
	names := map[string]bool{}
	for _, o := range m.Objects {
		names[o.Name] = true
	}
	replicas := 1
	for _, stream := range jsstore.BackupStreams() {
		if !names[stream+snapshotSuffix] {
			if stream == jsstore.StreamName {
				return fmt.Errorf("the backup holds no snapshot of %s", stream)
			}
			continue
		}
		metaRaw, err := readVerified(open, stream+metaSuffix, maxManifest)
		if err != nil {
			return err
		}
		var meta jsstore.StreamSnapshotMeta
		var cfg struct {
			Replicas int `json:"num_replicas"`
		}
		if err := json.Unmarshal(metaRaw, &meta); err != nil || len(meta.Config) == 0 {
			return fmt.Errorf("%s%s: not a stream's configuration: %v", stream, metaSuffix, err)
		}
		if err := json.Unmarshal(meta.Config, &cfg); err != nil {
			return fmt.Errorf("%s%s: not a stream's configuration: %w", stream, metaSuffix, err)
		}
		if stream == jsstore.StreamName {
			// The lock's bucket is as replicated as the streams it guards.
			replicas = cfg.Replicas
		}
		items = append(items, restoreItem{stream: stream, meta: &meta})
	}

	lockOpts := t.Lock
	if lockOpts.Log == nil {
		lockOpts.Log = t.log()
	}
	lease, done, err := jsstore.AcquireRestore(ctx, t.NC, m.ID, replicas, lockOpts)
	if err != nil {
		return err
	}
	if done != nil {
		return &SkipRestore{What: done.String()}
	}
	finished := false
	defer func() {
		if !finished {
			lease.Release(context.WithoutCancel(ctx))
		}
	}()
	lctx := lease.Context()

	if prev := lease.TookOver; prev != nil && prev.Phase == jsstore.RestoreRestoring {
		// A restore died part-way: its streams are half a store, from
		// the backup, which no chat server has used (none starts before
		// a marker).
		for _, stream := range jsstore.BackupStreams() {
			if exists, msgs, err := jsstore.StreamMessages(lctx, t.NC, stream); err != nil {
				return err
			} else if exists {
				t.log().Warn("deleting a stream a restore that stopped part-way left", "stream", stream, "messages", msgs, "previous", prev.String())
				if err := jsstore.DeleteStream(lctx, t.NC, stream); err != nil {
					return err
				}
			}
		}
	}
	full, err := t.fullStreams(lctx)
	if err != nil {
		return err
	}
	if len(full) > 0 {
		what := strings.Join(full, ", ")
		if err := lease.Finish(ctx, jsstore.RestoreFoundData, what); err != nil {
			return err
		}
		finished = true
		return &SkipRestore{What: what}
	}

	for i := range items {
		it := &items[i]
		f, err := os.CreateTemp(t.TempDir, "kezchat-restore-"+it.stream+"-")
		if err != nil {
			return fmt.Errorf("making a temporary file for %s: %w", it.stream, err)
		}
		it.data = f
		rc, err := open(it.stream + snapshotSuffix)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, rc)
		rc.Close()
		if err != nil {
			return err
		}
		if err := lctx.Err(); err != nil {
			return fmt.Errorf("the restore lock was lost: %w", err)
		}
	}

	if err := lease.Restoring(lctx); err != nil {
		return err
	}
	// A restore cut short takes back the streams it made: the next attempt
	// would otherwise find data, and leave half a store in place. Not when
	// the lock is lost: they may be another restore's by then.
	var restored []string
	defer func() {
		if finished {
			return
		}
		cctx := context.WithoutCancel(ctx)
		if err := lease.Held(cctx); err != nil {
			t.log().Error("not removing the streams of a failed restore", "streams", restored, "err", err)
			return
		}
		for _, stream := range restored {
			if err := jsstore.DeleteStream(cctx, t.NC, stream); err != nil {
				t.log().Error("removing a stream of a failed restore", "stream", stream, "err", err)
			}
		}
	}()
	for _, it := range items {
		exists, msgs, err := jsstore.StreamMessages(lctx, t.NC, it.stream)
		if err != nil {
			return err
		}
		if exists && msgs > 0 {
			return fmt.Errorf("stream %s filled with %d messages during the restore; left alone", it.stream, msgs)
		}
		if exists {
			if err := jsstore.DeleteStream(lctx, t.NC, it.stream); err != nil {
				return err
			}
		}
		if _, err := it.data.Seek(0, io.SeekStart); err != nil {
			return err
		}
		restored = append(restored, it.stream)
		if err := jsstore.RestoreStream(lctx, t.NC, it.stream, it.meta, it.data); err != nil {
			return err
		}
		_, msgs, err = jsstore.StreamMessages(lctx, t.NC, it.stream)
		if err != nil {
			return err
		}
		t.log().Info("stream restored", "stream", it.stream, "messages", msgs)
	}
	if err := lease.Finish(ctx, jsstore.RestoreRestored, ""); err != nil {
		return err
	}
	finished = true
	return nil
}

func (t JetStreamTarget) log() *slog.Logger {
	if t.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Log
}

func readVerified(open func(string) (io.ReadCloser, error), name string, limit int64) ([]byte, error) {
	rc, err := open(name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit))
	if err != nil {
		return nil, err
	}
	// The verifying reader checks at its end.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return nil, err
	}
	return b, nil
}
