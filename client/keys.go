package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// KeyDocument is a verified key document of the sig-server.
type KeyDocument = server.KeyDocument

// SigningKey is one key a key document lists.
type SigningKey = server.SigningKey

// KeyReceipt answers an accepted key document.
type KeyReceipt struct {
	PrimaryID string `json:"primary_id"`
	Version   uint64 `json:"version"`
	Hash      string `json:"hash"`
}

// maxKeyLogPage bounds one log page's answer: 100 documents and framing.
const maxKeyLogPage = 100*(server.MaxKeyDocument+1024) + 1024

// NewKeyDocument signs, with the identity's primary key, the key document
// that follows prev (version 1 when prev is nil): keys speak for the
// identity from then on, and enc is its X25519 encryption key.
func NewKeyDocument(primary signing.Signer, prev *KeyDocument, keys []SigningKey, enc []byte, ts time.Time) (signing.Signed, error) {
	p := server.KeyPayload{
		Type:      server.TypeKeys,
		PrimaryID: signing.PrimaryID(primary.Alg(), primary.PublicKey()),
		Version:   1,
		EncKey:    signing.EncodeB64(enc),
		TS:        ts.Unix(),
	}
	if prev != nil {
		if prev.PrimaryID != p.PrimaryID {
			return signing.Signed{}, fmt.Errorf("key document: the previous document is of %s, not of this key's %s", prev.PrimaryID, p.PrimaryID)
		}
		p.Version, p.Prev = prev.Version+1, signing.EncodeB64(prev.Hash)
	}
	for _, k := range keys {
		p.SigningKeys = append(p.SigningKeys, server.SigningKeyJSON{Alg: k.Alg, Key: signing.EncodeB64(k.Key), Label: k.Label})
	}
	doc, err := signing.Sign(primary, p)
	if err != nil {
		return signing.Signed{}, fmt.Errorf("key document: %w", err)
	}
	return doc, nil
}

// PublishKeys posts a signed key document to the sig-server (POST
// /v1/keys). replayed reports that this very document was already stored.
func (c *Client) PublishKeys(ctx context.Context, doc signing.Signed) (r KeyReceipt, replayed bool, err error) {
	body, err := marshalDoc(doc)
	if err != nil {
		return KeyReceipt{}, false, err
	}
	resp, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/keys", body: body, limit: maxSmallBody}, &r)
	if err != nil {
		return KeyReceipt{}, false, err
	}
	return r, resp.Header.Get("Idempotent-Replayed") == "true", nil
}

// LatestKeys fetches and verifies primaryID's latest key document (GET
// /v1/keys/{primary_id}); nil when the identity has published none.
func (c *Client) LatestKeys(ctx context.Context, primaryID string) (*KeyDocument, error) {
	if !server.ValidPrimaryID(primaryID) {
		return nil, usageError{fmt.Errorf("primary_id %q is not 40 lowercase hex characters", primaryID)}
	}
	var raw json.RawMessage
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/keys/" + primaryID, limit: server.MaxKeyDocument + 1024}, &raw)
	if ErrorCode(err) == server.CodeUnknownIdentity {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	d, err := server.ParseKeyDocumentJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("latest key document of %s does not verify: %w", primaryID, err)
	}
	if d.PrimaryID != primaryID {
		return nil, fmt.Errorf("asked for the keys of %s, the sig-server answered those of %s", primaryID, d.PrimaryID)
	}
	return d, nil
}

// KeyLog fetches primaryID's whole chain (GET /v1/keys/{primary_id}/log,
// every page) and verifies it end to end: each document is signed by the
// primary key and follows the one before, from version 1.
func (c *Client) KeyLog(ctx context.Context, primaryID string) ([]*KeyDocument, error) {
	if !server.ValidPrimaryID(primaryID) {
		return nil, usageError{fmt.Errorf("primary_id %q is not 40 lowercase hex characters", primaryID)}
	}
	var chain []*KeyDocument
	var prev *KeyDocument
	for from := uint64(1); ; {
		var page struct {
			Documents []json.RawMessage `json:"documents"`
			Next      uint64            `json:"next"`
		}
		_, err := c.do(ctx, request{
			method: http.MethodGet,
			path:   "/v1/keys/" + primaryID + "/log",
			query:  url.Values{"from": {strconv.FormatUint(from, 10)}},
			limit:  maxKeyLogPage,
		}, &page)
		if err != nil {
			return nil, err
		}
		for _, raw := range page.Documents {
			d, err := server.ParseKeyDocumentJSON(raw)
			if err != nil {
				return nil, fmt.Errorf("the key log of %s: version %d does not verify: %w", primaryID, from, err)
			}
			if d.PrimaryID != primaryID {
				return nil, fmt.Errorf("the key log of %s holds a document of %s", primaryID, d.PrimaryID)
			}
			if err := d.Follows(prev); err != nil {
				return nil, fmt.Errorf("the key log of %s breaks at version %d: %w", primaryID, d.Version, err)
			}
			chain = append(chain, d)
			prev, from = d, d.Version+1
		}
		if page.Next == 0 || len(page.Documents) == 0 {
			return chain, nil
		}
		if page.Next != from {
			return nil, errors.New("the key log's next page does not follow its last document")
		}
	}
}
