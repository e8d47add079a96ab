package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// DefaultTimeout bounds each non-stream request when New is given no
// http.Client.
const DefaultTimeout = 30 * time.Second

// Response size limits.
const (
	maxSmallBody = 64 << 10 // records, receipts, health
	// maxEnvelopeJSON bounds one envelope in an inbox page or stream event:
	// a message body is at most 96 KiB, plus seq and received_at.
	maxEnvelopeJSON = 128 << 10
	maxUserCache    = 4096
)

// User is a registered handle's public record, keys decoded.
type User = server.User

// Receipt answers an accepted message.
type Receipt = server.Receipt

// Health is the answer of GET /v1/healthz.
type Health struct {
	Server  string `json:"server"`
	Status  string `json:"status"`
	Version string `json:"version"`
}

// Client talks to one chat server. Its exported fields may be set before
// first use; a Client is then safe for concurrent use.
type Client struct {
	// Now is the clock of signed timestamps; time.Now when nil.
	Now func() time.Time
	// StreamIdleTimeout ends a stream that received nothing, not even a
	// keep-alive comment, for this long (default 45s: three keep-alives).
	StreamIdleTimeout time.Duration
	// OnListenError, when set, is told of each error Listen recovers from,
	// and how long it waits before reconnecting.
	OnListenError func(err error, retryIn time.Duration)
	// Pins, when set, makes every record looked up checked against what
	// was first seen of it and its key documents (see checkPeer); a record
	// that fails is refused with a *KeyChangedError. Self is the identity
	// safety numbers are computed with.
	Pins Pins
	Self *Identity
	// MaxBlobBytes bounds the blobs the client uploads and downloads
	// (attachments); DefaultMaxBlobBytes when 0.
	MaxBlobBytes int64
	// InsecureLoopback lets the client reach the people of other servers
	// at the test domains 127.0.0.1:<port> and localhost:<port>, over
	// plain HTTP (as a server's --federation-insecure-loopback): for tests
	// only. Every other domain is reached over HTTPS.
	InsecureLoopback bool

	base    *url.URL
	baseErr error
	http    *http.Client // non-stream calls
	stream  *http.Client // streams: the same, without the overall timeout

	mu     sync.Mutex
	domain string
	users  map[string]*User
	acks   map[string]lastAck

	lastStreamTS atomic.Int64 // see streamTS
}

type lastAck struct {
	upto uint64
	ts   int64
}

// New returns a Client for the server at baseURL (e.g.
// "http://127.0.0.1:6969"). httpClient makes the requests; nil means one
// with DefaultTimeout. Streams use a copy of it without the overall timeout
// (they are bounded by their context and StreamIdleTimeout instead).
func New(baseURL string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = &http.Client{Timeout: DefaultTimeout}
	}
	stream := *httpClient
	stream.Timeout = 0
	c := &Client{http: httpClient, stream: &stream, users: make(map[string]*User), acks: make(map[string]lastAck)}
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	switch {
	case err != nil:
		c.baseErr = usageError{fmt.Errorf("server URL %q: %w", baseURL, err)}
	case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		c.baseErr = usageError{fmt.Errorf("server URL %q: want http(s)://host[:port]", baseURL)}
	default:
		c.base = u
	}
	return c
}

// BaseURL is the server's URL as given to New.
func (c *Client) BaseURL() string {
	if c.base == nil {
		return ""
	}
	return c.base.String()
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// SetDomain sets the server's domain, the name signed payloads and request
// auth must carry, instead of learning it from /v1/healthz.
func (c *Client) SetDomain(domain string) {
	c.mu.Lock()
	c.domain = domain
	c.mu.Unlock()
}

// Domain returns the server's domain, asking /v1/healthz the first time.
func (c *Client) Domain(ctx context.Context) (string, error) {
	c.mu.Lock()
	d := c.domain
	c.mu.Unlock()
	if d != "" {
		return d, nil
	}
	h, err := c.Health(ctx)
	if err != nil {
		return "", fmt.Errorf("learning the server's domain: %w", err)
	}
	if h.Server == "" || strings.ContainsAny(h.Server, "\r\n") {
		return "", fmt.Errorf("learning the server's domain: /v1/healthz names server %q", h.Server)
	}
	c.SetDomain(h.Server)
	return h.Server, nil
}

// Health asks GET /v1/healthz.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/healthz", limit: maxSmallBody}, &h)
	return h, err
}

