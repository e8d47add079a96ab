package jsstore

import (
	"context"
	"slices"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Group commit for the outbox: an atomic batch costs JetStream a staging
// store of its own, milliseconds whatever the batch holds (and several
// fsyncs with every write fsynced), so the batches of concurrent sends and
// deliveries (different senders' records) go to JetStream as one. Batches that expect the same subject never share one,
// since JetStream refuses a second expectation (or rollup) of a subject in
// a batch; and when a shared batch is refused, each goes again alone, to
// get its own answer.

// maxOutboxBatch is the most messages JetStream takes in an atomic batch.
const maxOutboxBatch = 1000

// groupCommit is one caller's batch and its answer.
type groupCommit struct {
	msgs []*nats.Msg
	err  error
	done chan struct{}
}

// groupCommitter commits the batches callers queue, together when they
// can.
type groupCommitter struct {
	s     *Store
	queue chan *groupCommit
	stop  chan struct{}
	done  chan struct{}
}

func newGroupCommitter(s *Store) *groupCommitter {
	return &groupCommitter{s: s, queue: make(chan *groupCommit, 256), stop: make(chan struct{}), done: make(chan struct{})}
}

// commit stores msgs, all of gc's stream, as one atomic batch, maybe with
// other callers'.
func (gc *groupCommitter) commit(ctx context.Context, msgs []*nats.Msg) error {
	c := &groupCommit{msgs: msgs, done: make(chan struct{})}
	select {
	case gc.queue <- c:
	case <-gc.stop:
		return errStoreClosed
	case <-ctx.Done():
		return unavailable("the outbox is busy")
	}
	select {
	case <-c.done:
		return c.err
	case <-gc.done: // queued as the store closed: answered, or never taken
		select {
		case <-c.done:
			return c.err
		default:
			return errStoreClosed
		}
	case <-ctx.Done(): // it may still be stored: the caller's retry reads again
		return unavailable("the outbox did not answer in time")
	}
}

// expects is the subjects of c's messages that expect their last seq.
func (c *groupCommit) expects() []string {
	var subjects []string
	for _, m := range c.msgs {
		if m.Header.Get(jetstream.ExpectedLastSubjSeqHeader) != "" {
			subjects = append(subjects, m.Subject)
		}
	}
	return subjects
}

// run commits what is queued until stop.
func (oc *groupCommitter) run() {
	defer close(oc.done)
	var carry *groupCommit // did not fit in the last group
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-oc.queue:
			case <-oc.stop:
				oc.refuseQueued()
				return
			}
		}
		group, n := []*groupCommit{first}, len(first.msgs)
		taken := make(map[string]bool)
		for _, subj := range first.expects() {
			taken[subj] = true
		}
	gather:
		for {
			select {
			case c := <-oc.queue:
				subjects := c.expects()
				if n+len(c.msgs) > maxOutboxBatch || slices.ContainsFunc(subjects, func(s string) bool { return taken[s] }) {
					carry = c
					break gather
				}
				for _, subj := range subjects {
					taken[subj] = true
				}
				group, n = append(group, c), n+len(c.msgs)
			default:
				break gather
			}
		}
		oc.commitGroup(group)
	}
}

// refuseQueued answers what is still queued at the store's close.
func (oc *groupCommitter) refuseQueued() {
	for {
		select {
		case c := <-oc.queue:
			c.err = errStoreClosed
			close(c.done)
		default:
			return
		}
	}
}

// commitGroup stores group as one batch or, refused, each alone.
func (oc *groupCommitter) commitGroup(group []*groupCommit) {
	defer func() {
		for _, c := range group {
			close(c.done)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if len(group) == 1 {
		group[0].err = oc.s.publishBatch(ctx, group[0].msgs)
		return
	}
	var all []*nats.Msg
	for _, c := range group {
		all = append(all, c.msgs...)
	}
	if err := oc.s.publishBatch(ctx, all); err == nil {
		return
	}
	// One of them was refused (another replica's change of a subject it
	// expects, mostly), or the batch went unanswered; expecting what they
	// read, each goes again alone safely.
	for _, c := range group {
		c.err = oc.s.publishBatch(ctx, c.msgs)
	}
}

// senderLocks make one replica's changes of a sender's outbox records take
// turns: a change read before another's commit would be refused, and
// refused in a shared batch it sends the batch's other callers alone too.
// (Other replicas' changes still race, rarely, and are read again.)
type senderLocks struct {
	mu   sync.Mutex
	held map[string]*senderLock
}

type senderLock struct {
	sync.Mutex
	users int
}

// lock takes key's lock and returns its release.
func (l *senderLocks) lock(key string) (unlock func()) {
	l.mu.Lock()
	if l.held == nil {
		l.held = make(map[string]*senderLock)
	}
	k := l.held[key]
	if k == nil {
		k = &senderLock{}
		l.held[key] = k
	}
	k.users++
	l.mu.Unlock()
	k.Lock()
	return func() {
		k.Unlock()
		l.mu.Lock()
		if k.users--; k.users == 0 {
			delete(l.held, key)
		}
		l.mu.Unlock()
	}
}
