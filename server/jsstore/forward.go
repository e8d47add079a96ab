package jsstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"kez.lat/chat/server"
)

// Forwarding: a replica without the writer lease sends its envelopes to
// the holder on WriterSubject, several in one request when several wait,
// and the holder answers them all in one reply. Bodies are records of
// length-prefixed fields (forwardCodec below): a request holds, per
// envelope, to, from, id, digest, received-at and the message; the reply,
// per envelope in the same order, seq, prev, received-at, whether it was a
// retry, and an error code and text (empty when stored).

const (
	// forwardAttempt bounds one forwarded request's wait for its answer.
	forwardAttempt = 3 * time.Second
	// forwardInFlight bounds a replica's forwarded requests awaiting
	// answers; more envelopes wait to go in the next request.
	forwardInFlight = 16
	// codeBusy asks the sender to send again: the holder's queue was full.
	codeBusy = "busy"
)

// forwarder sends the envelopes of its queue to the lease holder.
type forwarder struct {
	s     *Store
	queue chan *appendRequest
	slots chan struct{}
	stop  chan struct{}
	done  chan struct{}
	wg    sync.WaitGroup
}

func newForwarder(s *Store) *forwarder {
	return &forwarder{s: s, queue: make(chan *appendRequest, writerQueueSize),
		slots: make(chan struct{}, forwardInFlight), stop: make(chan struct{}), done: make(chan struct{})}
}

// run sends a request as soon as one of forwardInFlight is free, with
// what is queued by then.
func (f *forwarder) run() {
	defer close(f.done)
	defer f.wg.Wait()
	defer f.failQueued()
	for {
		select {
		case f.slots <- struct{}{}:
		case <-f.stop:
			return
		}
		var first *appendRequest
		select {
		case first = <-f.queue:
		case <-f.stop:
			return
		}
		// Half the server's max_payload leaves room for the last
		// envelope taken (at most 64 KiB of ciphertext) and the framing.
		batch := gather(f.queue, first, int(f.s.nc.MaxPayload()/2))
		f.wg.Go(func() {
			defer func() { <-f.slots }()
			f.send(batch)
		})
	}
}

// failQueued answers what is still queued when the store closes.
func (f *forwarder) failQueued() {
	for {
		select {
		case r := <-f.queue:
			r.err = errStoreClosed
			r.finish()
		default:
			return
		}
	}
}

// send forwards batch until each envelope has an answer or its caller's
// deadline passed; envelopes the holder was too busy for go again.
func (f *forwarder) send(batch []*appendRequest) {
	wait := 5 * time.Millisecond
	for len(batch) > 0 {
		live := batch[:0]
		for _, r := range batch {
			if r.ctx.Err() != nil {
				r.err = unavailable("no replica is writing messages")
				r.finish()
				continue
			}
			live = append(live, r)
		}
		if batch = live; len(batch) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), forwardAttempt)
		resp, err := f.s.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: WriterSubject, Data: encodeForward(batch)})
		cancel()
		var again []*appendRequest
		switch {
		case errors.Is(err, nats.ErrNoResponders): // no holder now
			again = batch
		case err != nil: // no answer: they may have been stored
			for _, r := range batch {
				r.ambiguous = true
			}
			again = batch
		default:
			if derr := decodeAnswers(resp.Data, batch); derr != nil {
				f.s.log.Warn("decoding the writer's answer", "err", derr)
				failAll(batch, fmt.Errorf("forwarding envelopes: %w", derr))
			}
			for _, r := range batch {
				if server.ErrorCode(r.err) == codeBusy {
					r.err = nil
					again = append(again, r)
					continue
				}
				if r.dup && r.ambiguous { // stored by an earlier attempt of this request
					r.dup, r.prev = false, 0
				}
				r.finish()
			}
		}
		if batch = again; len(batch) == 0 {
			return
		}
		select {
		case <-time.After(wait):
		case <-f.stop:
			failAll(batch, errStoreClosed)
			for _, r := range batch {
				r.finish()
			}
			return
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// serveForwarded queues the envelopes of a forwarded request; the writer
// answers them, and the last answer sends the reply.
func (s *Store) serveForwarded(m *nats.Msg) {
	reqs, err := decodeForward(m.Data)
	if err != nil {
		s.log.Warn("a forwarded request that does not decode", "err", err)
		return // the sender's attempt times out and goes again
	}
	ctx, cancel := context.WithTimeout(context.Background(), forwardAttempt)
	var pending sync.WaitGroup
	pending.Add(len(reqs))
	for _, r := range reqs {
		r.ctx, r.finish = ctx, sync.OnceFunc(pending.Done)
	}
	go func() {
		pending.Wait()
		cancel()
		if err := m.Respond(encodeAnswers(reqs)); err != nil {
			s.log.Warn("answering forwarded envelopes", "err", err)
		}
	}()
	for _, r := range reqs {
		select {
		case s.w.queue <- r:
		default:
			r.err = server.Errorf(codeBusy, "the writer's queue is full")
			r.finish()
		}
	}
}

// submit has r stored: by this replica's writer while it holds the lease,
// else by the holder's, through the forwarder. It waits for the answer up
// to ctx's deadline.
func (s *Store) submit(ctx context.Context, r *appendRequest) error {
	done := make(chan struct{})
	r.finish = sync.OnceFunc(func() { close(done) })
	var err error
	if s.leader.Load() {
		err = enqueue(ctx, s.w.queue, s.w.stop, r)
	} else {
		err = enqueue(ctx, s.fw.queue, s.fw.stop, r)
	}
	if err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return unavailable("the message store did not answer in time")
	}
}

