// Package federation is this server's side of talking to other servers
// (docs/protocol.md, "Federation"): the Resolver learns a remote sender's
// keys from the sender's own domain and verifies them, and the Courier
// delivers the outbox. Every connection goes through egress: public
// addresses only, no redirects, bounded answers.
package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kez.lat/chat/server"
	"kez.lat/chat/server/egress"
	"kez.lat/chat/server/sigclient"
	"kez.lat/chat/server/signing"
)

// maxAnswer bounds a WebFinger or record answer.
const maxAnswer = 64 << 10

// relKeys is WebFinger's link relation of an identity's key document.
const relKeys = "https://kez.lat/rel/keys"

// Config is how this server talks to others.
type Config struct {
	// Loopback admits the test domains 127.0.0.1:<port> and
	// localhost:<port>, over plain HTTP (--federation-insecure-loopback).
	Loopback bool
	// Timeout bounds one resolution (all its requests); DeliveryTimeout
	// one delivery.
	Timeout, DeliveryTimeout time.Duration
	// TTL is how long a resolved identity is used before its domain is
	// asked again; MinRefresh how often a key it lacks may make it ask
	// again; RetryAfter how long a domain that failed is left alone.
	TTL, MinRefresh, RetryAfter time.Duration
	// MaxIdentities bounds the cache of identities, MaxDirectories the
	// remote sig-servers whose verifiers are kept.
	MaxIdentities, MaxDirectories int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// DefaultConfig is the protocol's.
func DefaultConfig() Config {
	return Config{Timeout: 5 * time.Second, DeliveryTimeout: 30 * time.Second, TTL: 5 * time.Minute,
		MinRefresh: time.Second, RetryAfter: 30 * time.Second, MaxIdentities: 10_000, MaxDirectories: 1000}
}

// Pins keep the first identity accepted per remote address.
type Pins interface {
	PinRemote(ctx context.Context, pin *server.RemotePin) (*server.RemotePin, error)
}

// Resolver is a server.RemoteResolver.
type Resolver struct {
	cfg         Config
	http        *http.Client
	pins        Pins
	checkpoints server.KeyCheckpoints
	log         *slog.Logger

	mu          sync.Mutex
	entries     map[string]*entry // by address
	domainsDown map[string]time.Time
	dirs        map[string]*sigclient.Resolver // by the sig-server's base URL
	inflight    map[string]*call
}

var _ server.RemoteResolver = (*Resolver)(nil)

type entry struct {
	id       *server.RemoteIdentity
	checked  time.Time
	missedAt time.Time
}

type call struct {
	done chan struct{}
	id   *server.RemoteIdentity
	err  error
}

// NewResolver returns a Resolver pinning in pins and keeping verified key
// documents in checkpoints (the store, shared with local identities').
func NewResolver(cfg Config, pins Pins, checkpoints server.KeyCheckpoints, log *slog.Logger) *Resolver {
	cfg = withDefaults(cfg)
	return &Resolver{
		cfg: cfg, http: httpClient(cfg, cfg.Timeout), pins: pins, checkpoints: checkpoints, log: log,
		entries: make(map[string]*entry), domainsDown: make(map[string]time.Time),
		dirs: make(map[string]*sigclient.Resolver), inflight: make(map[string]*call),
	}
}

func withDefaults(cfg Config) Config {
	def := DefaultConfig()
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.DeliveryTimeout <= 0 {
		cfg.DeliveryTimeout = def.DeliveryTimeout
	}
	if cfg.TTL <= 0 {
		cfg.TTL = def.TTL
	}
	if cfg.MinRefresh <= 0 {
		cfg.MinRefresh = def.MinRefresh
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = def.RetryAfter
	}
	if cfg.MaxIdentities <= 0 {
		cfg.MaxIdentities = def.MaxIdentities
	}
	if cfg.MaxDirectories <= 0 {
		cfg.MaxDirectories = def.MaxDirectories
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg
}

// httpClient reaches other servers: public addresses only (loopback too
// with Loopback, for tests), no redirects.
func httpClient(cfg Config, timeout time.Duration) *http.Client {
	trusted := func(hostport string) bool { return cfg.Loopback && server.IsLoopbackDomain(hostport) }
	return &http.Client{Transport: egress.Transport(timeout, trusted, 4), Timeout: timeout, CheckRedirect: egress.NoRedirects}
}

// BaseURL is the origin of domain's server: https, or plain http for a
// loopback test domain when allowed.
func BaseURL(domain string, loopback bool) string {
	if loopback && server.IsLoopbackDomain(domain) {
		return "http://" + domain
	}
	return "https://" + domain
}

// ResolveRemote returns addr's verified identity; see
// server.RemoteResolver.
func (r *Resolver) ResolveRemote(ctx context.Context, addr server.Address, refresh bool) (*server.RemoteIdentity, error) {
	key := addr.String()
	now := r.cfg.Now()
	r.mu.Lock()
	if down, ok := r.domainsDown[addr.Domain]; ok && now.Sub(down) < r.cfg.RetryAfter {
		r.mu.Unlock()
		return nil, unavailable(addr.Domain, r.cfg.RetryAfter-now.Sub(down))
	}
	if e, ok := r.entries[key]; ok {
		fresh := now.Sub(e.checked) < r.cfg.TTL
		if refresh && now.Sub(e.missedAt) >= r.cfg.MinRefresh {
			e.missedAt = now
			fresh = false
		}
		if fresh {
			r.mu.Unlock()
			return e.id, nil
		}
	}
	c, ok := r.inflight[key]
	if !ok {
		c = &call{done: make(chan struct{})}
		r.inflight[key] = c
		go r.run(addr, c)
	}
	r.mu.Unlock()
	select {
	case <-c.done:
		return c.id, c.err
	case <-ctx.Done():
		return nil, fmt.Errorf("resolving %s: %w", addr, ctx.Err())
	}
}

// run resolves addr for every caller waiting on c, on a context of its own
// so that one caller giving up does not fail the others.
func (r *Resolver) run(addr server.Address, c *call) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
	defer cancel()
	id, err := r.fetch(ctx, addr)
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inflight, addr.String())
	switch {
	case err == nil:
		if len(r.entries) >= r.cfg.MaxIdentities {
			for k := range r.entries { // forget an arbitrary one
				delete(r.entries, k)
				break
			}
		}
		e := r.entries[addr.String()]
		if e == nil {
			e = &entry{}
			r.entries[addr.String()] = e
		}
		e.id, e.checked = id, now
	case server.ErrorCode(err) == server.CodeUnavailable:
		r.domainsDown[addr.Domain] = now
		if len(r.domainsDown) > r.cfg.MaxIdentities {
			clear(r.domainsDown)
		}
		r.log.Warn("cannot learn a remote sender's keys", "address", addr.String(), "err", err)
	}
	c.id, c.err = id, err
	close(c.done)
}

