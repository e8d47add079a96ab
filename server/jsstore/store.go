// Package jsstore implements server.Store on NATS JetStream, so that any
// number of stateless chat server replicas share one state.
//
// Envelopes are messages of one stream, KEZ_CHAT_MESSAGES, on the subject
// kez.chat.store.<token> of their recipient (natsbus.Token); an envelope's
// seq is its stream sequence, so it strictly increases per recipient, with
// gaps. The inbox cap is the stream's per-subject limit (discard new), the
// retention its max age, its duplicate window the idempotency window of
// (from, id). One replica at a time writes envelopes, in atomic batches
// (writer.go, lease.go). Users, primary ids, push subscriptions and used
// request signatures are in KV buckets; KV create is atomic, which makes a
// handle and a primary_id unique.
package jsstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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

// Names of the stream and buckets the store keeps its state in.
const (
	StreamName     = "KEZ_CHAT_MESSAGES"
	SubjectPrefix  = "kez.chat.store."
	BucketUsers    = "kez_chat_users"
	BucketPrimary  = "kez_chat_primary_ids"
	BucketPush     = "kez_chat_push"
	BucketReplay   = "kez_chat_replay"
	BucketKeys     = "kez_chat_key_checkpoints"
	BucketAcks     = "kez_chat_acks"
	BucketLinks    = "kez_chat_links"
	maxPage        = 1000
	requestTimeout = 10 * time.Second
)

// idempotencyWindow is how long (sender, id) keeps answering a retry with
// the original seq: three times the clock-skew window, as for SQLite. The
// anti-replay entries are kept as long, beyond any signature's expiry.
const idempotencyWindow = 15 * time.Minute

// Headers of a stored envelope.
const (
	hdrFrom   = "Kez-From"
	hdrID     = "Kez-Id"
	hdrDigest = "Kez-Digest"
	hdrAt     = "Kez-Received-At"
)

// Config describes where and how the state is kept.
type Config struct {
	NATS natsbus.Config
	// Replicas of the stream and buckets (1, 3 or 5; default 1).
	Replicas int
	// Retention is the max age of an envelope (default 30 days).
	Retention time.Duration
	// MaxPending is the per-recipient cap (the stream's max messages per
	// subject); 0: none. AppendMessage's limits are not used: the cap is
	// the stream's, set at Open.
	MaxPending int
	// MaxBytes bounds the stream (0: no limit).
	MaxBytes int64
	// Memory keeps everything in memory instead of files (tests only).
	Memory bool
}

// Store is a server.Store on JetStream.
type Store struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	log    *slog.Logger
	now    func() time.Time

	users, primary, push, replay, keys, acks jetstream.KeyValue
	links, blobRefs                          jetstream.KeyValue
	objects                                  jetstream.ObjectStore
	objectStream                             jetstream.Stream // the object store's, read a chunk at a time

	mu    sync.Mutex
	cache map[string]*server.User // users never change; bounded

	w   *writer
	fw  *forwarder
	fed federationState
	// groupSlots bounds the group sends this replica forwards at once.
	groupSlots chan struct{}
	// assemblies are the forwarded group sends whose parts are coming in
	// (forward.go), assemblyBytes their size.
	assemblyMu    sync.Mutex
	assemblies    map[string]*groupAssembly
	assemblyBytes int
	leader        atomic.Bool   // holds the writer lease
	leaseTerm     atomic.Uint64 // counts the times this replica took the lease
	full          atomic.Uint64 // appends refused with storage_full
	writable      atomic.Bool   // the last Ping found room

	pingMu    sync.Mutex
	pingedAt  time.Time
	pingErr   error
	stop      chan struct{}
	leaseDone chan struct{}
	closeOnce sync.Once
}

var _ server.Store = (*Store)(nil)

const userCacheSize = 4096

// lastCacheSize bounds the recipients whose last seq the writer knows.
const lastCacheSize = 1 << 16

