package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"kez.lat/chat/server"
)

// Outbox entry states (docs/protocol.md, GET /v1/outbox/{handle}).
const (
	OutboxQueued    = server.OutboxQueued
	OutboxDelivered = server.OutboxDelivered
	OutboxFailed    = server.OutboxFailed
)

// Privacy settings' strangers policies.
const (
	StrangersAccept = server.StrangersAccept
	StrangersRefuse = server.StrangersRefuse
)

// maxOutboxAnswer bounds an outbox answer: 1,000 entries.
const maxOutboxAnswer = 1000*2048 + 1024

// OutboxEntry is one document of the sender's for another server, as its
// server relays it: To is the recipient's address; State is OutboxQueued
// (Error is the last attempt's), OutboxDelivered or OutboxFailed (Error
// says why).
type OutboxEntry = server.OutboxEntry

// OutboxError says why an entry failed, or why its last attempt did.
type OutboxError = server.OutboxError

// Outbox lists id's documents for other servers, queued, delivered or
// failed, newest first (GET /v1/outbox/{handle}).
func (c *Client) Outbox(ctx context.Context, id *Identity) ([]OutboxEntry, error) {
	path := "/v1/outbox/" + id.Handle
	auth, err := c.authorize(ctx, id, http.MethodGet, path, c.now().Unix())
	if err != nil {
		return nil, err
	}
	var out struct {
		Entries []OutboxEntry `json:"entries"`
	}
	_, err = c.do(ctx, request{
		method: http.MethodGet,
		path:   "/v1/outbox/" + url.PathEscape(id.Handle),
		header: http.Header{"X-Kez-Auth": {auth}},
		limit:  maxOutboxAnswer,
	}, &out)
	if err != nil {
		return nil, fmt.Errorf("reading the outbox: %w", err)
	}
	if out.Entries == nil {
		out.Entries = []OutboxEntry{}
	}
	return out.Entries, nil
}

// Privacy is who may write to a person (docs/protocol.md, PUT
// /v1/privacy/{handle}): Blocked addresses, local handles and domains are
// refused; with Strangers StrangersRefuse, so is every sender on another
// server not in Known.
type Privacy = server.Privacy

// Privacy reads id's privacy setting (GET /v1/privacy/{handle}).
func (c *Client) Privacy(ctx context.Context, id *Identity) (Privacy, error) {
	path := "/v1/privacy/" + id.Handle
	auth, err := c.authorize(ctx, id, http.MethodGet, path, c.now().Unix())
	if err != nil {
		return Privacy{}, err
	}
	var p Privacy
	_, err = c.do(ctx, request{
		method: http.MethodGet,
		path:   "/v1/privacy/" + url.PathEscape(id.Handle),
		header: http.Header{"X-Kez-Auth": {auth}},
		limit:  server.MaxPrivacyBody,
	}, &p)
	if err != nil {
		return Privacy{}, fmt.Errorf("reading the privacy setting: %w", err)
	}
	return p, nil
}

// SetPrivacy replaces id's privacy setting with p (PUT
// /v1/privacy/{handle}) and returns it as the server stored it.
func (c *Client) SetPrivacy(ctx context.Context, id *Identity, p Privacy) (Privacy, error) {
	if p.Known == nil {
		p.Known = []string{}
	}
	if p.Blocked == nil {
		p.Blocked = []string{}
	}
	body, err := marshalJSON(p)
	if err != nil {
		return Privacy{}, err
	}
	if len(body) > server.MaxPrivacyBody {
		return Privacy{}, usageError{fmt.Errorf("the privacy setting is %d bytes, over %d", len(body), server.MaxPrivacyBody)}
	}
	path := "/v1/privacy/" + id.Handle
	auth, err := c.authorize(ctx, id, http.MethodPut, path, c.now().Unix(), "sha256="+sha256B64(body))
	if err != nil {
		return Privacy{}, err
	}
	var stored Privacy
	_, err = c.do(ctx, request{
		method: http.MethodPut,
		path:   "/v1/privacy/" + url.PathEscape(id.Handle),
		header: http.Header{"X-Kez-Auth": {auth}},
		body:   body,
		limit:  server.MaxPrivacyBody,
	}, &stored)
	if err != nil {
		return Privacy{}, fmt.Errorf("setting the privacy setting: %w", err)
	}
	return stored, nil
}

// marshalJSON encodes v without Go's HTML escaping.
func marshalJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