// NewRegistration builds the signed kez.chat.register/v1 document that
// registers id as handle on the server named domain, at time ts.
func NewRegistration(id *Identity, domain, handle string, ts time.Time) (signing.Signed, error) {
	doc, err := signing.Sign(id.Signer, server.RegisterPayload{
		Type:      server.TypeRegister,
		Server:    domain,
		Handle:    handle,
		PrimaryID: id.PrimaryID(),
		EncKey:    signing.EncodeB64(id.EncPublicKey()),
		TS:        ts.Unix(),
	})
	if err != nil {
		return signing.Signed{}, fmt.Errorf("registration: %w", err)
	}
	return doc, nil
}

// Register registers id under handle and, on success, records the handle
// and the server's domain in id (save it afterwards).
func (c *Client) Register(ctx context.Context, id *Identity, handle string) (*User, error) {
	if id.IsDevice() {
		return nil, usageError{errors.New("a device identity cannot register: registration is signed by the primary key")}
	}
	domain, err := c.Domain(ctx)
	if err != nil {
		return nil, err
	}
	doc, err := NewRegistration(id, domain, handle, c.now())
	if err != nil {
		return nil, err
	}
	u, err := c.PostRegistration(ctx, doc)
	if err != nil {
		return nil, err
	}
	if u.Handle != handle || u.Alg != id.Signer.Alg() || !bytes.Equal(u.Key, id.Signer.PublicKey()) || !bytes.Equal(u.EncKey, id.EncPublicKey()) {
		return nil, fmt.Errorf("registering %s: the server answered a record for other keys", handle)
	}
	id.Handle, id.Server = u.Handle, u.Server
	return u, nil
}

// PostRegistration posts a signed registration document as is (tests use it
// to send altered ones) and returns the new public record.
func (c *Client) PostRegistration(ctx context.Context, doc signing.Signed) (*User, error) {
	body, err := marshalDoc(doc)
	if err != nil {
		return nil, err
	}
	var uj server.PublicUser
	if _, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/register", body: body, limit: maxSmallBody}, &uj); err != nil {
		return nil, err
	}
	u, err := uj.User()
	if err != nil {
		return nil, fmt.Errorf("registration answer: %w", err)
	}
	c.remember(u.Handle, u)
	return u, nil
}

// Lookup fetches the public record of name: a handle on this client's
// server (GET /v1/u/{handle}), or an address handle@domain elsewhere, from
// that domain itself (WebFinger, then the record it links; see
// resolveRemote). With Pins, the record is checked (checkPeer). It
// refreshes the Client's cache of it.
func (c *Client) Lookup(ctx context.Context, name string) (*User, error) {
	a, err := c.Name(ctx, name)
	if err != nil {
		return nil, err
	}
	u, dir, err := c.fetchRecord(ctx, a, c.Pins != nil)
	if err != nil {
		return nil, err
	}
	if c.Pins != nil {
		if err := c.checkPeer(ctx, a.String(), u, dir); err != nil {
			return nil, err
		}
	}
	c.remember(a.String(), u)
	return u, nil
}

// fetchRecord is a's record as its server answers it, unchecked, and the
// key directory its WebFinger links (nil when none): for a person of this
// server, only when withDir; for one elsewhere, always (its WebFinger
// links the record too).
func (c *Client) fetchRecord(ctx context.Context, a Address, withDir bool) (*User, *Client, error) {
	if !a.IsLocal() {
		return c.resolveRemote(ctx, a)
	}
	u, err := c.lookupUnchecked(ctx, a.Handle)
	if err != nil || !withDir {
		return u, nil, err
	}
	dir, err := c.keyDirectory(ctx, u)
	if err != nil {
		return nil, nil, err
	}
	return u, dir, nil
}

// lookupUnchecked is the record the server answers for handle, as it is.
func (c *Client) lookupUnchecked(ctx context.Context, handle string) (*User, error) {
	var uj server.PublicUser
	if _, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/u/" + url.PathEscape(handle), limit: maxSmallBody}, &uj); err != nil {
		return nil, err
	}
	u, err := uj.User()
	if err != nil {
		return nil, fmt.Errorf("record of %s: %w", handle, err)
	}
	if u.Handle != handle {
		return nil, fmt.Errorf("asked for %q, the server answered the record of %q", handle, u.Handle)
	}
	return u, nil
}

// forget drops the cached record of name (see Name).
func (c *Client) forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.users, name)
}