// Open connects to NATS and creates or updates the stream and buckets.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 30 * 24 * time.Hour
	}
	if cfg.NATS.Name == "" {
		cfg.NATS.Name = "kezchat store"
	}
	nc, err := natsbus.Connect(cfg.NATS, log, nil)
	if err != nil {
		return nil, err
	}
	s := &Store{nc: nc, log: log, now: time.Now, cache: make(map[string]*server.User),
		stop: make(chan struct{}), leaseDone: make(chan struct{}),
		groupSlots: make(chan struct{}, forwardInFlight), assemblies: make(map[string]*groupAssembly)}
	s.w, s.fw = newWriter(s), newForwarder(s)
	lease, err := s.setup(ctx, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	go s.w.run()
	go s.fw.run()
	go s.fed.outboxCommits.run()
	go s.holdLease(lease)
	return s, nil
}

func (s *Store) setup(ctx context.Context, cfg Config) (lease jetstream.KeyValue, err error) {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return nil, fmt.Errorf("JetStream: %w", err)
	}
	s.js = js
	storage := jetstream.FileStorage
	if cfg.Memory {
		storage = jetstream.MemoryStorage
	}
	sc := jetstream.StreamConfig{
		Name:        StreamName,
		Description: "kez-chat envelopes, one subject per recipient",
		Subjects:    []string{SubjectPrefix + ">"},
		Storage:     storage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.Retention,
		MaxBytes:    -1,
		MaxMsgs:     -1,
		// A retry of (from, id) is answered with the original seq, as
		// long as the protocol promises.
		Duplicates:         min(idempotencyWindow, cfg.Retention),
		AllowAtomicPublish: true,
		MaxMsgsPerSubject:  -1,
		AllowDirect:        true,
		Discard:            jetstream.DiscardNew,
	}
	if cfg.MaxBytes > 0 {
		sc.MaxBytes = cfg.MaxBytes
	}
	if cfg.MaxPending > 0 {
		sc.MaxMsgsPerSubject = int64(cfg.MaxPending)
		sc.DiscardNewPerSubject = true
	}
	if s.stream, err = js.CreateOrUpdateStream(ctx, sc); err != nil {
		return nil, fmt.Errorf("creating stream %s: %w", StreamName, err)
	}
	bucket := func(name, desc string, ttl time.Duration) (jetstream.KeyValue, error) {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: name, Description: desc, History: 1, TTL: ttl,
			Storage: jetstream.StorageType(storage), Replicas: cfg.Replicas,
		})
		if err != nil {
			return nil, fmt.Errorf("creating bucket %s: %w", name, err)
		}
		return kv, nil
	}
	if s.users, err = bucket(BucketUsers, "kez-chat users by handle token", 0); err != nil {
		return nil, err
	}
	if s.primary, err = bucket(BucketPrimary, "kez-chat handle by primary_id", 0); err != nil {
		return nil, err
	}
	if s.push, err = bucket(BucketPush, "kez-chat push subscriptions by handle token", 0); err != nil {
		return nil, err
	}
	if s.replay, err = bucket(BucketReplay, "kez-chat used request signatures", idempotencyWindow); err != nil {
		return nil, err
	}
	if s.keys, err = bucket(BucketKeys, "kez-chat highest key document verified, by primary_id", 0); err != nil {
		return nil, err
	}
	if s.acks, err = bucket(BucketAcks, "kez-chat acknowledgement points of each handle's devices", 0); err != nil {
		return nil, err
	}
	if s.links, err = bucket(BucketLinks, "kez-chat device-linking channels, and the channels each handle opened", server.LinkTTL); err != nil {
		return nil, err
	}
	if err := s.setupBlobs(ctx, cfg, storage); err != nil {
		return nil, err
	}
	if err := s.setupFederation(ctx, cfg, storage, bucket); err != nil {
		return nil, err
	}
	return bucket(BucketWriter, "kez-chat: the replica that writes envelopes", leaseTTL)
}

// Close gives back the writer lease, stores what is queued and closes the
// connection.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.leaseDone
		close(s.fw.stop)
		<-s.fw.done
		close(s.w.stop)
		<-s.w.done
		close(s.fed.outboxCommits.stop)
		<-s.fed.outboxCommits.done
		s.nc.Close()
	})
	return nil
}

// Ping fails while JetStream cannot answer, and with storage_full while it
// has no room for a large message. It asks JetStream at most once per
// pingEvery (readiness is reachable by anyone) and answers with the last
// outcome in between.
func (s *Store) Ping(ctx context.Context) error {
	s.pingMu.Lock()
	defer s.pingMu.Unlock()
	if !s.pingedAt.IsZero() && time.Since(s.pingedAt) < pingEvery {
		return s.pingErr
	}
	err := s.checkRoom(ctx)
	if ctx.Err() != nil {
		return err
	}
	s.pingedAt, s.pingErr = time.Now(), err
	s.writable.Store(err == nil)
	return err
}

