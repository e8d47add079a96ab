package jsstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"kez.lat/chat/server"
	"kez.lat/chat/server/natsbus"
)

// The writer commits envelopes in groups, as SQLite's writer does: with
// sync_interval: always JetStream fsyncs every message it stores on its
// own, but an atomic batch once. One replica at a time writes (the holder
// of the writer lease, lease.go); the others forward their envelopes to it
// over NATS. Being the only writer lets it vouch for each envelope's Prev:
// it remembers every recipient's last seq as of the stream's last seq, and
// each batch is stored only if the stream's last seq is still the one it
// knows (Nats-Expected-Last-Sequence). A second writer (a lease handed
// over while the old holder still wrote) makes that check fail, and the
// writer forgets what it knew.
//
// Each envelope carries its (from, id) key as Nats-Msg-Id, which the
// stream remembers for the idempotency window: a retry fails its batch,
// and the batch is split until the retry is alone and answered with the
// seq of the envelope it repeats.

// Subjects and headers of the writer's batches.
const (
	// WriterSubject is where replicas without the lease send envelopes.
	WriterSubject = "kez.chat.writer.append"
	writerQueue   = "kez-chat-writer"

	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"
)

// Bounds of one batch: JetStream takes at most 1,000 messages in an atomic
// batch.
const (
	maxBatchEnvelopes = 512
	maxBatchBytes     = 8 << 20
	writerQueueSize   = 4096
	// commitAttempts bounds the commits of one batch after a lost answer
	// or another writer's write.
	commitAttempts = 3
	// batchProbe: see writer.aloneRun.
	batchProbe = 32
	// contendedFor: see writer.unvouchedUntil.
	contendedFor = 10 * time.Second
)

// appendRequest is one envelope on its way to the stream, and its answer.
type appendRequest struct {
	ctx                                context.Context
	recipient, sender, id, key, digest string
	at                                 int64
	message                            []byte
	// ambiguous: an earlier attempt may have stored it, so finding it
	// stored means it was stored by this request, not by another.
	ambiguous bool
	// group holds, in each envelope of a group send (AppendMessages), the
	// envelopes that are stored together or not at all, in order: their
	// first is the one queued, and stands for all. gi is the envelope's
	// place in group, index its place in the request (for errors).
	// groupBytes: the group's messages, on the first. nil for a single
	// envelope.
	group      []*appendRequest
	gi, index  int
	groupBytes int

	// The answer, set by the writer before finish.
	seq, prev uint64
	dup       bool
	err       error
	finish    func()
}

// writer commits the envelopes of its queue. run owns the fields below
// queue; the lease holder feeds queue.
type writer struct {
	s      *Store
	queue  chan *appendRequest
	stop   chan struct{}
	done   chan struct{}
	resync chan struct{} // taken over the lease: what it knew may be stale

	synced  bool
	lastSeq uint64            // the stream's last seq, as of the last commit
	last    map[string]uint64 // recipient -> seq of its last envelope, as of lastSeq (bounded)
	prefix  string
	batches uint64
	// Moving averages of what a publish alone and a batch take, in
	// nanoseconds: a few envelopes go alone when that is faster. aloneRun
	// counts the groups since the last batch that went alone; every
	// batchProbe-th goes as a batch all the same, so that a batch once
	// slow is measured again.
	costAlone, costBatch float64
	aloneRun             int
	// unvouchedUntil: another writer kept the stream's last seq moving
	// (replicas of an earlier version during a rolling update, or a lease
	// holder that did not notice it lost the lease); until then envelopes
	// are stored without the check and without Prev.
	unvouchedUntil time.Time

	// What it committed, for WriterStats.
	committedBatches, committedEnvelopes atomic.Uint64
}

func newWriter(s *Store) *writer {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return &writer{
		s: s, queue: make(chan *appendRequest, writerQueueSize),
		stop: make(chan struct{}), done: make(chan struct{}), resync: make(chan struct{}, 1),
		last: make(map[string]uint64), prefix: hex.EncodeToString(b[:]) + "-",
	}
}

// enqueue puts r on queue, waiting while it is full, unless stop is closed.
func enqueue(ctx context.Context, queue chan<- *appendRequest, stop <-chan struct{}, r *appendRequest) error {
	select {
	case <-stop:
		return errStoreClosed
	default:
	}
	select {
	case queue <- r:
		return nil
	case <-stop:
		return errStoreClosed
	case <-ctx.Done():
		return unavailable("the message store is busy")
	}
}

