// Package sigclient is the chat server's view of its sig-server: a
// server.KeyResolver that fetches an identity's key documents, verifies
// their chain, and caches the result.
//
// Every document is signed by the identity's primary key, so the sig-server
// cannot forge one; what it could do is serve an old one (hiding a
// revocation) or a second history. So the resolver remembers the highest
// version it has verified per identity and its hash, accepts a newer one
// only as a verified continuation of that chain, and refuses anything older
// or different, logging it. When the sig-server cannot be reached, what was
// verified before keeps being used.
package sigclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
)

// Config is the resolver's policy.
type Config struct {
	// URL is the sig-server's base URL, e.g. http://kez-sig-server:7878.
	URL string
	// TTL is how long a verified answer is used before the sig-server is
	// asked again; it bounds how long a revoked key keeps working. Zero
	// asks every time (tests).
	TTL time.Duration
	// MinRefresh is how long after the last such request a key the cached
	// document does not hold makes the resolver ask again (RefreshKeys):
	// a device linked a moment ago is known at once, and unknown keys cost
	// one request per identity per MinRefresh. Fetches for the TTL do not
	// count, so one made just before a device was published hides nothing.
	MinRefresh time.Duration
	// RetryAfter is how long after a failed fetch the sig-server is left
	// alone, so an outage costs one request per identity per RetryAfter.
	RetryAfter time.Duration
	// MaxIdentities bounds the cache. Past it an arbitrary entry is
	// forgotten, and with it that identity's highest verified version.
	MaxIdentities int
	// Timeout bounds one resolution (all its requests).
	Timeout time.Duration
	// HTTPClient makes the requests; a plain client when nil.
	HTTPClient *http.Client
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Checkpoints, when set, keep the highest document verified per
	// identity in the chat server's store, so a restart or another replica
	// never takes an older one; nil keeps them in memory only.
	Checkpoints server.KeyCheckpoints
}

// DefaultConfig returns the defaults of `kezchat server --help`.
func DefaultConfig() Config {
	return Config{TTL: 30 * time.Second, MinRefresh: time.Second, RetryAfter: 5 * time.Second, MaxIdentities: 100_000, Timeout: 5 * time.Second}
}

// Fetch outcomes, the values of the outcome label.
const (
	outcomeUpdated     = "updated"     // a newer version, its chain verified
	outcomeUnchanged   = "unchanged"   // the version already verified
	outcomeNone        = "none"        // the identity has published nothing
	outcomeRollback    = "rollback"    // an older version than one verified: refused
	outcomeFork        = "fork"        // another document for a verified version: refused
	outcomeInvalid     = "invalid"     // a document or chain that does not verify: refused
	outcomeUnreachable = "unreachable" // no answer, or a 5xx
)

// Resolver is a server.KeyResolver over one sig-server.
type Resolver struct {
	cfg  Config
	base string
	http *http.Client
	log  *slog.Logger

	mu       sync.Mutex
	entries  map[string]*entry
	inflight map[string]*call

	fetches *prometheus.CounterVec
	up      prometheus.Gauge
}

var _ server.KeyResolver = (*Resolver)(nil)

// entry is what is known of one identity.
type entry struct {
	doc      *server.KeyDocument // highest verified version; nil: none published
	known    bool                // a fetch has succeeded at least once
	checked  time.Time           // last successful fetch
	missedAt time.Time           // last fetch a key the document lacked asked for (RefreshKeys)
	failedAt time.Time           // last failed fetch
	err      error               // why it failed
}

// call is one fetch in flight, shared by every caller for its identity.
type call struct {
	done chan struct{}
	doc  *server.KeyDocument
	err  error
}