// pingEvery bounds how often Ping asks JetStream.
const pingEvery = 2 * time.Second

// roomNeeded is what Ping wants free: more than the largest message.
const roomNeeded = 128 << 10

// checkRoom fails while JetStream answers no account information, or has
// no room for one more large message: in the account's storage, or under
// the stream's MaxBytes (storage_full).
func (s *Store) checkRoom(ctx context.Context) error {
	info, err := s.js.AccountInfo(ctx)
	if err != nil {
		return fmt.Errorf("JetStream: %w", err)
	}
	full := &server.Error{Code: server.CodeStorageFull, RetryAfter: time.Minute, Message: "the message store is full"}
	if max := info.Limits.MaxStore; max > 0 && int64(info.Store)+roomNeeded > max {
		return full
	}
	si, err := s.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("JetStream stream %s: %w", StreamName, err)
	}
	if max := si.Config.MaxBytes; max > 0 && int64(si.State.Bytes)+roomNeeded > max {
		return full
	}
	return nil
}

// WriteFailures counts the appends refused because the store was full; a
// JetStream store tells no other write failure apart.
func (s *Store) WriteFailures() (full, io uint64) { return s.full.Load(), 0 }

// Writable reports the outcome of the last Ping.
func (s *Store) Writable() bool { return s.writable.Load() }

func subject(handle string) string { return SubjectPrefix + natsbus.Token(handle) }

func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, requestTimeout)
}

// userRecord is a user in the users bucket.
type userRecord struct {
	Handle    string `json:"handle"`
	Server    string `json:"server"`
	PrimaryID string `json:"primary_id"`
	Alg       string `json:"alg"`
	Key       []byte `json:"key"`
	EncKey    []byte `json:"enc_key"`
	CreatedAt int64  `json:"created_at"`
}

// CreateUser claims u's primary_id, then its handle, each by an atomic KV
// create; when the handle is taken the primary_id claim is withdrawn.
func (s *Store) CreateUser(ctx context.Context, u *server.User) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	created := u.CreatedAt
	if created.IsZero() {
		created = s.now()
	}
	rec, err := json.Marshal(userRecord{Handle: u.Handle, Server: u.Server, PrimaryID: u.PrimaryID, Alg: u.Alg,
		Key: u.Key, EncKey: u.EncKey, CreatedAt: created.Unix()})
	if err != nil {
		return fmt.Errorf("encoding user %s: %w", u.Handle, err)
	}
	rev, err := s.primary.Create(ctx, u.PrimaryID, []byte(u.Handle))
	if errors.Is(err, jetstream.ErrKeyExists) {
		if rev, err = s.reclaimPrimaryID(ctx, u); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("claiming primary_id of %s: %w", u.Handle, err)
	}
	if _, err := s.users.Create(ctx, natsbus.Token(u.Handle), rec); err != nil {
		if derr := s.primary.Delete(ctx, u.PrimaryID, jetstream.LastRevision(rev)); derr != nil {
			s.log.Warn("withdrawing a primary_id claim", "primary_id", u.PrimaryID, "err", derr)
		}
		if errors.Is(err, jetstream.ErrKeyExists) {
			return server.Errorf(server.CodeHandleTaken, "handle %q is already registered", u.Handle)
		}
		return fmt.Errorf("creating user %s: %w", u.Handle, err)
	}
	return nil
}

// orphanAge is how old a primary_id claim whose handle was never created
// must be before another registration may take it over: a registration
// that died between its two creates leaves one.
const orphanAge = time.Minute

// reclaimPrimaryID answers a taken primary_id: taken, unless the claim is
// an old orphan, which it takes over (by revision, so once).
func (s *Store) reclaimPrimaryID(ctx context.Context, u *server.User) (uint64, error) {
	taken := server.Errorf(server.CodePrimaryIDTaken, "primary_id %s is already registered to another handle", u.PrimaryID)
	e, err := s.primary.Get(ctx, u.PrimaryID)
	if err != nil {
		return 0, taken
	}
	if s.now().Sub(e.Created()) < orphanAge {
		return 0, taken
	}
	if _, err := s.users.Get(ctx, natsbus.Token(string(e.Value()))); !errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, taken
	}
	rev, err := s.primary.Update(ctx, u.PrimaryID, []byte(u.Handle), e.Revision())
	if err != nil {
		return 0, taken
	}
	return rev, nil
}

