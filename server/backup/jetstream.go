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
// into.
type JetStreamTarget struct {
	NC *nats.Conn
	// TempDir holds each object while it is checked, before JetStream sees
	// any of it (os.TempDir when empty).
	TempDir string
	Log     *slog.Logger
}

func (JetStreamTarget) Kind() string { return KindJetStream }

// Existing reports the streams that hold messages.
func (t JetStreamTarget) Existing(ctx context.Context) (string, bool, error) {
	var full []string
	for _, stream := range jsstore.BackupStreams() {
		exists, msgs, err := jsstore.StreamMessages(ctx, t.NC, stream)
		if err != nil {
			return "", false, err
		}
		if exists && msgs > 0 {
			full = append(full, fmt.Sprintf("stream %s (%d messages)", stream, msgs))
		}
	}
	return strings.Join(full, ", "), len(full) > 0, nil
}

// Restore downloads and checks every object first, then replaces each
// stream that exists but is empty (a server that started before the
// restore made it) and restores it from its snapshot.
func (t JetStreamTarget) Restore(ctx context.Context, m *Manifest, open func(string) (io.ReadCloser, error)) error {
	type restoreItem struct {
		stream string
		meta   *jsstore.StreamSnapshotMeta
		data   *os.File
	}
	var items []restoreItem
	defer func() {
		for _, it := range items {
			it.data.Close()
			os.Remove(it.data.Name())
		}
	}()
	names := map[string]bool{}
	for _, o := range m.Objects {
		names[o.Name] = true
	}
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
		if err := json.Unmarshal(metaRaw, &meta); err != nil || len(meta.Config) == 0 {
			return fmt.Errorf("%s%s: not a stream's configuration: %v", stream, metaSuffix, err)
		}
		f, err := os.CreateTemp(t.TempDir, "kezchat-restore-"+stream+"-")
		if err != nil {
			return fmt.Errorf("making a temporary file for %s: %w", stream, err)
		}
		items = append(items, restoreItem{stream: stream, meta: &meta, data: f})
		rc, err := open(stream + snapshotSuffix)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	// A restore cut short takes back the streams it made: the next attempt
	// would otherwise find data, and leave half a store in place.
	var restored []string
	ok := false
	defer func() {
		if ok {
			return
		}
		for _, stream := range restored {
			if err := jsstore.DeleteStream(context.WithoutCancel(ctx), t.NC, stream); err != nil && t.Log != nil {
				t.Log.Error("removing a stream of a failed restore", "stream", stream, "err", err)
			}
		}
	}()
	for _, it := range items {
		exists, msgs, err := jsstore.StreamMessages(ctx, t.NC, it.stream)
		if err != nil {
			return err
		}
		if exists && msgs > 0 {
			return fmt.Errorf("stream %s filled with %d messages during the restore; left alone", it.stream, msgs)
		}
		if exists {
			if err := jsstore.DeleteStream(ctx, t.NC, it.stream); err != nil {
				return err
			}
		}
		if _, err := it.data.Seek(0, io.SeekStart); err != nil {
			return err
		}
		restored = append(restored, it.stream)
		if err := jsstore.RestoreStream(ctx, t.NC, it.stream, it.meta, it.data); err != nil {
			return err
		}
		_, msgs, err = jsstore.StreamMessages(ctx, t.NC, it.stream)
		if err != nil {
			return err
		}
		if t.Log != nil {
			t.Log.Info("stream restored", "stream", it.stream, "messages", msgs)
		}
	}
	ok = true
	return nil
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