var errStoreClosed = server.Errorf(server.CodeUnavailable, "the message store is shutting down; try again")

func unavailable(why string) error {
	return server.Errorf(server.CodeUnavailable, "%s; try again", why)
}

// run commits batches until stop, and then what is still queued.
func (w *writer) run() {
	defer close(w.done)
	for {
		select { // a lease taken over is seen before the first batch
		case <-w.resync:
			w.synced = false
		default:
		}
		var first *appendRequest
		select {
		case first = <-w.queue:
		case <-w.resync:
			w.synced = false
			continue
		case <-w.stop:
			for {
				select {
				case r := <-w.queue:
					w.process(gather(w.queue, r, maxBatchBytes))
				default:
					return
				}
			}
		}
		w.process(gather(w.queue, first, maxBatchBytes))
	}
}

// gather takes first and whatever else is queued, up to maxBatchEnvelopes
// or until the messages exceed maxBytes. A group send counts all its
// envelopes, so a batch may end up to MaxBatchDocuments-1 envelopes and
// one group's bytes past the bounds (JetStream takes 1,000).
func gather(queue <-chan *appendRequest, first *appendRequest, maxBytes int) []*appendRequest {
	batch, size, n := []*appendRequest{first}, first.bytes(), first.envelopes()
	for n < maxBatchEnvelopes && size < maxBytes {
		select {
		case r := <-queue:
			batch, size, n = append(batch, r), size+r.bytes(), n+r.envelopes()
		default:
			return batch
		}
	}
	return batch
}

// envelopes counts what r stands for in a queue: a group's envelopes, or 1.
func (r *appendRequest) envelopes() int {
	if r.group != nil {
		return len(r.group)
	}
	return 1
}

// bytes is the size of the messages r stands for in a queue.
func (r *appendRequest) bytes() int {
	if r.group != nil {
		return r.groupBytes
	}
	return len(r.message)
}

// makeGroup ties reqs, the envelopes of one group send in order, together
// and returns the one to queue. A group of one is a single envelope.
func makeGroup(reqs []*appendRequest) *appendRequest {
	if len(reqs) == 1 {
		reqs[0].group = nil
		return reqs[0]
	}
	size := 0
	for i, r := range reqs {
		r.group, r.gi = reqs, i
		size += len(r.message)
	}
	reqs[0].groupBytes = size
	return reqs[0]
}

// unitEnd is the end of the unit of reqs starting at i: the rest of a
// group send (whose envelopes are consecutive in every list the writer
// makes), or the single envelope.
func unitEnd(reqs []*appendRequest, i int) int {
	if g := reqs[i].group; g != nil {
		return i + len(g) - reqs[i].gi
	}
	return i + 1
}

// oneGroup reports whether reqs are exactly the envelopes of one group
// send, which must be stored together.
func oneGroup(reqs []*appendRequest) bool {
	return reqs[0].group != nil && reqs[0].gi == 0 && len(reqs[0].group) == len(reqs)
}

// process commits batch and answers every request of it.
func (w *writer) process(batch []*appendRequest) {
	defer func() {
		for _, r := range batch {
			r.finish()
		}
	}()
	// A request whose caller gave up is not stored; a request for a
	// (from, id) already in the batch waits for the next round, where its
	// record exists. A group send goes whole, or waits whole.
	pending := make([]*appendRequest, 0, len(batch))
	for _, r := range batch {
		if r.ctx.Err() != nil {
			failUnit(r, unavailable("the message store did not answer in time"))
			continue
		}
		pending = append(pending, r)
	}
	seen := make(map[string]bool, len(pending))
	for len(pending) > 0 {
		var firsts, later []*appendRequest
		clear(seen)
		for _, r := range pending {
			if r.group == nil {
				if seen[r.key] {
					later = append(later, r)
					continue
				}
				seen[r.key] = true
				firsts = append(firsts, r)
				continue
			}
			if slices.ContainsFunc(r.group, func(m *appendRequest) bool { return seen[m.key] }) {
				later = append(later, r)
				continue
			}
			for _, m := range r.group {
				seen[m.key] = true
			}
			firsts = append(firsts, r.group...)
		}
		w.commit(firsts)
		pending = later
	}
}

// failUnit answers every envelope r stands for with err.
func failUnit(r *appendRequest, err error) {
	if r.group == nil {
		r.err = err
		return
	}
	failAll(r.group, err)
}