// UserByHandle returns the user or unknown_handle.
func (s *Store) UserByHandle(ctx context.Context, handle string) (*server.User, error) {
	s.mu.Lock()
	u := s.cache[handle]
	s.mu.Unlock()
	if u != nil {
		return cloneUser(u), nil
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	e, err := s.users.Get(ctx, natsbus.Token(handle))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, server.Errorf(server.CodeUnknownHandle, "no user %q", handle)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up %s: %w", handle, err)
	}
	var r userRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("decoding user %s: %w", handle, err)
	}
	u = &server.User{Handle: r.Handle, Server: r.Server, PrimaryID: r.PrimaryID, Alg: r.Alg,
		Key: r.Key, EncKey: r.EncKey, CreatedAt: time.Unix(r.CreatedAt, 0)}
	s.mu.Lock()
	if len(s.cache) >= userCacheSize {
		for k := range s.cache { // evict one at random
			delete(s.cache, k)
			break
		}
	}
	s.cache[handle] = u
	s.mu.Unlock()
	return cloneUser(u), nil
}

func cloneUser(u *server.User) *server.User {
	c := *u
	c.Key, c.EncKey = slices.Clone(u.Key), slices.Clone(u.EncKey)
	return &c
}

// idKey is (sender, id)'s Nats-Msg-Id: ids may hold any character.
func idKey(sender, id string) string {
	h := sha256.Sum256([]byte(sender + "\x00" + id))
	return hex.EncodeToString(h[:20])
}

