package jsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BackupStreams are the streams that hold the store's state, in the order a
// backup snapshots them: the envelopes first, then the KV buckets, so that
// every recipient of a backed-up envelope registered before it was sent is
// in the later snapshot of the users, and every blob a backed-up envelope
// names (uploaded before it) is in the later snapshots of the blobs' records
// and objects, unless acknowledged meanwhile; the outbox and federation's
// buckets come after the envelopes too, and before the blobs the queued
// documents name. The writer lease is left out: it lapses by itself and a
// restored store takes a new one.
func BackupStreams() []string {
	return []string{StreamName, OutboxStream, RemoteIDStream, "KV_" + BucketRemotePins, "KV_" + BucketPrivacy, "KV_" + BucketUsers, "KV_" + BucketPrimary, "KV_" + BucketKeys, "KV_" + BucketPush, "KV_" + BucketAcks, "KV_" + BucketReplay,
		"KV_" + BucketBlobRefs, "OBJ_" + BucketBlobs}
}

// snapshotChunk is the chunk size asked of JetStream for snapshots and
// used for restores.
const snapshotChunk = 128 << 10

// apiError is the error of a JetStream API response.
type apiError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s (code %d, err_code %d)", e.Description, e.Code, e.ErrCode)
}

// StreamSnapshotMeta is what JetStream says of a stream when it starts a
// snapshot, and what its restore request needs back: the configuration and
// the state, kept as JetStream wrote them.
type StreamSnapshotMeta struct {
	Config json.RawMessage `json:"config"`
	State  json.RawMessage `json:"state"`
}

// SnapshotStream writes a snapshot of stream (JetStream's own: an
// S2-compressed archive of its message blocks, consistent at one point, with
// every message's checksum checked first) to w, answering each chunk so
// JetStream sends the next (flow control), and returns the stream's
// configuration and state for the restore.
func SnapshotStream(ctx context.Context, nc *nats.Conn, stream string, w io.Writer) (*StreamSnapshotMeta, error) {
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("subscribing for the snapshot of %s: %w", stream, err)
	}
	defer sub.Unsubscribe()
	// A window of chunks may wait here while w is slow.
	sub.SetPendingLimits(-1, 64<<20)
	req, _ := json.Marshal(map[string]any{"deliver_subject": inbox, "chunk_size": snapshotChunk, "jsck": true})
	msg, err := apiRequest(ctx, nc, "$JS.API.STREAM.SNAPSHOT."+stream, req, apiTimeout)
	if err != nil {
		return nil, fmt.Errorf("asking JetStream for a snapshot of %s: %w", stream, err)
	}
	var resp struct {
		StreamSnapshotMeta
		Error *apiError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, fmt.Errorf("snapshot of %s: reading JetStream's answer: %w", stream, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("snapshot of %s: %w", stream, resp.Error)
	}
	for {
		chunk, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return nil, fmt.Errorf("snapshot of %s: waiting for data: %w", stream, err)
		}
		if len(chunk.Data) == 0 {
			// The last message: a status header, 204 when it is complete.
			if status := chunk.Header.Get("Status"); status != "" && status != "204" {
				return nil, fmt.Errorf("snapshot of %s: JetStream ended it with status %s %s", stream, status, chunk.Header.Get("Description"))
			}
			return &resp.StreamSnapshotMeta, nil
		}
		if _, err := w.Write(chunk.Data); err != nil {
			return nil, fmt.Errorf("snapshot of %s: %w", stream, err)
		}
		if chunk.Reply != "" {
			if err := chunk.Respond(nil); err != nil {
				return nil, fmt.Errorf("snapshot of %s: answering a chunk: %w", stream, err)
			}
		}
	}
}

// RestoreStream creates stream from a snapshot SnapshotStream wrote and the
// meta it returned. The stream must not exist. r is read to its end before
// JetStream is told the snapshot is complete, so a reader that fails there
// leaves no stream behind.
func RestoreStream(ctx context.Context, nc *nats.Conn, stream string, meta *StreamSnapshotMeta, r io.Reader) error {
	req, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	msg, err := apiRequest(ctx, nc, "$JS.API.STREAM.RESTORE."+stream, req, apiTimeout)
	if err != nil {
		return fmt.Errorf("asking JetStream to restore %s: %w", stream, err)
	}
	var resp struct {
		DeliverSubject string    `json:"deliver_subject"`
		Error          *apiError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return fmt.Errorf("restore of %s: reading JetStream's answer: %w", stream, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("restore of %s: %w", stream, resp.Error)
	}
	buf := make([]byte, snapshotChunk)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			// Each chunk is answered once JetStream has taken it: one in
			// flight at a time is the flow control.
			ack, err := apiRequest(ctx, nc, resp.DeliverSubject, buf[:n], apiTimeout)
			if err != nil {
				return fmt.Errorf("restore of %s: sending data: %w", stream, err)
			}
			if len(ack.Data) > 0 {
				if err := responseError(ack.Data); err != nil {
					return fmt.Errorf("restore of %s: %w", stream, err)
				}
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return fmt.Errorf("restore of %s: %w", stream, rerr)
		}
	}
	// The empty message ends the snapshot; the answer is the new stream.
	done, err := apiRequest(ctx, nc, resp.DeliverSubject, nil, finishTimeout)
	if err != nil {
		return fmt.Errorf("restore of %s: finishing: %w", stream, err)
	}
	if err := responseError(done.Data); err != nil {
		return fmt.Errorf("restore of %s: %w", stream, err)
	}
	return nil
}

// apiTimeout bounds one JetStream API request or restore chunk;
// finishTimeout the last one of a restore, which JetStream answers once the
// stream is built.
const (
	apiTimeout    = 30 * time.Second
	finishTimeout = 10 * time.Minute
)

func apiRequest(ctx context.Context, nc *nats.Conn, subj string, data []byte, timeout time.Duration) (*nats.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return nc.RequestWithContext(ctx, subj, data)
}

func responseError(data []byte) error {
	var resp struct {
		Error *apiError `json:"error"`
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return fmt.Errorf("reading JetStream's answer %q: %w", data, err)
	}
	if resp.Error != nil {
		return resp.Error
	}
	return nil
}

// StreamMessages reports whether stream exists and how many messages it
// holds.
func StreamMessages(ctx context.Context, nc *nats.Conn, stream string) (exists bool, msgs uint64, err error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return false, 0, err
	}
	s, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("reading stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return false, 0, fmt.Errorf("reading stream %s: %w", stream, err)
	}
	return true, info.State.Msgs, nil
}

// DeleteStream deletes stream (an empty one a restore replaces).
func DeleteStream(ctx context.Context, nc *nats.Conn, stream string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := js.DeleteStream(ctx, stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("deleting stream %s: %w", stream, err)
	}
	return nil
}