// The codec of forwarded requests and their answers.

func appendField(b, field []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(field))), field...)
}

// fieldReader reads what appendField and binary.AppendUvarint wrote.
type fieldReader struct {
	b   []byte
	err error
}

func (r *fieldReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("truncated number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *fieldReader) field() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = errors.New("truncated field")
		return nil
	}
	f := r.b[:n:n]
	r.b = r.b[n:]
	return f
}

func encodeForward(reqs []*appendRequest) []byte {
	size := 0
	for _, r := range reqs {
		size += len(r.recipient) + len(r.sender) + len(r.id) + len(r.digest) + len(r.message) + 32
	}
	b := make([]byte, 0, size)
	for _, r := range reqs {
		b = appendField(b, []byte(r.recipient))
		b = appendField(b, []byte(r.sender))
		b = appendField(b, []byte(r.id))
		b = appendField(b, []byte(r.digest))
		b = binary.AppendUvarint(b, uint64(r.at))
		b = appendField(b, r.message)
	}
	return b
}

// decodeForward reads a forwarded request: at most maxBatchEnvelopes
// envelopes, each with a recipient, sender, id and digest.
func decodeForward(b []byte) ([]*appendRequest, error) {
	fr := &fieldReader{b: b}
	var reqs []*appendRequest
	for len(fr.b) > 0 && fr.err == nil {
		if len(reqs) == maxBatchEnvelopes {
			return nil, fmt.Errorf("more than %d envelopes", maxBatchEnvelopes)
		}
		r := &appendRequest{recipient: string(fr.field()), sender: string(fr.field()), id: string(fr.field()),
			digest: string(fr.field()), at: int64(fr.uvarint()), message: fr.field()}
		if fr.err == nil && (r.recipient == "" || r.sender == "" || r.digest == "") {
			return nil, errors.New("an envelope without recipient, sender or digest")
		}
		r.key = idKey(r.sender, r.id)
		reqs = append(reqs, r)
	}
	if fr.err != nil {
		return nil, fr.err
	}
	if len(reqs) == 0 {
		return nil, errors.New("no envelope")
	}
	return reqs, nil
}

func encodeAnswers(reqs []*appendRequest) []byte {
	b := make([]byte, 0, 32*len(reqs))
	for _, r := range reqs {
		b = binary.AppendUvarint(b, r.seq)
		b = binary.AppendUvarint(b, r.prev)
		b = binary.AppendUvarint(b, uint64(r.at))
		dup := uint64(0)
		if r.dup {
			dup = 1
		}
		b = binary.AppendUvarint(b, dup)
		code, text := "", ""
		if r.err != nil {
			code, text = server.ErrorCode(r.err), r.err.Error()
			var e *server.Error
			if errors.As(r.err, &e) {
				text = e.Message
			}
		}
		b = appendField(b, []byte(code))
		b = appendField(b, []byte(text))
	}
	return b
}

// decodeAnswers sets the answers of reqs, in order, from b.
func decodeAnswers(b []byte, reqs []*appendRequest) error {
	fr := &fieldReader{b: b}
	for _, r := range reqs {
		seq, prev, at, dup := fr.uvarint(), fr.uvarint(), fr.uvarint(), fr.uvarint()
		code, text := string(fr.field()), string(fr.field())
		if fr.err != nil {
			return fr.err
		}
		r.seq, r.prev, r.at, r.dup, r.err = seq, prev, int64(at), dup == 1, nil
		switch code {
		case "":
		case server.CodeInternal:
			r.err = fmt.Errorf("the writer: %s", text)
		default:
			r.err = server.Errorf(code, "%s", text)
		}
	}
	if len(fr.b) != 0 {
		return fmt.Errorf("%d answers for %d envelopes", len(reqs)+1, len(reqs))
	}
	return nil
}