// AppendMessage has the writer store e and waits for JetStream's
// acknowledgement; see server.Store. The inbox's cap is the stream's per
// subject (Config.MaxPending), not limits: JetStream keeps no bytes per
// subject, so an inbox's bytes are bounded by its count cap times the
// largest message, and the stream by Config.MaxBytes.
func (s *Store) AppendMessage(ctx context.Context, e *server.Envelope, _ server.InboxLimits) (bool, error) {
	if _, err := s.UserByHandle(ctx, e.Recipient); err != nil {
		return false, err
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	r := s.newAppendRequest(ctx, e)
	remote := remoteSender(e.Sender)
	if remote {
		if dup, err := s.storedRemote(ctx, e, r.digest); dup || err != nil {
			return dup, err
		}
	}
	err := s.referenceBlobs(ctx, e, func() error {
		if err := s.submit(ctx, r); err != nil {
			return err
		}
		if r.err != nil {
			return r.err
		}
		r.answer(e)
		return nil
	})
	if err != nil {
		return false, err
	}
	if remote && !r.dup {
		s.rememberRemote(ctx, []*appendRequest{r})
	}
	return r.dup, nil
}

// AppendMessages has the writer store envs in one atomic batch, never
// parted, and waits for JetStream's acknowledgement; see server.Store.
func (s *Store) AppendMessages(ctx context.Context, envs []*server.Envelope, _ server.InboxLimits) ([]bool, error) {
	for i, e := range envs {
		if _, err := s.UserByHandle(ctx, e.Recipient); err != nil {
			return nil, server.AtIndex(err, i)
		}
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	dups := make([]bool, len(envs))
	// Remote senders' envelopes stored within the federation window are
	// answered from their records and left out of the group.
	var fresh []*server.Envelope
	var reqs []*appendRequest
	for i, e := range envs {
		r := s.newAppendRequest(ctx, e)
		if remoteSender(e.Sender) {
			dup, err := s.storedRemote(ctx, e, r.digest)
			if err != nil {
				return nil, server.AtIndex(err, i)
			}
			if dups[i] = dup; dup {
				continue
			}
		}
		r.index = i
		fresh, reqs = append(fresh, e), append(reqs, r)
	}
	if len(reqs) == 0 {
		return dups, nil
	}
	err := s.referenceEveryBlob(ctx, fresh, 0, func() error {
		if err := s.submitGroup(ctx, reqs); err != nil {
			return err
		}
		for i, r := range reqs {
			if r.err != nil {
				return r.err
			}
			r.answer(fresh[i])
			dups[r.index] = r.dup
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.rememberRemote(ctx, slices.DeleteFunc(reqs, func(r *appendRequest) bool { return r.dup || !remoteSender(r.sender) }))
	return dups, nil
}

// referenceEveryBlob runs store, the atomic append of envs[from:], inside
// referenceBlobs of each envelope: every envelope's blobs are referenced
// pending before it, and stored (or withdrawn) after it. A refusal of one
// envelope's blobs names its index.
func (s *Store) referenceEveryBlob(ctx context.Context, envs []*server.Envelope, from int, store func() error) error {
	if from == len(envs) {
		return store()
	}
	inner := false
	err := s.referenceBlobs(ctx, envs[from], func() error {
		inner = true
		return s.referenceEveryBlob(ctx, envs, from+1, store)
	})
	if err != nil && !inner {
		return server.AtIndex(err, from)
	}
	return err
}

// newAppendRequest is e on its way to the stream. AppendMessage and
// AppendMessages both make each envelope's request here, and envelopeMsg
// (writer.go) makes each stream message; what an envelope carries to the
// stream is decided in these two places only.
func (s *Store) newAppendRequest(ctx context.Context, e *server.Envelope) *appendRequest {
	sum := sha256.Sum256(e.Message)
	return &appendRequest{
		ctx: ctx, recipient: e.Recipient, sender: e.Sender, id: e.ID, key: idKey(e.Sender, e.ID),
		digest: hex.EncodeToString(sum[:]), at: s.now().Unix(), message: e.Message,
	}
}

// answer sets e's seq, prev and received-at from r's answer.
func (r *appendRequest) answer(e *server.Envelope) {
	e.Seq, e.Prev, e.ReceivedAt = r.seq, r.prev, time.Unix(r.at, 0)
}

// directGet is the batch direct-get request of the JetStream API.
type directGet struct {
	Seq       uint64     `json:"seq,omitempty"`
	NextFor   string     `json:"next_by_subj"`
	Batch     int        `json:"batch"`
	MaxBytes  int        `json:"max_bytes,omitempty"`
	StartTime *time.Time `json:"start_time,omitempty"`
}

// maxEnvelopeOverhead bounds the subject and headers JetStream sends with a
// stored envelope (handles and ids are short).
const maxEnvelopeOverhead = 1 << 10

// Messages reads up to limit (clamped to [1, 1000]) envelopes of recipient
// after since with one batch direct get, until their messages reach
// maxBytes.
func (s *Store) Messages(ctx context.Context, recipient string, since uint64, limit, maxBytes int) ([]*server.Envelope, error) {
	limit = min(max(limit, 1), maxPage)
	envs := make([]*server.Envelope, 0, min(limit, 64))
	if since >= math.MaxInt64 {
		return envs, nil
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if maxBytes <= 0 {
		maxBytes = math.MaxInt32 - limit*maxEnvelopeOverhead
	}
	// JetStream stops once what it sent reaches MaxBytes, counting
	// subjects and headers too: asked for that much more, it sends at
	// least the messages server.Store promises, and the loop below stops
	// where the messages alone reach maxBytes.
	req := directGet{Seq: since + 1, NextFor: subject(recipient), Batch: limit, MaxBytes: maxBytes + limit*maxEnvelopeOverhead}
	total := 0
	err := s.directBatch(ctx, StreamName, req, limit, func(m *nats.Msg) (bool, error) {
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return false, fmt.Errorf("bad sequence header: %w", err)
		}
		at, _ := strconv.ParseInt(m.Header.Get(hdrAt), 10, 64)
		envs = append(envs, &server.Envelope{
			Recipient: recipient, Seq: seq, ReceivedAt: time.Unix(at, 0),
			Sender: m.Header.Get(hdrFrom), ID: m.Header.Get(hdrID), Message: m.Data,
		})
		total += len(m.Data)
		return total < maxBytes, nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading inbox of %s after %d: %w", recipient, since, err)
	}
	return envs, nil
}

// directBatch sends req, a batch direct get of at most batch messages of
// stream, and hands each message to each until the batch ends or each
// returns false.
func (s *Store) directBatch(ctx context.Context, stream string, req directGet, batch int, each func(*nats.Msg) (bool, error)) error {
	body, _ := json.Marshal(req)
	inbox := s.nc.NewRespInbox()
	// The answer is at most batch messages and the end-of-batch status: a
	// channel of that size holds it all. (SubscribeSync would allocate one
	// of 64k entries, 512 KiB, per read; a stream following a recipient
	// whose seqs have gaps reads once per live envelope.)
	ch := make(chan *nats.Msg, batch+1)
	sub, err := s.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := s.nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, body); err != nil {
		return err
	}
	for {
		var m *nats.Msg
		select {
		case m = <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		switch status := m.Header.Get("Status"); status {
		case "":
		case "204", "404": // end of batch; nothing at all
			return nil
		default:
			return fmt.Errorf("status %s %s", status, m.Header.Get("Description"))
		}
		more, err := each(m)
		if err != nil || !more {
			return err
		}
	}
}

// purgeResponse is the JetStream API's answer to a purge.
type purgeResponse struct {
	Success bool                `json:"success"`
	Purged  uint64              `json:"purged"`
	Error   *jetstream.APIError `json:"error,omitempty"`
}

// ackPoints are a handle's devices' acknowledgement points, the value of
// its key in the acks bucket.
type ackPoints map[string]uint64

// Ack records device's point in the acks bucket by compare-and-set, then
// purges recipient's subject below the lowest point + 1; see server.Store.
// Purges only ever move forward, so two acks at once purge what the later
// points allow.
func (s *Store) Ack(ctx context.Context, recipient, device string, upto uint64, devices []string) (int, error) {
	if _, err := s.UserByHandle(ctx, recipient); server.ErrorCode(err) == server.CodeUnknownHandle {
		return 0, nil
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	key := natsbus.Token(recipient)
	var lowest uint64
	for attempt := 0; ; attempt++ {
		points := ackPoints{}
		var rev uint64
		e, err := s.acks.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &points); err != nil {
				return 0, fmt.Errorf("decoding the acknowledgement points of %s: %w", recipient, err)
			}
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return 0, fmt.Errorf("reading the acknowledgement points of %s: %w", recipient, err)
		}
		points[device] = max(points[device], upto)
		lowest = math.MaxUint64 // the device's own point is among them, kept
		for d, p := range points {
			if d != device && devices != nil && !slices.Contains(devices, d) {
				delete(points, d) // no longer authorized
				continue
			}
			lowest = min(lowest, p)
		}
		val, _ := json.Marshal(points)
		if rev == 0 {
			_, err = s.acks.Create(ctx, key, val)
		} else {
			_, err = s.acks.Update(ctx, key, val, rev)
		}
		if err == nil {
			break
		}
		if attempt >= 10 || ctx.Err() != nil {
			return 0, fmt.Errorf("writing the acknowledgement points of %s: %w", recipient, err)
		}
	}
	if lowest == 0 {
		return 0, nil
	}
	return s.purgeUpTo(ctx, recipient, lowest)
}

// purgeUpTo purges recipient's subject below upto+1.
func (s *Store) purgeUpTo(ctx context.Context, recipient string, upto uint64) (int, error) {
	purged, err := s.purgeSubject(ctx, StreamName, subject(recipient), upto)
	if err != nil {
		return 0, fmt.Errorf("acknowledging inbox of %s up to %d: %w", recipient, upto, err)
	}
	if err := s.ReleaseBlobRefs(ctx, recipient, upto); err != nil {
		// The envelopes are gone; PruneBlobs finds their references dead.
		s.log.Warn("releasing blob references", "handle", recipient, "upto", upto, "err", err)
	}
	return purged, nil
}

// purgeSubject purges subject of stream below upto+1 (all of it for
// math.MaxUint64) and reports how many messages went.
func (s *Store) purgeSubject(ctx context.Context, stream, subject string, upto uint64) (int, error) {
	req := map[string]any{"filter": subject}
	if upto < math.MaxUint64 {
		req["seq"] = upto + 1
	}
	body, _ := json.Marshal(req)
	m, err := s.nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+stream, body)
	if err != nil {
		return 0, err
	}
	var r purgeResponse
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return 0, fmt.Errorf("decoding the answer to a purge: %w", err)
	}
	if r.Error != nil || !r.Success {
		return 0, fmt.Errorf("purge refused: %v", r.Error)
	}
	return int(r.Purged), nil
}

// UseOnce creates digest's key in the replay bucket: a second create fails.
// Entries live 15 minutes, past every expiry a signature's ts allows.
func (s *Store) UseOnce(ctx context.Context, digest []byte, _, _ time.Time) (bool, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	_, err := s.replay.Create(ctx, hex.EncodeToString(digest), nil)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyExists):
		return false, nil
	default:
		return false, fmt.Errorf("recording request digest: %w", err)
	}
}

// pushRecord is one subscription in a handle's push key.
type pushRecord struct {
	Endpoint  string `json:"endpoint"`
	P256dh    []byte `json:"p256dh"`
	Auth      []byte `json:"auth"`
	CreatedAt int64  `json:"created_ns"`
}

// updatePush applies change to handle's subscriptions with optimistic
// concurrency: a concurrent writer makes it read and apply again.
func (s *Store) updatePush(ctx context.Context, handle string, change func([]pushRecord) []pushRecord) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	key := natsbus.Token(handle)
	for attempt := 0; ; attempt++ {
		var recs []pushRecord
		var rev uint64
		e, err := s.push.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &recs); err != nil {
				return fmt.Errorf("decoding push subscriptions of %s: %w", handle, err)
			}
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return fmt.Errorf("reading push subscriptions of %s: %w", handle, err)
		}
		val, _ := json.Marshal(change(recs))
		if rev == 0 {
			_, err = s.push.Create(ctx, key, val)
		} else {
			_, err = s.push.Update(ctx, key, val, rev)
		}
		if err == nil {
			return nil
		}
		if attempt >= 10 || ctx.Err() != nil {
			return fmt.Errorf("writing push subscriptions of %s: %w", handle, err)
		}
	}
}

