package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"kez.lat/chat/server/signing"
)

// Envelope is a message as its recipient receives it: the sender's signed
// document, unchanged, and the order the server gave it.
type Envelope struct {
	Seq        uint64         `json:"seq"`
	ReceivedAt int64          `json:"received_at"` // Unix seconds
	Message    signing.Signed `json:"message"`
}

// Page is one answer of Poll. Next is the since of the following Poll: the
// last seq returned, or the since asked when the page is empty.
type Page struct {
	Messages []Envelope `json:"messages"`
	Next     uint64     `json:"next"`
}

// Poll reads id's inbox: envelopes with seq > since, at most limit of them
// (limit <= 0 means the server's default, 100; the server clamps to 1000).
func (c *Client) Poll(ctx context.Context, id *Identity, since uint64, limit int) (Page, error) {
	path := inboxPath(id.Handle)
	sinceText := strconv.FormatUint(since, 10)
	auth, err := c.authorize(ctx, id, http.MethodGet, path, c.now().Unix(), "since="+sinceText)
	if err != nil {
		return Page{}, err
	}
	q := url.Values{"since": {sinceText}}
	n := 100
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
		n = min(limit, 1000)
	}
	var p Page
	_, err = c.do(ctx, request{
		method: http.MethodGet,
		path:   "/v1/inbox/" + url.PathEscape(id.Handle),
		query:  q,
		header: http.Header{"X-Kez-Auth": {auth}},
		limit:  int64(n)*maxEnvelopeJSON + 4096,
	}, &p)
	if err != nil {
		return Page{}, err
	}
	if p.Messages == nil {
		p.Messages = []Envelope{}
	}
	return p, nil
}

// Ack deletes id's envelopes with seq <= upto and returns how many were
// deleted. The server accepts each signed acknowledgement once; when the
// same upto is acknowledged again within a second, Ack moves the timestamp
// on so the request is new.
func (c *Client) Ack(ctx context.Context, id *Identity, upto uint64) (int, error) {
	ts := c.now().Unix()
	c.mu.Lock()
	key := id.Handle
	if last, ok := c.acks[key]; ok && last.upto == upto && ts <= last.ts {
		ts = last.ts + 1
	}
	if len(c.acks) >= maxUserCache {
		clear(c.acks)
	}
	c.acks[key] = lastAck{upto: upto, ts: ts}
	c.mu.Unlock()

	uptoText := strconv.FormatUint(upto, 10)
	auth, err := c.authorize(ctx, id, http.MethodDelete, inboxPath(id.Handle), ts, "upto="+uptoText)
	if err != nil {
		return 0, err
	}
	var out struct {
		Deleted int `json:"deleted"`
	}
	_, err = c.do(ctx, request{
		method: http.MethodDelete,
		path:   "/v1/inbox/" + url.PathEscape(id.Handle),
		query:  url.Values{"upto": {uptoText}},
		header: http.Header{"X-Kez-Auth": {auth}},
		limit:  maxSmallBody,
	}, &out)
	return out.Deleted, err
}

// inboxPath is the unescaped path request auth signs (the server signs
// r.URL.Path).
func inboxPath(handle string) string { return "/v1/inbox/" + handle }

// authorize returns the X-KEZ-Auth value of a request by id.
func (c *Client) authorize(ctx context.Context, id *Identity, method, path string, ts int64, bindings ...string) (string, error) {
	if err := c.checkIdentity(ctx, id); err != nil {
		return "", err
	}
	domain, err := c.Domain(ctx)
	if err != nil {
		return "", err
	}
	return signing.SignRequest(id.Signer, domain, method, path, ts, bindings...)
}

// checkIdentity refuses an unregistered identity, or one registered on
// another server than this Client's.
func (c *Client) checkIdentity(ctx context.Context, id *Identity) error {
	if id == nil || id.Signer == nil || id.Enc == nil {
		return usageError{errors.New("no identity keys")}
	}
	if id.Handle == "" {
		return usageError{errors.New("the identity has no handle; register it first")}
	}
	if id.Server == "" {
		return nil
	}
	domain, err := c.Domain(ctx)
	if err != nil {
		return err
	}
	if id.Server != domain {
		return usageError{fmt.Errorf("the identity is registered on %q, but %s serves %q", id.Server, c.BaseURL(), domain)}
	}
	return nil
}