// Group sends: the envelopes of one AppendMessages go to the writer as one
// unit (makeGroup) and are never parted. A replica without the lease sends
// them to the holder on GroupSubject, one group per request, in the
// records of a forwarded request; a group larger than half the NATS
// server's max_payload goes in parts, each a request with the headers
// Kez-Group (an id for the group), Kez-Group-Part (1 to n) and
// Kez-Group-Parts (n), sent in order: the holder answers the parts before
// the last with an empty reply, and queues the group once it holds every
// part. The last part's reply holds the answers, as for WriterSubject,
// and, when the group was refused for one envelope, its index in the
// header Kez-Index. A
// reply with the header Kez-Busy asks for the whole group again (a holder
// without room for it, or one that did not get its first parts).
// Holders of an earlier version do not serve GroupSubject: a group waits
// for a holder that does (no responders) rather than be parted.

// GroupSubject is where replicas without the lease send group sends.
const GroupSubject = "kez.chat.writer.group"

const (
	hdrGroup      = "Kez-Group"
	hdrGroupPart  = "Kez-Group-Part"
	hdrGroupParts = "Kez-Group-Parts"
	hdrGroupBusy  = "Kez-Busy"
	hdrGroupIndex = "Kez-Index"
	// maxAssemblyBytes bounds what the holder keeps of groups whose parts
	// are still coming; past it a part is answered busy.
	maxAssemblyBytes = 32 << 20
	// maxGroupParts bounds the parts of one group (a 4 MiB body in parts
	// of at least 64 KiB).
	maxGroupParts = 64
	// groupAttempt bounds the wait for a forwarded group's answer: up to
	// 256 envelopes and 4 MiB in one batch may take the writer longer
	// than a few single envelopes, and a group sent again after a lost
	// answer costs a look-up per envelope. It leaves the request's
	// deadline (requestTimeout) room for the parts before.
	groupAttempt = 8 * time.Second
)

// submitGroup has reqs stored as one group and waits for the answers, up
// to ctx's deadline.
func (s *Store) submitGroup(ctx context.Context, reqs []*appendRequest) error {
	if s.leader.Load() {
		done := make(chan struct{})
		first := makeGroup(reqs)
		first.finish = sync.OnceFunc(func() { close(done) })
		if err := enqueue(ctx, s.w.queue, s.w.stop, first); err != nil {
			return err
		}
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return unavailable("the message store did not answer in time")
		}
	}
	select {
	case s.groupSlots <- struct{}{}:
		defer func() { <-s.groupSlots }()
	case <-ctx.Done():
		return unavailable("the message store is busy")
	}
	return s.forwardGroup(ctx, reqs)
}

