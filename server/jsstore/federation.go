package jsstore

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"kez.lat/chat/server"
	"kez.lat/chat/server/natsbus"
)

// Federation's state on JetStream (server.FederationStore).
//
// The outbox is the stream KEZ_CHAT_OUTBOX, whose subjects under
// kez.chat.outbox. are:
//
//   - doc.<sender>.<domain>: the queued documents' headers (to, id, size,
//     ...) without a body, in queue order per sender and domain, each
//     followed at the next seq by its body on body.<sender>.<domain>, so
//     that listing and scheduling read no bodies. A send's documents for
//     one domain (a unit) are consecutive pairs, published in one atomic
//     batch; a unit's id is its first document's seq, and each document
//     says how many its unit holds (Kez-Unit-Docs).
//   - head.<sender>.<domain>: the queue's state, the latest message only
//     (rollup): the seq up to which its documents are delivered or failed
//     (they are purged after), and the attempts at its head unit.
//   - queued.<sender> and finished.<sender>: the documents and bytes the
//     sender ever queued, and those delivered or failed since, the latest
//     message only; what is queued now, held to server.OutboxLimits, is
//     the difference. Sends change the first and deliveries the second,
//     so the two never wait for each other.
//   - id.<sender>.<hash of the message id>: the sender's message ids, so
//     that an id is queued once.
//   - done.<sender>: a record per unit delivered or failed, what the
//     sender's outbox shows for a day.
//
// JetStream has no transactions, but an atomic batch with an expected last
// seq per subject is one: a send is one batch that expects queued.<sender>
// at the seq it read (and each new id absent), a delivery one that expects
// finished.<sender> and head.<sender>.<domain>, so of two replicas making
// the same change at once one is refused and reads again. Batches of
// different senders are committed together (groupCommitter), so that
// concurrent sends share JetStream's fsyncs. Ids, done records and heads
// carry a per-message TTL (Nats-TTL): the stream keeps what is still
// queued, and the counts, for as long as it takes.
//
// One replica at a time delivers: the holder of the writer lease (the
// courier's Active), woken over NATS when another replica queues.
const (
	OutboxStream = "KEZ_CHAT_OUTBOX"
	outboxPrefix = "kez.chat.outbox."
	// idTTL: an id answers a retry while its document may still be
	// queued, and for the day the outbox shows it after.
	idTTL         = server.FederationWindow + server.OutboxKeep + time.Hour
	doneTTL       = server.OutboxKeep + time.Hour
	headTTL       = idTTL
	outboxQueued  = "kez.chat.federation.queued"
	outboxCASRuns = 16

	// RemoteIDStream keeps remote senders' message ids, on subjects
	// kez.chat.remoteid.<idKey>, for the federation window.
	RemoteIDStream   = "KEZ_CHAT_REMOTE_IDS"
	remoteIDPrefix   = "kez.chat.remoteid."
	BucketRemotePins = "kez_chat_remote_pins"
	BucketPrivacy    = "kez_chat_privacy"
)

// Headers of a queued document.
const (
	hdrDomain   = "Kez-Domain"
	hdrTo       = "Kez-To"
	hdrUnitDocs = "Kez-Unit-Docs"
	hdrExpires  = "Kez-Expires"
	hdrQueuedAt = "Kez-Queued-At"
	hdrSize     = "Kez-Size"
)

func outboxSubject(kind string, tokens ...string) string {
	return outboxPrefix + kind + "." + strings.Join(tokens, ".")
}

func docSubject(sender, domain string) string {
	return outboxSubject("doc", natsbus.Token(sender), natsbus.Token(domain))
}

func bodySubject(sender, domain string) string {
	return outboxSubject("body", natsbus.Token(sender), natsbus.Token(domain))
}

func headSubject(sender, domain string) string {
	return outboxSubject("head", natsbus.Token(sender), natsbus.Token(domain))
}

// queueSubject is the kind ("head", "body") subject of the queue whose
// documents' subject is q.
func queueSubject(q, kind string) string {
	return outboxPrefix + kind + "." + strings.TrimPrefix(q, outboxPrefix+"doc.")
}

func queuedSubject(sender string) string   { return outboxSubject("queued", natsbus.Token(sender)) }
func finishedSubject(sender string) string { return outboxSubject("finished", natsbus.Token(sender)) }
func doneSubject(sender string) string     { return outboxSubject("done", natsbus.Token(sender)) }
func outboxIDSubject(sender, id string) string {
	return outboxSubject("id", natsbus.Token(sender), idKey(sender, id))
}