// fetch learns addr's identity from its domain: WebFinger, the record
// (held to the pin), the key document chain.
func (r *Resolver) fetch(ctx context.Context, addr server.Address) (*server.RemoteIdentity, error) {
	base := BaseURL(addr.Domain, r.cfg.Loopback)
	var jrd struct {
		Subject string `json:"subject"`
		Links   []struct {
			Rel  string `json:"rel"`
			Href string `json:"href"`
		} `json:"links"`
	}
	resource := "acct:" + addr.String()
	if err := r.get(ctx, addr, base+"/.well-known/webfinger?resource="+url.QueryEscape(resource), &jrd); err != nil {
		return nil, err
	}
	if jrd.Subject != resource {
		return nil, unavailableErr(addr.Domain, "its WebFinger answer is about %q", jrd.Subject)
	}
	var self, keys string
	for _, l := range jrd.Links {
		switch l.Rel {
		case "self":
			self = l.Href
		case relKeys:
			keys = l.Href
		}
	}
	if err := r.checkLink(self); err != nil {
		return nil, unavailableErr(addr.Domain, "its record link %q: %v", self, err)
	}
	var rec server.PublicUser
	if err := r.get(ctx, addr, self, &rec); err != nil {
		return nil, err
	}
	alg, key, err := r.checkRecord(addr, &rec)
	if err != nil {
		return nil, err
	}
	pin, err := r.pins.PinRemote(ctx, &server.RemotePin{Address: addr.String(), PrimaryID: rec.PrimaryID, Alg: alg, Key: key})
	if err != nil {
		return nil, fmt.Errorf("pinning %s: %w", addr, err)
	}
	if pin.PrimaryID != rec.PrimaryID {
		return nil, server.Errorf(server.CodeSenderKeyChanged,
			"%s now names another primary key than the one this server accepted for %s", addr.Domain, addr)
	}
	id := &server.RemoteIdentity{Address: addr, PrimaryID: rec.PrimaryID, Alg: alg, Key: key}
	if keys != "" {
		if id.Keys, err = r.keyDocument(ctx, addr, keys, rec.PrimaryID); err != nil {
			return nil, err
		}
	}
	return id, nil
}