// New returns a Resolver for cfg.URL, registering its metrics with reg.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Resolver, error) {
	u, err := url.Parse(strings.TrimRight(cfg.URL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("sig-server URL %q: want http(s)://host[:port]", cfg.URL)
	}
	def := DefaultConfig()
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = def.RetryAfter
	}
	if cfg.MaxIdentities <= 0 {
		cfg.MaxIdentities = def.MaxIdentities
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Resolver{
		cfg: cfg, base: u.String(), http: cfg.HTTPClient, log: log,
		entries: make(map[string]*entry), inflight: make(map[string]*call),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kezchat_sig_fetches_total",
			Help: "Key document resolutions from the sig-server by outcome: updated, unchanged, none, rollback, fork, invalid, unreachable.",
		}, []string{"outcome"}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kezchat_sig_server_up",
			Help: "1 when the last request to the sig-server was answered, 0 when it failed (registered keys and cached documents keep working).",
		}),
	}
	r.up.Set(1)
	reg.MustRegister(r.fetches, r.up, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kezchat_sig_cached_identities",
		Help: "Identities whose key documents the chat server holds.",
	}, func() float64 {
		r.mu.Lock()
		defer r.mu.Unlock()
		return float64(len(r.entries))
	}))
	return r, nil
}

// ResolveKeys returns the latest verified key document of primaryID, nil
// when it has published none.
func (r *Resolver) ResolveKeys(ctx context.Context, primaryID string) (*server.KeyDocument, error) {
	return r.resolve(ctx, primaryID, false)
}

// RefreshKeys asks the sig-server again unless a key the cached document
// lacked did so less than MinRefresh ago; see server.KeyResolver. It counts
// misses, not fetches: a fetch made for the TTL just before a device was
// published does not hide the device.
func (r *Resolver) RefreshKeys(ctx context.Context, primaryID string) (*server.KeyDocument, error) {
	return r.resolve(ctx, primaryID, true)
}

// resolve answers from the cache while it is fresh (within the TTL; for a
// miss, within MinRefresh of the last miss), else from the sig-server (one
// fetch shared by concurrent callers).
func (r *Resolver) resolve(ctx context.Context, primaryID string, miss bool) (*server.KeyDocument, error) {
	if !server.ValidPrimaryID(primaryID) {
		return nil, fmt.Errorf("resolving keys: malformed primary_id %.64q", primaryID)
	}
	now := r.cfg.Now()
	r.mu.Lock()
	e := r.entries[primaryID]
	switch {
	case e != nil && e.known && !miss && now.Sub(e.checked) < r.cfg.TTL,
		e != nil && e.known && miss && now.Sub(e.missedAt) < r.cfg.MinRefresh:
		r.mu.Unlock()
		return e.doc, nil
	case e != nil && !e.failedAt.IsZero() && now.Sub(e.failedAt) < r.cfg.RetryAfter:
		r.mu.Unlock()
		return e.stale()
	}
	if miss && e != nil {
		e.missedAt = now
	}
	c, shared := r.inflight[primaryID]
	if !shared {
		c = &call{done: make(chan struct{})}
		r.inflight[primaryID] = c
		var prior *server.KeyDocument
		if e != nil {
			prior = e.doc
		}
		// The fetch outlives a caller that gives up: the others share it.
		go r.run(context.WithoutCancel(ctx), primaryID, prior, c)
	}
	r.mu.Unlock()
	select {
	case <-c.done:
		return c.doc, c.err
	case <-ctx.Done():
		return nil, fmt.Errorf("resolving keys of %s: %w", primaryID, ctx.Err())
	}
}

// stale answers from what was verified before, when the sig-server failed.
func (e *entry) stale() (*server.KeyDocument, error) {
	if e.known {
		return e.doc, nil
	}
	return nil, e.err
}