// commit stores reqs as one atomic batch, or, when one of them cannot be
// stored, splits them until it is alone and answered with its error. When
// publishing them one by one is expected to take less time than a batch
// (few envelopes, or a NATS server that does not fsync each message), it
// does that instead.
//
// The envelopes of a group send are consecutive in reqs and never parted:
// they go in one batch, and are refused together.
func (w *writer) commit(reqs []*appendRequest) {
	group := oneGroup(reqs)
	if len(reqs) > 1 && !group && float64(len(reqs))*w.costAlone < w.costBatch && w.aloneRun < batchProbe {
		w.aloneRun++
		for i := 0; i < len(reqs); {
			j := unitEnd(reqs, i)
			w.commit(reqs[i:j])
			i = j
		}
		return
	}
	if len(reqs) > 1 {
		w.aloneRun = 0
	}
	for attempt := 1; ; attempt++ {
		if !w.synced && w.vouching() {
			if err := w.sync(); err != nil {
				failAll(reqs, unavailable("the message store cannot be reached"))
				w.s.log.Warn("reading the stream's last seq", "err", err)
				return
			}
		}
		err := w.publish(reqs)
		if err == nil {
			return
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) {
			// No answer: the batch may have been stored. Its message ids
			// make a second commit safe.
			w.s.log.Warn("committing a batch", "envelopes", len(reqs), "attempt", attempt, "err", err)
			for _, r := range reqs {
				r.ambiguous = true
			}
			w.synced = false
			if attempt >= commitAttempts {
				failAll(reqs, unavailable("the message store did not answer"))
				return
			}
			continue
		}
		if apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			known := w.lastSeq
			if err := w.sync(); err != nil {
				failAll(reqs, unavailable("the message store cannot be reached"))
				return
			}
			if w.lastSeq == known {
				failAll(reqs, fmt.Errorf("appending envelopes: %w", apiErr))
				return
			}
			// Another writer: w.last is forgotten. Should it go on
			// writing, store without vouching for a while.
			if attempt >= commitAttempts && w.vouching() {
				w.s.log.Warn("another writer keeps writing to the stream; storing envelopes without their previous seq for a while",
					"for", contendedFor)
				w.unvouchedUntil = time.Now().Add(contendedFor)
			}
			continue
		}
		if apiErr.ErrorCode == errCodeAtomicPublishDisabled {
			// The stream's config lost allow_atomic (a replica of an
			// earlier version updated it): publish one by one until a
			// batch is tried again.
			// A group send cannot go one by one: it waits for a batch.
			w.costAlone, w.costBatch, w.aloneRun = 0, math.Inf(1), 0
			for i := 0; i < len(reqs); {
				j := unitEnd(reqs, i)
				if j-i > 1 {
					failAll(reqs[i:j], unavailable("the message store takes no atomic batches now"))
				} else {
					w.commit(reqs[i:j])
				}
				i = j
			}
			return
		}
		if len(reqs) == 1 {
			w.answerFailure(reqs[0], apiErr)
			return
		}
		if group {
			w.groupRefused(reqs, apiErr)
			return
		}
		// Halves, moved to the nearest start of a unit.
		mid := len(reqs) / 2
		if reqs[mid].group != nil {
			mid -= reqs[mid].gi
		}
		if mid == 0 {
			mid = unitEnd(reqs, 0)
		}
		w.commit(reqs[:mid])
		w.commit(reqs[mid:])
		return
	}
}

func failAll(reqs []*appendRequest, err error) {
	for _, r := range reqs {
		r.err = err
	}
}

// sync reads the stream's last seq and forgets the recipients' last seqs,
// which may be stale.
func (w *writer) sync() error {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	info, err := w.s.stream.Info(ctx)
	if err != nil {
		return err
	}
	w.lastSeq, w.synced = info.State.LastSeq, true
	clear(w.last)
	return nil
}

// batchAck is JetStream's answer to a batch's commit.
type batchAck struct {
	Seq   uint64              `json:"seq"`
	Count int                 `json:"count"`
	Error *jetstream.APIError `json:"error,omitempty"`
}