// checkRecord checks that rec is addr's and that its primary_id derives
// from its key.
func (r *Resolver) checkRecord(addr server.Address, rec *server.PublicUser) (alg string, key []byte, err error) {
	if rec.Handle != addr.Handle || rec.Server != addr.Domain {
		return "", nil, unavailableErr(addr.Domain, "its record is of %s@%s", rec.Handle, rec.Server)
	}
	key, err = signing.DecodeB64(rec.Key)
	if _, lerr := signing.Lookup(rec.Alg); err != nil || lerr != nil || len(key) != 32 {
		return "", nil, unavailableErr(addr.Domain, "its record's key is malformed")
	}
	if signing.PrimaryID(rec.Alg, key) != rec.PrimaryID {
		return "", nil, unavailableErr(addr.Domain, "its record's primary_id does not derive from its key")
	}
	return rec.Alg, key, nil
}

// keyDocument verifies primaryID's key document chain at the sig-server
// link names, which must end in /v1/keys/<primaryID>.
func (r *Resolver) keyDocument(ctx context.Context, addr server.Address, link, primaryID string) (*server.KeyDocument, error) {
	base, ok := strings.CutSuffix(link, "/v1/keys/"+primaryID)
	if !ok {
		return nil, unavailableErr(addr.Domain, "its keys link %q is not the identity's", link)
	}
	if err := r.checkLink(link); err != nil {
		return nil, unavailableErr(addr.Domain, "its keys link %q: %v", link, err)
	}
	dir, err := r.directory(base)
	if err != nil {
		return nil, unavailableErr(addr.Domain, "its keys link %q: %v", link, err)
	}
	doc, err := dir.ResolveKeys(ctx, primaryID)
	if err != nil {
		return nil, unavailableErr(addr.Domain, "its key documents: %v", err)
	}
	return doc, nil
}

// directory returns the verifier of the sig-server at base, made once:
// sigclient's chain checks, rollback and fork refusals, on this
// resolver's client and the store's checkpoints.
func (r *Resolver) directory(base string) (*sigclient.Resolver, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d, ok := r.dirs[base]; ok {
		return d, nil
	}
	if len(r.dirs) >= r.cfg.MaxDirectories {
		clear(r.dirs)
	}
	d, err := sigclient.New(sigclient.Config{URL: base, TTL: 0, MinRefresh: r.cfg.MinRefresh, RetryAfter: r.cfg.RetryAfter,
		Timeout: r.cfg.Timeout, HTTPClient: r.http, Now: r.cfg.Now, Checkpoints: r.checkpoints},
		r.log, prometheus.NewRegistry())
	if err != nil {
		return nil, err
	}
	r.dirs[base] = d
	return d, nil
}

// checkLink accepts an https URL, or an http one on a loopback test
// domain when allowed; the dialer checks the address.
func (r *Resolver) checkLink(link string) error {
	u, err := url.Parse(link)
	switch {
	case err != nil || u.Host == "" || u.User != nil:
		return errors.New("not an absolute URL")
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && r.cfg.Loopback && server.IsLoopbackDomain(u.Host):
		return nil
	}
	return errors.New("not https")
}

// get fetches link and decodes its 200 JSON answer of at most maxAnswer
// bytes. A 404 means the domain does not know the person: no key of
// theirs is authorized (key_not_authorized); anything else that fails is
// unavailable, to be retried.
func (r *Resolver) get(ctx context.Context, addr server.Address, link string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, link, nil)
	if err != nil {
		return unavailableErr(addr.Domain, "%v", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "kezchat-server/1")
	resp, err := r.http.Do(req)
	if err != nil {
		return unavailableErr(addr.Domain, "%v", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return server.Errorf(server.CodeKeyNotAuthorized, "%s does not know %s", addr.Domain, addr)
	case resp.StatusCode != http.StatusOK:
		return unavailableErr(addr.Domain, "GET %s answered %d", link, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return unavailableErr(addr.Domain, "reading %s: %v", link, err)
	}
	if len(data) > maxAnswer {
		return unavailableErr(addr.Domain, "%s answered more than %d bytes", link, maxAnswer)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return unavailableErr(addr.Domain, "%s: %v", link, err)
	}
	return nil
}

func unavailableErr(domain, format string, args ...any) *server.Error {
	e := unavailable(domain, 0)
	e.Message = domain + ": " + fmt.Sprintf(format, args...)
	return e
}

func unavailable(domain string, wait time.Duration) *server.Error {
	return &server.Error{Code: server.CodeUnavailable, RetryAfter: max(wait, time.Second),
		Message: "cannot learn the keys of a sender at " + domain + " now; retry later"}
}