func (r *Resolver) run(ctx context.Context, primaryID string, prior *server.KeyDocument, c *call) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	prior, err := r.checkpoint(ctx, primaryID, prior)
	var doc *server.KeyDocument
	var outcome string
	var raw []byte
	if err != nil {
		outcome = outcomeUnreachable
	} else {
		doc, raw, outcome, err = r.fetch(ctx, primaryID, prior)
	}
	if outcome == outcomeUpdated && r.cfg.Checkpoints != nil {
		if err := r.cfg.Checkpoints.SaveKeyCheckpoint(ctx, primaryID, doc.Version, raw); err != nil {
			// Verified all the same; the next fetch saves it again.
			r.log.WarnContext(ctx, "saving a verified key document", "primary_id", primaryID, "version", doc.Version, "err", err)
		}
	}
	r.fetches.WithLabelValues(outcome).Inc()
	if outcome == outcomeUnreachable {
		r.up.Set(0)
	} else {
		r.up.Set(1)
	}
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inflight, primaryID)
	e := r.entries[primaryID]
	if e == nil {
		if len(r.entries) >= r.cfg.MaxIdentities {
			for k := range r.entries {
				delete(r.entries, k)
				break
			}
		}
		e = &entry{}
		r.entries[primaryID] = e
	}
	if err != nil {
		e.failedAt, e.err = now, err
		if !e.known && prior != nil {
			// Verified before this process knew it (by a restart's
			// predecessor or another replica): it keeps working.
			e.doc, e.known = prior, true
		}
		if outcome == outcomeUnreachable {
			r.log.WarnContext(ctx, "sig-server unreachable; using registered keys and cached documents", "primary_id", primaryID, "err", err)
		} else {
			r.log.ErrorContext(ctx, "sig-server answered a key chain that does not verify; refused", "primary_id", primaryID, "err", err)
		}
		c.doc, c.err = e.stale()
	} else {
		e.doc, e.known, e.checked, e.failedAt, e.err = doc, true, now, time.Time{}, nil
		c.doc = doc
	}
	close(c.done)
}

// checkpoint is the higher of prior, what this resolver verified, and the
// document the store keeps for primaryID (that a restart or another
// replica verified).
func (r *Resolver) checkpoint(ctx context.Context, primaryID string, prior *server.KeyDocument) (*server.KeyDocument, error) {
	if r.cfg.Checkpoints == nil {
		return prior, nil
	}
	raw, err := r.cfg.Checkpoints.KeyCheckpoint(ctx, primaryID)
	if err != nil || raw == nil {
		return prior, err
	}
	stored, err := server.ParseKeyDocumentJSON(raw)
	if err != nil || stored.PrimaryID != primaryID {
		// The store holds what this server verified: nothing to act on.
		r.log.ErrorContext(ctx, "a stored key document does not verify; ignored", "primary_id", primaryID, "err", err)
		return prior, nil
	}
	if prior == nil || stored.Version > prior.Version {
		return stored, nil
	}
	return prior, nil
}

// fetch asks for the latest document and, when it is newer than prior,
// verifies the chain from prior (or from version 1) up to it, and returns
// it with its raw JSON. A rollback or fork keeps prior: it is logged and
// counted, not an error.
func (r *Resolver) fetch(ctx context.Context, primaryID string, prior *server.KeyDocument) (*server.KeyDocument, []byte, string, error) {
	var raw json.RawMessage
	err := r.get(ctx, "/v1/keys/"+primaryID, server.MaxKeyDocument+1024, &raw)
	var nf notFound
	switch {
	case errors.As(err, &nf) && prior == nil:
		return nil, nil, outcomeNone, nil
	case errors.As(err, &nf):
		r.log.WarnContext(ctx, "sig-server no longer has an identity whose keys were verified; keeping them (rollback refused)",
			"primary_id", primaryID, "verified_version", prior.Version)
		return prior, nil, outcomeRollback, nil
	case errors.Is(err, errInvalid):
		return nil, nil, outcomeInvalid, err
	case err != nil:
		return nil, nil, outcomeUnreachable, err
	}
	latest, err := server.ParseKeyDocumentJSON(raw)
	if err != nil {
		return nil, nil, outcomeInvalid, fmt.Errorf("%w: latest document of %s: %v", errInvalid, primaryID, err)
	}
	if latest.PrimaryID != primaryID {
		return nil, nil, outcomeInvalid, fmt.Errorf("%w: asked for %s, got a document of %s", errInvalid, primaryID, latest.PrimaryID)
	}
	if prior != nil {
		switch {
		case latest.Version < prior.Version:
			r.log.WarnContext(ctx, "sig-server served an older key document than one already verified; keeping the newer (rollback refused)",
				"primary_id", primaryID, "served_version", latest.Version, "verified_version", prior.Version)
			return prior, nil, outcomeRollback, nil
		case latest.Version == prior.Version && string(latest.Hash) == string(prior.Hash):
			return prior, nil, outcomeUnchanged, nil
		case latest.Version == prior.Version:
			r.log.ErrorContext(ctx, "sig-server served a different document for a version already verified (a fork); keeping the verified one",
				"primary_id", primaryID, "version", prior.Version)
			return prior, nil, outcomeFork, nil
		}
	}
	if err := r.verifyChain(ctx, prior, latest); err != nil {
		var nf notFound
		if errors.Is(err, errInvalid) || errors.As(err, &nf) {
			return nil, nil, outcomeInvalid, err
		}
		return nil, nil, outcomeUnreachable, err
	}
	return latest, raw, outcomeUpdated, nil
}