// publish sends reqs as one atomic batch and, when JetStream stores it,
// answers them: the envelopes take consecutive seqs.
func (w *writer) publish(reqs []*appendRequest) error {
	if len(reqs) == 1 {
		return w.publishOne(reqs[0])
	}
	start := time.Now()
	w.batches++
	vouch := w.vouching()
	msgs := make([]*nats.Msg, len(reqs))
	for i, r := range reqs {
		msgs[i] = envelopeMsg(r)
	}
	if vouch {
		msgs[0].Header[jetstream.ExpectedLastSeqHeader] = []string{strconv.FormatUint(w.lastSeq, 10)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	first, err := publishAtomic(ctx, w.s.nc, w.prefix+strconv.FormatUint(w.batches, 36), msgs)
	if err != nil {
		return err
	}
	w.stored(reqs, first, vouch)
	w.costBatch = movingAverage(w.costBatch, time.Since(start))
	return nil
}

// publishAtomic publishes msgs, all of one stream, as the atomic batch id
// and returns the seq of the first as stored. JetStream's refusal is
// returned as its *jetstream.APIError; any other error leaves unknown
// whether the batch was stored.
func publishAtomic(ctx context.Context, nc *nats.Conn, id string, msgs []*nats.Msg) (uint64, error) {
	for i, m := range msgs {
		m.Header[hdrBatchID] = []string{id}
		m.Header[hdrBatchSeq] = []string{strconv.Itoa(i + 1)}
		delete(m.Header, hdrBatchCommit) // from a batch it was in before
		if i < len(msgs)-1 {
			if err := nc.PublishMsg(m); err != nil {
				return 0, fmt.Errorf("publishing a batch: %w", err)
			}
		}
	}
	commit := msgs[len(msgs)-1]
	commit.Header[hdrBatchCommit] = []string{"1"}
	resp, err := nc.RequestMsgWithContext(ctx, commit)
	if err != nil {
		return 0, fmt.Errorf("committing a batch: %w", err)
	}
	var ack batchAck
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return 0, fmt.Errorf("decoding a batch's acknowledgement: %w", err)
	}
	if ack.Error != nil {
		return 0, ack.Error
	}
	n := len(msgs)
	if ack.Count != n || ack.Seq < uint64(n) {
		return 0, fmt.Errorf("a batch of %d stored as %d ending at %d", n, ack.Count, ack.Seq)
	}
	return ack.Seq - uint64(n) + 1, nil
}

// publishOne publishes r alone: an atomic batch costs JetStream a staging
// store of its own and several fsyncs, where one message costs one (and
// none without sync_interval: always), so a lone envelope waits less.
func (w *writer) publishOne(r *appendRequest) error {
	m := envelopeMsg(r)
	vouch := w.vouching()
	if vouch {
		m.Header[jetstream.ExpectedLastSeqHeader] = []string{strconv.FormatUint(w.lastSeq, 10)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	start := time.Now()
	ack, err := w.s.js.PublishMsg(ctx, m)
	if err != nil {
		return err
	}
	if ack.Duplicate {
		w.answerDuplicate(r, ack.Sequence)
		return nil
	}
	w.stored([]*appendRequest{r}, ack.Sequence, vouch)
	w.costAlone = movingAverage(w.costAlone, time.Since(start))
	return nil
}

// stored answers reqs, which one write stored with consecutive seqs from
// first, and records what the writer now knows: when it vouched (checked
// the stream's last seq), each recipient's last seq; else nothing, so it
// reads the stream's last seq again before vouching.
func (w *writer) stored(reqs []*appendRequest, first uint64, vouch bool) {
	for i, r := range reqs {
		r.seq, r.prev = first+uint64(i), 0
		if vouch {
			token := natsbus.Token(r.recipient)
			r.prev = w.last[token]
			w.remember(token, r.seq)
		}
	}
	w.lastSeq = first + uint64(len(reqs)) - 1
	w.synced = w.synced && vouch
	w.committedBatches.Add(1)
	w.committedEnvelopes.Add(uint64(len(reqs)))
}

// vouching reports whether the writer checks the stream's last seq and
// hands out Prev (see unvouchedUntil).
func (w *writer) vouching() bool { return time.Now().After(w.unvouchedUntil) }

// movingAverage adds d to the exponentially weighted average avg, which
// starts at the first d (after none, or after +Inf: batches refused).
func movingAverage(avg float64, d time.Duration) float64 {
	if avg == 0 || math.IsInf(avg, 1) {
		return float64(d)
	}
	return 0.9*avg + 0.1*float64(d)
}

// envelopeMsg is r as a message of the stream.
func envelopeMsg(r *appendRequest) *nats.Msg {
	return &nats.Msg{Subject: subject(r.recipient), Data: r.message, Header: nats.Header{
		jetstream.MsgIDHeader: {r.key},
		hdrFrom:               {r.sender},
		hdrID:                 {r.id},
		hdrDigest:             {r.digest},
		hdrAt:                 {strconv.FormatInt(r.at, 10)},
	}}
}

// WriterStats counts the batches this replica's writer committed and the
// envelopes in them (those of other replicas included).
func (s *Store) WriterStats() (batches, envelopes uint64) {
	return s.w.committedBatches.Load(), s.w.committedEnvelopes.Load()
}

// remember records recipient's last seq, forgetting one at random when
// it knows too many.
func (w *writer) remember(token string, seq uint64) {
	if _, ok := w.last[token]; !ok && len(w.last) >= lastCacheSize {
		for k := range w.last {
			delete(w.last, k)
			break
		}
	}
	w.last[token] = seq
}

// Error codes of a message id JetStream has seen within its duplicate
// window: in a batch, and (rarely) while its first publish is in flight.
const (
	errCodeBatchDuplicate     jetstream.ErrorCode = 10201
	errCodeDuplicateInProcess jetstream.ErrorCode = 10158
	// errCodeAtomicPublishDisabled: the stream does not take batches.
	errCodeAtomicPublishDisabled jetstream.ErrorCode = 10174
)

// Error codes of JetStream without room: the account's or the server's
// storage is used up (max_file_store).
const (
	errCodeInsufficientResources jetstream.ErrorCode = 10023
	errCodeStorageExceeded       jetstream.ErrorCode = 10047
)

// storageFull reports whether JetStream refused for want of room: the
// stream's MaxBytes, or the server's or account's storage.
func storageFull(apiErr *jetstream.APIError) bool {
	return apiErr.ErrorCode == errCodeInsufficientResources || apiErr.ErrorCode == errCodeStorageExceeded ||
		strings.Contains(apiErr.Description, "maximum bytes exceeded") ||
		strings.Contains(apiErr.Description, "resources exceeded")
}

// answerFailure answers r, which JetStream refused alone.
func (w *writer) answerFailure(r *appendRequest, apiErr *jetstream.APIError) {
	switch {
	case apiErr.ErrorCode == errCodeBatchDuplicate, apiErr.ErrorCode == errCodeDuplicateInProcess:
		w.answerRetry(r)
	case strings.Contains(apiErr.Description, "maximum messages per subject exceeded"):
		r.err = server.Errorf(server.CodeInboxFull,
			"the inbox of %s holds the most unacknowledged messages allowed; try again later", r.recipient)
	case storageFull(apiErr):
		w.s.full.Add(1)
		r.err = &server.Error{Code: server.CodeStorageFull, RetryAfter: time.Minute,
			Message: "the message store is full; try again later"}
	default:
		r.err = fmt.Errorf("appending envelope for %s: %w", r.recipient, apiErr)
	}
}

// answerRetry answers r, whose message id the stream has seen: published
// alone, without the expected last seq, it is acknowledged as a duplicate
// with the seq of the envelope it repeats. (Should the id have left the
// window meanwhile, r is stored now.)
func (w *writer) answerRetry(r *appendRequest) {
	ack, err := w.s.js.PublishMsg(r.ctx, envelopeMsg(r))
	if err != nil {
		r.err = fmt.Errorf("appending envelope for %s: %w", r.recipient, err)
		return
	}
	if !ack.Duplicate {
		w.synced = false // stored without the check: the last seq moved
		r.seq, r.prev = ack.Sequence, 0
		return
	}
	w.answerDuplicate(r, ack.Sequence)
}

// answerDuplicate answers r, a second envelope with the message id of the
// one at seq, whose digest tells a retry from a reuse of the id.
func (w *writer) answerDuplicate(r *appendRequest, seq uint64) {
	orig, err := w.s.stream.GetMsg(r.ctx, seq)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound): // acknowledged since
		r.seq, r.prev, r.dup = seq, 0, !r.ambiguous
	case err != nil:
		r.err = fmt.Errorf("reading envelope %d: %w", seq, err)
	case orig.Header.Get(hdrDigest) != r.digest:
		r.err = server.Errorf(server.CodeMessageIDConflict,
			"message id %q from %s was already used for a different message", r.id, r.sender)
	default:
		r.at, _ = strconv.ParseInt(orig.Header.Get(hdrAt), 10, 64)
		r.seq, r.prev, r.dup = seq, 0, !r.ambiguous
	}
}

// groupRefused answers g, the envelopes of one group send, which JetStream
// refused as a batch: the whole group fails, with the index of the
// envelope at fault where it can be found, except when envelopes of it
// were stored before (a retry): those are answered with their seqs and
// the others committed again as a group.
func (w *writer) groupRefused(g []*appendRequest, apiErr *jetstream.APIError) {
	switch {
	case apiErr.ErrorCode == errCodeBatchDuplicate, apiErr.ErrorCode == errCodeDuplicateInProcess:
		w.groupRetried(g)
	case strings.Contains(apiErr.Description, "maximum messages per subject exceeded"):
		err := error(server.Errorf(server.CodeInboxFull,
			"an inbox holds the most unacknowledged messages allowed; try again later"))
		if r := w.fullInbox(g); r != nil {
			err = server.AtIndex(server.Errorf(server.CodeInboxFull,
				"the inbox of %s holds the most unacknowledged messages allowed; try again later", r.recipient), r.index)
		}
		failAll(g, err)
	case storageFull(apiErr):
		w.s.full.Add(1)
		failAll(g, &server.Error{Code: server.CodeStorageFull, RetryAfter: time.Minute,
			Message: "the message store is full; try again later"})
	default:
		failAll(g, fmt.Errorf("appending a group of %d envelopes: %w", len(g), apiErr))
	}
}

// groupRetried answers g, refused for a message id the stream has seen:
// each envelope whose id it knows is answered as a retry (or the group is
// refused with message_id_conflict), and the rest commit as a group.
func (w *writer) groupRetried(g []*appendRequest) {
	var fresh []*appendRequest
	for _, r := range g {
		known, err := w.knownID(r)
		if err != nil {
			w.s.log.Warn("looking up the message ids of a group send", "err", err)
			failAll(g, unavailable("the message store did not answer"))
			return
		}
		if !known {
			fresh = append(fresh, r)
			continue
		}
		// Known, so published alone it is acknowledged as a duplicate and
		// not stored (unless its id leaves the window just now).
		w.answerRetry(r)
		if r.err != nil {
			failAll(g, server.AtIndex(r.err, r.index))
			return
		}
	}
	switch {
	case len(fresh) == 0:
	case len(fresh) == len(g): // refused for an id that none has: a lost race with the window
		failAll(g, unavailable("the message store refused a group send"))
	default:
		makeGroup(fresh)
		w.commit(fresh)
	}
}

// knownID reports whether the stream's duplicate window holds r's message
// id, without storing r: JetStream checks an atomic batch's message ids
// before its expected last sequence, so a batch of r alone that expects a
// last seq the stream never has is refused as a duplicate when the id is
// known, and for the sequence when it is not.
func (w *writer) knownID(r *appendRequest) (bool, error) {
	w.batches++
	m := envelopeMsg(r)
	m.Header[jetstream.ExpectedLastSeqHeader] = []string{strconv.FormatInt(math.MaxInt64, 10)}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	_, err := publishAtomic(ctx, w.s.nc, w.prefix+strconv.FormatUint(w.batches, 36), []*nats.Msg{m})
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		return false, fmt.Errorf("a probe of message id %q from %s was stored", r.id, r.sender)
	case !errors.As(err, &apiErr):
		return false, fmt.Errorf("probing message id %q from %s: %w", r.id, r.sender, err)
	case apiErr.ErrorCode == errCodeBatchDuplicate, apiErr.ErrorCode == errCodeDuplicateInProcess:
		return true, nil
	case apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
		return false, nil
	default:
		return false, fmt.Errorf("probing message id %q from %s: %w", r.id, r.sender, apiErr)
	}
}

// fullInbox returns the envelope of g whose inbox holds the most envelopes
// the stream allows, nil when none does (any more).
func (w *writer) fullInbox(g []*appendRequest) *appendRequest {
	limit := w.s.stream.CachedInfo().Config.MaxMsgsPerSubject
	if limit <= 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	for _, r := range g {
		subj := subject(r.recipient)
		info, err := w.s.stream.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			w.s.log.Warn("counting the envelopes of an inbox", "err", err)
			return nil
		}
		if int64(info.State.Subjects[subj]) >= limit {
			return r
		}
	}
	return nil
}