// outboxCount is queued.<sender> or finished.<sender>.
type outboxCount struct {
	Docs  int64 `json:"docs"`
	Bytes int64 `json:"bytes"`
}

// outboxHead is head.<sender>.<domain>.
type outboxHead struct {
	// DoneThrough: the queue's documents up to this seq are delivered or
	// failed.
	DoneThrough uint64 `json:"done_through"`
	// Unit is the head unit that Attempts, NextAt and the error are of.
	Unit     uint64 `json:"unit,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
	NextAt   int64  `json:"next_at,omitempty"`
	At       int64  `json:"at,omitempty"`
	Code     string `json:"code,omitempty"`
	Message  string `json:"message,omitempty"`
}

// outboxID is id.<sender>.<hash>.
type outboxID struct {
	Digest string `json:"digest"`
}

// outboxDone is a record of done.<sender>.
type outboxDone struct {
	Unit     uint64          `json:"unit"`
	Domain   string          `json:"domain"`
	State    string          `json:"state"`
	Attempts int             `json:"attempts"`
	QueuedAt int64           `json:"queued_at"`
	At       int64           `json:"at"`
	Code     string          `json:"code,omitempty"`
	Message  string          `json:"message,omitempty"`
	Docs     []outboxDoneDoc `json:"docs"`
}

type outboxDoneDoc struct {
	To string `json:"to"`
	ID string `json:"id"`
}

var _ server.FederationStore = (*Store)(nil)

// federationState is the Store's part for federation.
type federationState struct {
	outbox        jetstream.Stream
	remoteIDs     jetstream.Stream
	pins, privacy jetstream.KeyValue
	// heads is what the courier's replica knows of each queue (doc
	// subject) it read, so that DueDeliveries reads only the queues that
	// changed: a queue's head changes by FinishDelivery alone (sends add
	// behind it), which this replica runs. term is the writer lease's
	// term it was read in: another term, another courier meanwhile.
	mu      sync.Mutex
	heads   map[string]*queueState
	term    uint64
	batches atomic.Uint64 // names this replica's outbox batches
	// outboxCommits commits the outbox's batches.
	outboxCommits *groupCommitter
	locks         senderLocks // "queued:" or "finished:" and the sender
}

// setupFederation creates or updates the outbox stream and federation's
// buckets.
func (s *Store) setupFederation(ctx context.Context, cfg Config, storage jetstream.StorageType,
	bucket func(name, desc string, ttl time.Duration) (jetstream.KeyValue, error)) error {
	var err error
	if s.fed.outbox, err = s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:               OutboxStream,
		Description:        "kez-chat documents queued for other servers, and their queues' state",
		Subjects:           []string{outboxPrefix + ">"},
		Storage:            storage,
		Replicas:           cfg.Replicas,
		AllowMsgTTL:        true,
		MaxBytes:           -1,
		MaxMsgs:            -1,
		MaxMsgsPerSubject:  -1,
		AllowAtomicPublish: true,
		AllowRollup:        true,
		AllowDirect:        true,
		Discard:            jetstream.DiscardNew,
	}); err != nil {
		return fmt.Errorf("creating stream %s: %w", OutboxStream, err)
	}
	if s.fed.remoteIDs, err = s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              RemoteIDStream,
		Description:       "kez-chat message ids of senders on other servers, for the federation window",
		Subjects:          []string{remoteIDPrefix + "*"},
		Storage:           storage,
		Replicas:          cfg.Replicas,
		MaxAge:            server.RemoteIDWindow,
		MaxBytes:          -1,
		MaxMsgs:           -1,
		MaxMsgsPerSubject: 1,
		AllowDirect:       true,
		Discard:           jetstream.DiscardOld,
	}); err != nil {
		return fmt.Errorf("creating stream %s: %w", RemoteIDStream, err)
	}
	if s.fed.pins, err = bucket(BucketRemotePins, "kez-chat first identity accepted per address on another server", 0); err != nil {
		return err
	}
	if s.fed.privacy, err = bucket(BucketPrivacy, "kez-chat who may write to each handle from other servers", 0); err != nil {
		return err
	}
	s.fed.heads = make(map[string]*queueState)
	s.fed.outboxCommits = newGroupCommitter(s)
	return nil
}

// lastOutboxMsg returns subject's latest message and its seq; nil and 0
// when it has none.
func (s *Store) lastOutboxMsg(ctx context.Context, subject string, v any) (uint64, error) {
	m, err := s.fed.outbox.GetLastMsgForSubject(ctx, subject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("reading %s: %w", subject, err)
	}
	if err := json.Unmarshal(m.Data, v); err != nil {
		return 0, fmt.Errorf("decoding %s: %w", subject, err)
	}
	return m.Sequence, nil
}

// record is a JSON message for subject that replaces the subject's
// earlier ones and is stored only if the subject's last seq is still
// last (0: none); it lives for life (0: until replaced).
func record(subject string, v any, last uint64, life time.Duration) *nats.Msg {
	data, _ := json.Marshal(v)
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{
		jetstream.MsgRollup:                 {jetstream.MsgRollupSubject},
		jetstream.ExpectedLastSubjSeqHeader: {strconv.FormatUint(last, 10)},
	}}
	if life > 0 {
		m.Header.Set(jetstream.MsgTTLHeader, ttl(life))
	}
	return m
}

// ttl is a Nats-TTL header's value: whole seconds.
func ttl(d time.Duration) string { return strconv.FormatInt(int64(d/time.Second), 10) + "s" }

// errOutboxChanged: a batch expected a subject's last seq that another
// replica moved; the change is read and made again.
var errOutboxChanged = errors.New("the outbox changed meanwhile")

// publishBatch stores msgs, all of the outbox, as one atomic batch.
func (s *Store) publishBatch(ctx context.Context, msgs []*nats.Msg) error {
	_, err := publishAtomic(ctx, s.nc, s.w.prefix+"outbox-"+strconv.FormatUint(s.fed.batches.Add(1), 36), msgs)
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &apiErr):
		return fmt.Errorf("writing to the outbox: %w", err)
	case wrongLastSeq(apiErr):
		return errOutboxChanged
	case storageFull(apiErr):
		s.full.Add(1)
		return &server.Error{Code: server.CodeStorageFull, RetryAfter: time.Minute, Message: "the message store is full; try again later"}
	default:
		return fmt.Errorf("writing to the outbox: %w", apiErr)
	}
}

// wrongLastSeq reports whether JetStream refused a message for an expected
// last seq (per subject) that another write moved: the code differs on a
// replicated stream.
func wrongLastSeq(e *jetstream.APIError) bool {
	return e.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || e.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// Enqueue stores docs in the outbox in one atomic batch: the sender's new
// count, a record per new message id (expected absent) and the documents,
// grouped in one unit per domain; see server.FederationStore.
func (s *Store) Enqueue(ctx context.Context, docs []*server.OutboundDoc, limits server.OutboxLimits) ([]bool, error) {
	if len(docs) == 0 {
		return nil, nil
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	sender := docs[0].Sender
	digests := make([]string, len(docs))
	for i, d := range docs {
		sum := sha256.Sum256(d.Message)
		digests[i] = hex.EncodeToString(sum[:])
	}
	blobsKept := false
	defer s.fed.locks.lock("queued:" + sender)()
	for run := 0; ; run++ {
		dups, err := s.queuedIDs(ctx, docs, digests)
		if err != nil {
			return nil, fmt.Errorf("queueing %d documents: %w", len(docs), err)
		}
		var queued, finished outboxCount
		queuedSeq, err := s.lastOutboxMsg(ctx, queuedSubject(sender), &queued)
		if err == nil {
			// Read after queued: a delivery recorded in between only
			// makes the count higher than it is, never lower.
			_, err = s.lastOutboxMsg(ctx, finishedSubject(sender), &finished)
		}
		if err != nil {
			return nil, fmt.Errorf("queueing %d documents: %w", len(docs), err)
		}
		count := outboxCount{Docs: max(queued.Docs-finished.Docs, 0), Bytes: max(queued.Bytes-finished.Bytes, 0)}
		var newDocs, newBytes int64
		for i, d := range docs {
			if !dups[i] {
				newDocs++
				newBytes += int64(len(d.Message))
			}
		}
		if newDocs == 0 {
			return dups, nil
		}
		if (limits.MaxDocs > 0 && count.Docs+newDocs > int64(limits.MaxDocs)) || (limits.MaxBytes > 0 && count.Bytes+newBytes > limits.MaxBytes) {
			return nil, &server.Error{Code: server.CodeOutboxFull, RetryAfter: time.Minute,
				Message: fmt.Sprintf("%s has %d documents of %d bytes queued for other servers", sender, count.Docs, count.Bytes)}
		}
		if !blobsKept {
			if err := s.keepFederatedBlobs(ctx, docs, dups); err != nil {
				return nil, err
			}
			blobsKept = true
		}
		// Ever queued: never less than ever finished, whatever a count
		// record went through.
		ever := outboxCount{Docs: max(queued.Docs, finished.Docs) + newDocs, Bytes: max(queued.Bytes, finished.Bytes) + newBytes}
		msgs := []*nats.Msg{record(queuedSubject(sender), ever, queuedSeq, 0)}
		for i, d := range docs {
			if !dups[i] {
				data, _ := json.Marshal(outboxID{Digest: digests[i]})
				msgs = append(msgs, &nats.Msg{Subject: outboxIDSubject(sender, d.ID), Data: data,
					Header: nats.Header{jetstream.ExpectedLastSubjSeqHeader: {"0"}, jetstream.MsgTTLHeader: {ttl(idTTL)}}})
			}
		}
		msgs = append(msgs, unitMsgs(docs, dups, s.now())...)
		err = s.fed.outboxCommits.commit(ctx, msgs)
		switch {
		case err == nil:
			if perr := s.nc.Publish(outboxQueued, nil); perr != nil {
				s.log.Debug("waking the courier", "err", perr) // it polls anyway
			}
			return dups, nil
		case errors.Is(err, errOutboxChanged) && run < outboxCASRuns && ctx.Err() == nil:
			continue
		case errors.Is(err, errOutboxChanged):
			return nil, unavailable("the outbox keeps changing under this send")
		case errors.As(err, new(*server.Error)):
			return nil, err
		default:
			return nil, fmt.Errorf("queueing %d documents: %w", len(docs), err)
		}
	}
}

// queuedIDs reports which of docs are queued already (dups), and refuses
// with message_id_conflict one whose id is queued with another message.
func (s *Store) queuedIDs(ctx context.Context, docs []*server.OutboundDoc, digests []string) ([]bool, error) {
	dups := make([]bool, len(docs))
	seen := make(map[string]int, len(docs))
	for i, d := range docs {
		conflict := server.AtIndex(server.Errorf(server.CodeMessageIDConflict,
			"message id %q from %s was already used for a different message", d.ID, d.Sender), i)
		if j, ok := seen[d.ID]; ok { // twice in one call: the first is the one queued
			if digests[j] != digests[i] {
				return nil, conflict
			}
			dups[i] = true
			continue
		}
		seen[d.ID] = i
		var rec outboxID
		seq, err := s.lastOutboxMsg(ctx, outboxIDSubject(d.Sender, d.ID), &rec)
		switch {
		case err != nil:
			return nil, err
		case seq == 0:
		case rec.Digest == digests[i]:
			dups[i] = true
		default:
			return nil, conflict
		}
	}
	return dups, nil
}

// keepFederatedBlobs checks that the blobs the new docs name are their
// sender's, and marks them kept until the retention: their readers on
// other servers are not known.
func (s *Store) keepFederatedBlobs(ctx context.Context, docs []*server.OutboundDoc, dups []bool) error {
	for i, d := range docs {
		if dups[i] {
			continue
		}
		for _, id := range d.Blobs {
			err := s.updateRecord(ctx, id, func(rec *blobRecord) (bool, error) {
				if rec.Uploader != d.Sender {
					return false, server.UnknownBlob(id)
				}
				if rec.Federated && rec.Referenced {
					return false, nil
				}
				rec.Federated, rec.Referenced = true, true
				return true, nil
			})
			if server.ErrorCode(err) == server.CodeUnknownBlob {
				return server.AtIndex(server.Errorf(server.CodeUnknownBlob, "no blob %q uploaded by %s", id, d.Sender), i)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// unitMsgs is the new documents of docs as messages, one unit per domain
// in the order the domains first appear, each unit's documents
// consecutive.
func unitMsgs(docs []*server.OutboundDoc, dups []bool, now time.Time) []*nats.Msg {
	var domains []string
	units := map[string][]*server.OutboundDoc{}
	for i, d := range docs {
		if dups[i] {
			continue
		}
		if _, ok := units[d.Domain]; !ok {
			domains = append(domains, d.Domain)
		}
		units[d.Domain] = append(units[d.Domain], d)
	}
	var msgs []*nats.Msg
	for _, domain := range domains {
		unit := units[domain]
		expires := unit[0].TS.Add(server.FederationWindow)
		for _, d := range unit {
			if e := d.TS.Add(server.FederationWindow); e.Before(expires) {
				expires = e
			}
		}
		for _, d := range unit {
			msgs = append(msgs, &nats.Msg{Subject: docSubject(d.Sender, domain), Header: nats.Header{
				hdrFrom:     {d.Sender},
				hdrDomain:   {domain},
				hdrTo:       {d.Recipient},
				hdrID:       {d.ID},
				hdrSize:     {strconv.Itoa(len(d.Message))},
				hdrUnitDocs: {strconv.Itoa(len(unit))},
				hdrExpires:  {strconv.FormatInt(expires.Unix(), 10)},
				hdrQueuedAt: {strconv.FormatInt(now.Unix(), 10)},
			}}, &nats.Msg{Subject: bodySubject(d.Sender, domain), Data: d.Message, Header: nats.Header{}})
		}
	}
	return msgs
}

// queuedDoc is a document of a queue as read back, without its body.
type queuedDoc struct {
	seq                    uint64
	sender, domain, to, id string
	unitDocs, size         int
	expires, queuedAt      int64
}

func messageSeq(m *nats.Msg) (uint64, error) {
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("a message without its seq: %w", err)
	}
	return seq, nil
}

func newQueuedDoc(seq uint64, h nats.Header) (*queuedDoc, error) {
	n, err := strconv.Atoi(h.Get(hdrUnitDocs))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("queued document %d: bad %s %q", seq, hdrUnitDocs, h.Get(hdrUnitDocs))
	}
	size, _ := strconv.Atoi(h.Get(hdrSize))
	expires, _ := strconv.ParseInt(h.Get(hdrExpires), 10, 64)
	queued, _ := strconv.ParseInt(h.Get(hdrQueuedAt), 10, 64)
	return &queuedDoc{seq: seq, sender: h.Get(hdrFrom), domain: h.Get(hdrDomain), to: h.Get(hdrTo), id: h.Get(hdrID),
		unitDocs: n, size: size, expires: expires, queuedAt: queued}, nil
}

// readQueue reads up to batch documents (headers) of the queue subject
// from seq on, in order, with one batch direct get.
func (s *Store) readQueue(ctx context.Context, subject string, seq uint64, batch int) ([]*queuedDoc, error) {
	var docs []*queuedDoc
	err := s.directBatch(ctx, OutboxStream, directGet{Seq: seq, NextFor: subject, Batch: batch}, batch, func(m *nats.Msg) (bool, error) {
		seq, err := messageSeq(m)
		if err != nil {
			return false, err
		}
		d, err := newQueuedDoc(seq, m.Header)
		if err != nil {
			return false, err
		}
		docs = append(docs, d)
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the queue %s: %w", subject, err)
	}
	return docs, nil
}

// queueState is a queue as the courier last read it.
type queueState struct {
	head *server.Delivery // nil: nothing queued after the head record's done_through
	// notBefore: the head waits for its next attempt until then.
	notBefore time.Time
	// msgs is the subject's message count when it was found empty: more
	// means documents were queued since.
	msgs uint64
	// unpurged counts the documents delivered or failed since the
	// subject was last purged: purges go in bulk, the head record's
	// done_through hides what waits for one.
	unpurged int
}

// purgeEvery is how many finished documents of a queue wait for a purge.
const purgeEvery = 128

// DueDeliveries lists the queues that hold documents and reads the head
// of those it does not know; see server.FederationStore.
func (s *Store) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]*server.Delivery, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	info, err := s.fed.outbox.Info(ctx, jetstream.WithSubjectFilter(outboxPrefix+"doc.>"))
	if err != nil {
		return nil, fmt.Errorf("listing the outbox's queues: %w", err)
	}
	s.fed.mu.Lock()
	if term := s.leaseTerm.Load(); term != s.fed.term {
		clear(s.fed.heads)
		s.fed.term = term
	}
	for q := range s.fed.heads {
		if _, ok := info.State.Subjects[q]; !ok {
			delete(s.fed.heads, q)
		}
	}
	s.fed.mu.Unlock()
	var ds []*server.Delivery
	for q, msgs := range info.State.Subjects {
		// A delivery finishing meanwhile changes the state: it is read
		// under the lock, and copied.
		s.fed.mu.Lock()
		var head *server.Delivery
		var notBefore time.Time
		st := s.fed.heads[q]
		known := st != nil && (st.head != nil || msgs == st.msgs)
		if known && st.head != nil {
			d := *st.head
			head, notBefore = &d, st.notBefore
		}
		s.fed.mu.Unlock()
		if !known {
			if head, notBefore, err = s.readQueueState(ctx, q, msgs); err != nil {
				return nil, err
			}
		}
		if head != nil && !notBefore.After(now) {
			ds = append(ds, head)
		}
	}
	slices.SortFunc(ds, func(a, b *server.Delivery) int { return cmp.Compare(a.Unit, b.Unit) })
	if len(ds) > limit {
		ds = ds[:limit]
	}
	return ds, nil
}

// readQueueState reads queue q's head record and first document after it,
// remembers them, and returns a copy of the head unit and when it is due;
// a queue with nothing after it is purged.
func (s *Store) readQueueState(ctx context.Context, q string, msgs uint64) (*server.Delivery, time.Time, error) {
	var head outboxHead
	if _, err := s.lastOutboxMsg(ctx, queueSubject(q, "head"), &head); err != nil {
		return nil, time.Time{}, err
	}
	docs, err := s.readQueue(ctx, q, head.DoneThrough+1, 1)
	if err != nil {
		return nil, time.Time{}, err
	}
	st := &queueState{msgs: msgs}
	if len(docs) == 0 {
		// Finished documents only: purged now, so the queue is listed no
		// more.
		s.purgeQueue(ctx, q, head.DoneThrough)
	} else {
		first := docs[0]
		st.head = &server.Delivery{Unit: int64(first.seq), Domain: first.domain, Sender: first.sender, Expires: time.Unix(first.expires, 0)}
		if head.Unit == first.seq {
			st.head.Attempts = head.Attempts
			st.notBefore = time.Unix(head.NextAt, 0)
		}
	}
	var d *server.Delivery
	if st.head != nil {
		c := *st.head
		d = &c
	}
	s.fed.mu.Lock()
	if old := s.fed.heads[q]; old != nil && len(docs) > 0 {
		st.unpurged = old.unpurged
	}
	s.fed.heads[q] = st
	s.fed.mu.Unlock()
	return d, st.notBefore, nil
}

// DeliveryMessages reads the headers of d's unit and the units behind it,
// takes the whole ones that fit (only the first, alone), then reads their
// bodies; see server.FederationStore.
func (s *Store) DeliveryMessages(ctx context.Context, d *server.Delivery, alone bool, maxDocs int, maxBytes int64) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	docs, err := s.readQueue(ctx, docSubject(d.Sender, d.Domain), uint64(d.Unit), max(maxDocs+1, server.MaxBatchDocuments))
	if err != nil {
		return err
	}
	d.Units, d.Messages = nil, nil
	var take []*queuedDoc
	var size int64
	for i := 0; i < len(docs); {
		n := docs[i].unitDocs
		if i+n > len(docs) { // cut short by the read: not whole
			break
		}
		unit := docs[i : i+n]
		var b int64
		for _, doc := range unit {
			b += int64(doc.size)
		}
		if len(d.Units) > 0 && (len(take)+n > maxDocs || size+b > maxBytes) {
			break
		}
		d.Units = append(d.Units, int64(unit[0].seq))
		take = append(take, unit...)
		size += b
		i += n
		if alone {
			break
		}
	}
	if len(d.Units) == 0 || d.Units[0] != d.Unit {
		return fmt.Errorf("reading unit %d of %s's queue for %s: not found whole", d.Unit, d.Sender, d.Domain)
	}
	// Each body is the message after its document's headers.
	req := directGet{Seq: take[0].seq + 1, NextFor: bodySubject(d.Sender, d.Domain), Batch: len(take)}
	err = s.directBatch(ctx, OutboxStream, req, len(take), func(m *nats.Msg) (bool, error) {
		seq, err := messageSeq(m)
		if err != nil {
			return false, err
		}
		if want := take[len(d.Messages)].seq + 1; seq != want {
			return false, fmt.Errorf("the body at %d, want %d", seq, want)
		}
		d.Messages = append(d.Messages, m.Data)
		return len(d.Messages) < len(take), nil
	})
	if err == nil && len(d.Messages) < len(take) {
		err = fmt.Errorf("%d of %d bodies", len(d.Messages), len(take))
	}
	if err != nil {
		d.Units, d.Messages = nil, nil
		return fmt.Errorf("reading the documents of unit %d of %s's queue for %s: %w", d.Unit, d.Sender, d.Domain, err)
	}
	return nil
}

// FinishDelivery records an attempt at units, which are consecutive units
// of one queue from its head: the head's state, or, delivered or failed,
// the queue's new start, the sender's count and the units' done records,
// in one batch; the units' documents are purged after.
func (s *Store) FinishDelivery(ctx context.Context, units []int64, r server.DeliveryResult) error {
	if len(units) == 0 {
		return nil
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	first, err := s.fed.outbox.GetMsg(ctx, uint64(units[0]))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // finished and purged before
	}
	if err != nil {
		return fmt.Errorf("recording delivery of units %v: %w", units, err)
	}
	head0, err := newQueuedDoc(first.Sequence, first.Header)
	if err != nil {
		return fmt.Errorf("recording delivery of units %v: %w", units, err)
	}
	sender, domain := head0.sender, head0.domain
	defer s.fed.locks.lock("finished:" + sender)()
	q := docSubject(sender, domain)
	defer func() {
		s.fed.mu.Lock()
		if st := s.fed.heads[q]; st != nil {
			st.head, st.msgs = nil, math.MaxUint64 // read again
		}
		s.fed.mu.Unlock()
	}()
	for run := 0; ; run++ {
		err := s.finishOnce(ctx, sender, domain, units, r)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errOutboxChanged) && run < outboxCASRuns && ctx.Err() == nil:
			continue
		default:
			return fmt.Errorf("recording delivery of units %v: %w", units, err)
		}
	}
}

func (s *Store) finishOnce(ctx context.Context, sender, domain string, units []int64, r server.DeliveryResult) error {
	var head outboxHead
	headSeq, err := s.lastOutboxMsg(ctx, headSubject(sender, domain), &head)
	if err != nil {
		return err
	}
	// Only a queued unit takes a result: one delivered stays so.
	units = slices.DeleteFunc(slices.Clone(units), func(u int64) bool { return uint64(u) <= head.DoneThrough })
	if len(units) == 0 {
		return nil
	}
	attempts := 1
	if head.Unit == uint64(units[0]) {
		attempts += head.Attempts
	}
	if r.State == server.OutboxQueued {
		next := outboxHead{DoneThrough: head.DoneThrough, Unit: uint64(units[0]), Attempts: attempts,
			NextAt: r.NextAt.Unix(), At: r.At.Unix(), Code: r.Code, Message: r.Message}
		// One record: published alone, not as an atomic batch, whose
		// staging costs JetStream milliseconds.
		_, err := s.js.PublishMsg(ctx, record(headSubject(sender, domain), next, headSeq, headTTL))
		if apiErr := (*jetstream.APIError)(nil); errors.As(err, &apiErr) && wrongLastSeq(apiErr) {
			return errOutboxChanged
		}
		return err
	}
	q := docSubject(sender, domain)
	// The units of one delivery hold at most MaxBatchDocuments documents.
	docs, err := s.readQueue(ctx, q, uint64(units[0]), server.MaxBatchDocuments)
	if err != nil {
		return err
	}
	var finished outboxCount
	finishedSeq, err := s.lastOutboxMsg(ctx, finishedSubject(sender), &finished)
	if err != nil {
		return err
	}
	var done []*outboxDone
	var last uint64
	finishedDocs := 0
	for i := 0; i < len(docs) && len(done) < len(units); {
		n := docs[i].unitDocs
		if docs[i].seq != uint64(units[len(done)]) || i+n > len(docs) {
			return fmt.Errorf("unit %d of %s's queue for %s is not where it was", units[len(done)], sender, domain)
		}
		rec := &outboxDone{Unit: docs[i].seq, Domain: domain, State: r.State, Attempts: attempts, QueuedAt: docs[i].queuedAt,
			At: r.At.Unix(), Code: r.Code, Message: r.Message}
		for _, doc := range docs[i : i+n] {
			rec.Docs = append(rec.Docs, outboxDoneDoc{To: doc.to, ID: doc.id})
			finished.Docs++
			finished.Bytes += int64(doc.size)
			finishedDocs++
			last = doc.seq
		}
		done = append(done, rec)
		attempts = 1 // the attempts were the head's
		i += n
	}
	if len(done) < len(units) {
		return fmt.Errorf("units %v of %s's queue for %s are not all there", units, sender, domain)
	}
	msgs := []*nats.Msg{
		record(finishedSubject(sender), finished, finishedSeq, 0),
		record(headSubject(sender, domain), outboxHead{DoneThrough: last}, headSeq, headTTL),
	}
	for _, rec := range done {
		data, _ := json.Marshal(rec)
		msgs = append(msgs, &nats.Msg{Subject: doneSubject(sender), Data: data, Header: nats.Header{jetstream.MsgTTLHeader: {ttl(doneTTL)}}})
	}
	if err := s.fed.outboxCommits.commit(ctx, msgs); err != nil {
		return err
	}
	// Purged in bulk: DoneThrough hides them meanwhile.
	s.fed.mu.Lock()
	st := s.fed.heads[q]
	if st == nil {
		st = &queueState{}
		s.fed.heads[q] = st
	}
	st.unpurged += finishedDocs
	purge := st.unpurged >= purgeEvery
	if purge {
		st.unpurged = 0
	}
	s.fed.mu.Unlock()
	if purge {
		s.purgeQueue(ctx, q, last)
	}
	return nil
}

// purgeQueue purges queue q's documents through the one at doneThrough,
// and their bodies (each the message after its document). A failure is
// logged: the head record's done_through hides them until a later purge.
func (s *Store) purgeQueue(ctx context.Context, q string, doneThrough uint64) {
	for _, subj := range []string{q, queueSubject(q, "body")} {
		if _, err := s.purgeSubject(ctx, OutboxStream, subj, doneThrough+1); err != nil {
			s.log.Warn("purging delivered documents", "subject", subj, "err", err)
		}
	}
}

// OutboxEntries reads sender's queued documents and its done records of
// the last OutboxKeep, newest first; see server.FederationStore.
func (s *Store) OutboxEntries(ctx context.Context, sender string, limit int) ([]*server.OutboxEntry, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	// Newest first is by seq: a unit's documents are consecutive pairs
	// of messages (headers, body), so the i-th's seq is the unit's + 2i.
	type entry struct {
		seq uint64
		e   *server.OutboxEntry
	}
	var all []entry
	info, err := s.fed.outbox.Info(ctx, jetstream.WithSubjectFilter(outboxSubject("doc", natsbus.Token(sender), "*")))
	if err != nil {
		return nil, fmt.Errorf("reading the outbox of %s: %w", sender, err)
	}
	for q := range info.State.Subjects {
		var head outboxHead
		if _, err := s.lastOutboxMsg(ctx, queueSubject(q, "head"), &head); err != nil {
			return nil, err
		}
		from := head.DoneThrough + 1
		var unit uint64 // of the document read, as its documents come in a row
		left := 0
		for {
			docs, err := s.readQueue(ctx, q, from, maxPage)
			if err != nil {
				return nil, err
			}
			for _, d := range docs {
				if left == 0 {
					unit, left = d.seq, d.unitDocs
				}
				left--
				e := &server.OutboxEntry{To: d.to + "@" + d.domain, ID: d.id, State: server.OutboxQueued,
					QueuedAt: d.queuedAt, UpdatedAt: d.queuedAt}
				all = append(all, entry{seq: d.seq, e: e})
				if head.Unit != 0 && unit == head.Unit {
					e.Attempts, e.UpdatedAt = head.Attempts, head.At
					if head.Code != "" {
						e.Error = &server.OutboxError{Code: head.Code, Message: head.Message}
					}
				}
			}
			if len(docs) < maxPage {
				break
			}
			from = docs[len(docs)-1].seq + 1
		}
	}
	since := s.now().Add(-server.OutboxKeep)
	req := directGet{NextFor: doneSubject(sender), Batch: maxPage, StartTime: &since}
	for {
		n := 0
		var lastSeq uint64
		err := s.directBatch(ctx, OutboxStream, req, maxPage, func(m *nats.Msg) (bool, error) {
			n++
			lastSeq, _ = strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
			var rec outboxDone
			if err := json.Unmarshal(m.Data, &rec); err != nil {
				return false, fmt.Errorf("decoding a done record of %s: %w", sender, err)
			}
			for i, d := range rec.Docs {
				e := &server.OutboxEntry{To: d.To + "@" + rec.Domain, ID: d.ID, State: rec.State, Attempts: rec.Attempts,
					QueuedAt: rec.QueuedAt, UpdatedAt: rec.At}
				if rec.Code != "" {
					e.Error = &server.OutboxError{Code: rec.Code, Message: rec.Message}
				}
				all = append(all, entry{seq: rec.Unit + 2*uint64(i), e: e})
			}
			return true, nil
		})
		if err != nil {
			return nil, fmt.Errorf("reading the outbox of %s: %w", sender, err)
		}
		if n < maxPage {
			break
		}
		req = directGet{Seq: lastSeq + 1, NextFor: doneSubject(sender), Batch: maxPage}
	}
	slices.SortFunc(all, func(a, b entry) int { return cmp.Compare(b.seq, a.seq) })
	entries := make([]*server.OutboxEntry, 0, min(limit, len(all)))
	for _, x := range all[:min(limit, len(all))] {
		entries = append(entries, x.e)
	}
	return entries, nil
}

// OnQueued calls wake whenever a replica queued documents, until the store
// closes: the courier on the lease holder is woken by sends on every
// replica.
func (s *Store) OnQueued(wake func()) error {
	_, err := s.nc.Subscribe(outboxQueued, func(*nats.Msg) { wake() })
	if err != nil {
		return fmt.Errorf("following the outbox: %w", err)
	}
	return nil
}