// user returns the record of name (a handle, or an address) from the
// cache, or looks it up. A record's device keys change; Decrypt looks a
// sender up again when a message is signed by a key its cached record does
// not list.
func (c *Client) user(ctx context.Context, name string) (*User, error) {
	a, err := c.Name(ctx, name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	u := c.users[a.String()]
	c.mu.Unlock()
	if u != nil {
		return u, nil
	}
	return c.Lookup(ctx, a.String())
}

// remember caches u as the record of name, as Name names it.
func (c *Client) remember(name string, u *User) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.users) >= maxUserCache {
		clear(c.users)
	}
	c.users[name] = u
}

// JRD is a WebFinger (RFC 7033) answer.
type JRD struct {
	Subject string    `json:"subject"`
	Aliases []string  `json:"aliases,omitempty"`
	Links   []JRDLink `json:"links"`
}

// JRDLink is one link of a JRD.
type JRDLink struct {
	Rel  string `json:"rel"`
	Type string `json:"type,omitempty"`
	Href string `json:"href,omitempty"`
}

// WebFinger asks /.well-known/webfinger for acct:handle@<server domain>.
func (c *Client) WebFinger(ctx context.Context, handle string) (JRD, error) {
	domain, err := c.Domain(ctx)
	if err != nil {
		return JRD{}, err
	}
	var j JRD
	_, err = c.do(ctx, request{
		method: http.MethodGet,
		path:   "/.well-known/webfinger",
		query:  url.Values{"resource": {"acct:" + handle + "@" + domain}},
		accept: "application/jrd+json, application/json",
		limit:  maxSmallBody,
	}, &j)
	return j, err
}

// userAgent names this client in every request.
const userAgent = "kezchat-go/1"

// request is one non-stream API call.
type request struct {
	method, path string
	// link, when set, is the absolute URL of a GET on another server
	// (a WebFinger link), instead of path on this Client's.
	link        string
	query       url.Values
	header      http.Header
	body        []byte // JSON unless contentType says otherwise
	contentType string
	accept      string
	limit       int64 // bound of a 2xx body
}

// do runs r and decodes a 2xx JSON answer into out (when not nil). A non-2xx
// answer is an *APIError. It returns the response (body closed) for its
// status and headers.
func (c *Client) do(ctx context.Context, r request, out any) (*http.Response, error) {
	hc := c.http
	var req *http.Request
	var err error
	if r.link != "" {
		// Another server's: checked, and reached through remoteHTTP.
		if err := c.checkLink(r.link); err != nil {
			return nil, err
		}
		req, err = http.NewRequestWithContext(ctx, r.method, r.link, nil)
		if err == nil {
			req.Header.Set("User-Agent", userAgent)
		}
		hc, r.path = c.remoteHTTP(), r.link
	} else {
		req, err = c.newRequest(ctx, r.method, r.path, r.query, r.body)
	}
	if err != nil {
		return nil, err
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	if r.contentType != "" {
		req.Header.Set("Content-Type", r.contentType)
	}
	if r.accept == "" {
		r.accept = "application/json"
	}
	req.Header.Set("Accept", r.accept)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.method, r.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp, parseAPIError(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, r.limit+1))
	if err != nil {
		return resp, fmt.Errorf("%s %s: reading the answer: %w", r.method, r.path, err)
	}
	if int64(len(data)) > r.limit {
		return resp, fmt.Errorf("%s %s: the answer is over %d bytes", r.method, r.path, r.limit)
	}
	if out != nil {
		// Exact member names: a server cannot make this client read a
		// member other readers would not (later versions may add some).
		if err := server.DecodeOpenJSON(data, out); err != nil {
			return resp, fmt.Errorf("%s %s: decoding the answer: %w", r.method, r.path, err)
		}
	}
	return resp, nil
}

func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values, body []byte) (*http.Request, error) {
	if c.baseErr != nil {
		return nil, c.baseErr
	}
	u := *c.base
	// path is already escaped where it holds a handle.
	u.RawPath = c.base.EscapedPath() + path
	p, err := url.PathUnescape(u.RawPath)
	if err != nil {
		return nil, err
	}
	u.Path = p
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("User-Agent", userAgent)
	return req, nil
}

// marshalDoc encodes a signed document without Go's HTML escaping, so the
// canonical payload is sent byte for byte.
func marshalDoc(doc signing.Signed) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encoding signed document: %w", err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