// verifyChain reads the log after prior (from version 1 when nil) and
// checks that each document follows the one before and that it ends at
// latest.
func (r *Resolver) verifyChain(ctx context.Context, prior, latest *server.KeyDocument) error {
	prev := prior
	from := uint64(1)
	if prior != nil {
		from = prior.Version + 1
	}
	for from <= latest.Version {
		var page struct {
			Documents []json.RawMessage `json:"documents"`
		}
		path := "/v1/keys/" + latest.PrimaryID + "/log?from=" + strconv.FormatUint(from, 10)
		if err := r.get(ctx, path, maxLogPage, &page); err != nil {
			return err
		}
		if len(page.Documents) == 0 {
			return fmt.Errorf("%w: the log of %s ends before version %d", errInvalid, latest.PrimaryID, from)
		}
		for _, raw := range page.Documents {
			d, err := server.ParseKeyDocumentJSON(raw)
			if err != nil {
				return fmt.Errorf("%w: version %d of %s: %v", errInvalid, from, latest.PrimaryID, err)
			}
			if d.PrimaryID != latest.PrimaryID {
				return fmt.Errorf("%w: the log of %s holds a document of %s", errInvalid, latest.PrimaryID, d.PrimaryID)
			}
			if err := d.Follows(prev); err != nil {
				return fmt.Errorf("%w: the log of %s breaks at version %d: %v", errInvalid, latest.PrimaryID, d.Version, err)
			}
			if d.Version == latest.Version {
				if string(d.Hash) != string(latest.Hash) {
					return fmt.Errorf("%w: the log's version %d of %s is not the latest document served", errInvalid, d.Version, latest.PrimaryID)
				}
				return nil
			}
			prev, from = d, d.Version+1
		}
	}
	return fmt.Errorf("%w: the log of %s does not reach version %d", errInvalid, latest.PrimaryID, latest.Version)
}

// maxLogPage bounds one log page: 100 documents and their framing.
const maxLogPage = 100*(server.MaxKeyDocument+1024) + 1024

var errInvalid = errors.New("sig-server answer does not verify")

// notFound is a 404 unknown_identity answer.
type notFound struct{ path string }

func (e notFound) Error() string { return e.path + ": unknown identity" }

// get fetches path and decodes a 200 JSON answer of at most limit bytes.
func (r *Resolver) get(ctx context.Context, path string, limit int64, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+path, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "kezchat-server/1")
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		var body struct {
			Error struct{ Code string } `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&body)
		if body.Error.Code == server.CodeUnknownIdentity {
			return notFound{path}
		}
		return fmt.Errorf("GET %s: answered 404 %q", path, body.Error.Code)
	case resp.StatusCode != http.StatusOK:
		if resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
			return fmt.Errorf("%w: GET %s answered %d", errInvalid, path, resp.StatusCode)
		}
		return fmt.Errorf("GET %s: answered %d", path, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fmt.Errorf("GET %s: reading the answer: %w", path, err)
	}
	if int64(len(data)) > limit {
		return fmt.Errorf("%w: GET %s: the answer is over %d bytes", errInvalid, path, limit)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%w: GET %s: %v", errInvalid, path, err)
	}
	return nil
}