// forwardGroup sends reqs to the lease holder until they are answered or
// ctx ends; a holder too busy, or none, is tried again.
func (s *Store) forwardGroup(ctx context.Context, reqs []*appendRequest) error {
	wait := 5 * time.Millisecond
	for {
		done, err := s.sendGroup(ctx, reqs)
		if done || err != nil {
			return err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return unavailable("no replica is writing messages")
		case <-s.stop:
			return errStoreClosed
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// sendGroup makes one attempt to forward reqs: done when each has its
// answer.
func (s *Store) sendGroup(ctx context.Context, reqs []*appendRequest) (done bool, err error) {
	parts := splitGroup(reqs, int(s.nc.MaxPayload()/2))
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	var resp *nats.Msg
	for k, part := range parts {
		m := &nats.Msg{Subject: GroupSubject, Data: encodeForward(part)}
		if len(parts) > 1 {
			m.Header = nats.Header{hdrGroup: {id}, hdrGroupPart: {strconv.Itoa(k + 1)}, hdrGroupParts: {strconv.Itoa(len(parts))}}
		}
		wait := forwardAttempt
		if k == len(parts)-1 {
			wait = groupAttempt
		}
		actx, cancel := context.WithTimeout(ctx, wait)
		resp, err = s.nc.RequestMsgWithContext(actx, m)
		cancel()
		switch {
		case errors.Is(err, nats.ErrNoResponders): // no holder now
			return false, nil
		case err != nil:
			if k == len(parts)-1 { // no answer: they may have been stored
				for _, r := range reqs {
					r.ambiguous = true
				}
			}
			return false, nil
		case resp.Header.Get(hdrGroupBusy) != "": // busy, or the holder changed
			return false, nil
		}
	}
	if err := decodeAnswers(resp.Data, reqs); err != nil {
		s.log.Warn("decoding the writer's answer", "err", err)
		return true, fmt.Errorf("forwarding a group send: %w", err)
	}
	if i, err := strconv.Atoi(resp.Header.Get(hdrGroupIndex)); err == nil && i >= 0 && i < len(reqs) {
		for _, r := range reqs {
			if r.err != nil {
				r.err = server.AtIndex(r.err, i)
			}
		}
	}
	for _, r := range reqs {
		if server.ErrorCode(r.err) == codeBusy {
			return false, nil
		}
	}
	for _, r := range reqs {
		if r.dup && r.ambiguous { // stored by an earlier attempt of this request
			r.dup, r.prev = false, 0
		}
	}
	return true, nil
}

// splitGroup parts reqs into runs whose records take at most about max
// bytes each (at least one envelope each).
func splitGroup(reqs []*appendRequest, max int) [][]*appendRequest {
	var parts [][]*appendRequest
	start, size := 0, 0
	for i, r := range reqs {
		n := len(r.recipient) + len(r.sender) + len(r.id) + len(r.digest) + len(r.message) + 32
		if i > start && size+n > max {
			parts = append(parts, reqs[start:i])
			start, size = i, 0
		}
		size += n
	}
	return append(parts, reqs[start:])
}

// groupAssembly is a group whose parts are coming in.
type groupAssembly struct {
	parts   [][]byte
	got     int
	bytes   int
	started time.Time
}

// serveGroup queues a forwarded group once it holds every part of it; the
// writer answers its envelopes, and the last answer sends the reply.
func (s *Store) serveGroup(m *nats.Msg) {
	data, ok := s.assemble(m)
	if !ok {
		return
	}
	reqs, err := decodeForward(data)
	if err != nil || len(reqs) > server.MaxBatchDocuments {
		s.log.Warn("a forwarded group send that does not decode", "err", err, "envelopes", len(reqs))
		return // the sender's attempt times out and goes again
	}
	ctx, cancel := context.WithTimeout(context.Background(), groupAttempt)
	for i, r := range reqs {
		r.ctx, r.index = ctx, i
	}
	first := makeGroup(reqs)
	first.finish = sync.OnceFunc(func() {
		cancel()
		reply := &nats.Msg{Data: encodeAnswers(reqs)}
		for _, r := range reqs {
			var e *server.Error
			if errors.As(r.err, &e) && e.Index != nil {
				reply.Header = nats.Header{hdrGroupIndex: {strconv.Itoa(*e.Index)}}
				break
			}
		}
		if err := m.RespondMsg(reply); err != nil {
			s.log.Warn("answering a forwarded group send", "err", err)
		}
	})
	select {
	case s.w.queue <- first:
	default:
		failAll(reqs, server.Errorf(codeBusy, "the writer's queue is full"))
		first.finish()
	}
}

// assemble returns the whole group m is a part of once m is its last part
// and every part arrived. A part before the last is answered (empty:
// kept; with Kez-Busy: send the group again).
func (s *Store) assemble(m *nats.Msg) ([]byte, bool) {
	id := m.Header.Get(hdrGroup)
	if id == "" {
		return m.Data, true
	}
	k, err1 := strconv.Atoi(m.Header.Get(hdrGroupPart))
	n, err2 := strconv.Atoi(m.Header.Get(hdrGroupParts))
	if err1 != nil || err2 != nil || n < 2 || n > maxGroupParts || k < 1 || k > n {
		s.log.Warn("a forwarded group part with bad headers")
		return nil, false
	}
	s.assemblyMu.Lock()
	defer s.assemblyMu.Unlock()
	now := time.Now()
	for gid, a := range s.assemblies { // what a sender gave up on
		if now.Sub(a.started) > 2*forwardAttempt {
			s.assemblyBytes -= a.bytes
			delete(s.assemblies, gid)
		}
	}
	a := s.assemblies[id]
	if a == nil {
		if k != 1 {
			respondBusy(m) // the holder changed: start again
			return nil, false
		}
		a = &groupAssembly{parts: make([][]byte, n), started: now}
		s.assemblies[id] = a
	}
	if len(a.parts) != n || k != a.got+1 || s.assemblyBytes+len(m.Data) > maxAssemblyBytes {
		s.assemblyBytes -= a.bytes
		delete(s.assemblies, id)
		respondBusy(m)
		return nil, false
	}
	a.parts[k-1], a.got, a.bytes = m.Data, k, a.bytes+len(m.Data)
	s.assemblyBytes += len(m.Data)
	if k < n {
		if err := m.Respond(nil); err != nil {
			s.log.Warn("answering a forwarded group part", "err", err)
		}
		return nil, false
	}
	s.assemblyBytes -= a.bytes
	delete(s.assemblies, id)
	return bytes.Join(a.parts, nil), true
}

// respondBusy asks the sender of m to send its group again.
func respondBusy(m *nats.Msg) {
	_ = m.RespondMsg(&nats.Msg{Header: nats.Header{hdrGroupBusy: {"1"}}})
}