// SavePushSubscription upserts sub by endpoint and evicts the oldest
// beyond max.
func (s *Store) SavePushSubscription(ctx context.Context, sub *server.PushSubscription, max int) error {
	return s.updatePush(ctx, sub.Handle, func(recs []pushRecord) []pushRecord {
		recs = slices.DeleteFunc(recs, func(r pushRecord) bool { return r.Endpoint == sub.Endpoint })
		recs = append(recs, pushRecord{Endpoint: sub.Endpoint, P256dh: sub.P256dh, Auth: sub.Auth, CreatedAt: sub.CreatedAt.UnixNano()})
		sortPush(recs)
		if max > 0 && len(recs) > max {
			recs = recs[len(recs)-max:]
		}
		return recs
	})
}

// DeletePushSubscription deletes handle's subscription at endpoint.
func (s *Store) DeletePushSubscription(ctx context.Context, handle, endpoint string) (bool, error) {
	found := false
	err := s.updatePush(ctx, handle, func(recs []pushRecord) []pushRecord {
		n := len(recs)
		recs = slices.DeleteFunc(recs, func(r pushRecord) bool { return r.Endpoint == endpoint })
		found = len(recs) < n
		return recs
	})
	return found, err
}

// PushSubscriptions returns handle's subscriptions, oldest first.
func (s *Store) PushSubscriptions(ctx context.Context, handle string) ([]*server.PushSubscription, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	e, err := s.push.Get(ctx, natsbus.Token(handle))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing push subscriptions of %s: %w", handle, err)
	}
	var recs []pushRecord
	if err := json.Unmarshal(e.Value(), &recs); err != nil {
		return nil, fmt.Errorf("decoding push subscriptions of %s: %w", handle, err)
	}
	subs := make([]*server.PushSubscription, 0, len(recs))
	for _, r := range recs {
		subs = append(subs, &server.PushSubscription{Handle: handle, Endpoint: r.Endpoint, P256dh: r.P256dh, Auth: r.Auth, CreatedAt: time.Unix(0, r.CreatedAt)})
	}
	return subs, nil
}

// sortPush orders oldest first, then by endpoint.
func sortPush(recs []pushRecord) {
	slices.SortFunc(recs, func(a, b pushRecord) int {
		if a.CreatedAt != b.CreatedAt {
			if a.CreatedAt < b.CreatedAt {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Endpoint, b.Endpoint)
	})
}

// Prune does nothing: the stream's max age expires envelopes and the
// buckets' TTL message ids, request digests and link channels, on the NATS
// server.
func (s *Store) Prune(context.Context, time.Time, time.Time) (server.PruneResult, error) {
	return server.PruneResult{}, nil
}
