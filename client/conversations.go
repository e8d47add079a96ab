package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// Group send limits (docs/protocol.md, POST /v1/batch/{handle}).
const (
	MaxBatchDocuments = 256
	maxBatchBody      = 4 << 20
	maxBatchAnswer    = MaxBatchDocuments*512 + 4096
)

// DefaultMaxBlobBytes is the largest blob the client uploads or downloads
// unless Client.MaxBlobBytes says otherwise: the server's default
// --max-blob-bytes.
const DefaultMaxBlobBytes = 25 << 20

// BlobInfo answers an accepted upload.
type BlobInfo struct {
	ID     string `json:"id"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func (c *Client) maxBlobBytes() int64 {
	if c.MaxBlobBytes > 0 {
		return c.MaxBlobBytes
	}
	return DefaultMaxBlobBytes
}

// SendBatch posts signed message documents, one per recipient, as one
// group send (POST /v1/batch/{handle}): stored in every recipient's inbox,
// or, when one is refused, in none (the *APIError's Index names it).
// replayed reports that every document had been stored before.
func (c *Client) SendBatch(ctx context.Context, id *Identity, docs []signing.Signed) (receipts []Receipt, replayed bool, err error) {
	if len(docs) < 1 || len(docs) > MaxBatchDocuments {
		return nil, false, usageError{fmt.Errorf("a group send holds 1 to %d documents, not %d", MaxBatchDocuments, len(docs))}
	}
	body, err := marshalBatch(docs)
	if err != nil {
		return nil, false, err
	}
	if len(body) > maxBatchBody {
		return nil, false, usageError{fmt.Errorf("the group send is %d bytes, over %d", len(body), maxBatchBody)}
	}
	auth, err := c.authorize(ctx, id, http.MethodPost, "/v1/batch/"+id.Handle, c.now().Unix(), "sha256="+sha256B64(body))
	if err != nil {
		return nil, false, err
	}
	var out struct {
		Receipts []Receipt `json:"receipts"`
	}
	resp, err := c.do(ctx, request{
		method: http.MethodPost,
		path:   "/v1/batch/" + url.PathEscape(id.Handle),
		header: http.Header{"X-Kez-Auth": {auth}},
		body:   body,
		limit:  maxBatchAnswer,
	}, &out)
	if err != nil {
		return nil, false, err
	}
	if len(out.Receipts) != len(docs) {
		return nil, false, fmt.Errorf("group send: %d receipts for %d documents", len(out.Receipts), len(docs))
	}
	return out.Receipts, resp.Header.Get("Idempotent-Replayed") == "true", nil
}

// marshalBatch encodes {"messages": [...]} with each payload byte for byte.
func marshalBatch(docs []signing.Signed) ([]byte, error) {
	b := bytes.NewBufferString(`{"messages":[`)
	for i, d := range docs {
		if i > 0 {
			b.WriteByte(',')
		}
		doc, err := marshalDoc(d)
		if err != nil {
			return nil, err
		}
		b.Write(doc)
	}
	b.WriteString(`]}`)
	return b.Bytes(), nil
}

// UploadBlob uploads an encrypted attachment (POST
// /v1/blobs/{handle}?sha256=<D>).
func (c *Client) UploadBlob(ctx context.Context, id *Identity, blob []byte) (BlobInfo, error) {
	if int64(len(blob)) > c.maxBlobBytes() {
		return BlobInfo{}, usageError{fmt.Errorf("the blob is %d bytes, over %d", len(blob), c.maxBlobBytes())}
	}
	sum := sha256B64(blob)
	auth, err := c.authorize(ctx, id, http.MethodPost, "/v1/blobs/"+id.Handle, c.now().Unix(), "sha256="+sum)
	if err != nil {
		return BlobInfo{}, err
	}
	if blob == nil {
		blob = []byte{}
	}
	var info BlobInfo
	_, err = c.do(ctx, request{
		method:      http.MethodPost,
		path:        "/v1/blobs/" + url.PathEscape(id.Handle),
		query:       url.Values{"sha256": {sum}}, // so the server checks the auth before the body
		header:      http.Header{"X-Kez-Auth": {auth}},
		body:        blob,
		contentType: "application/octet-stream",
		limit:       maxSmallBody,
	}, &info)
	if err != nil {
		return BlobInfo{}, fmt.Errorf("uploading a blob: %w", err)
	}
	if !ValidBlobID(info.ID) || info.SHA256 != sum || info.Size != int64(len(blob)) {
		return BlobInfo{}, fmt.Errorf("uploading a blob: the server answered %+v for %d bytes of SHA-256 %s", info, len(blob), sum)
	}
	return info, nil
}

// DownloadBlob fetches a blob (GET /v1/blobs/{id}), at most max bytes.
func (c *Client) DownloadBlob(ctx context.Context, blobID string, max int64) ([]byte, error) {
	return c.downloadBlob(ctx, "", blobID, max)
}

// downloadBlob fetches a blob from this Client's server, or, with
// origin, from that other server's.
func (c *Client) downloadBlob(ctx context.Context, origin, blobID string, max int64) ([]byte, error) {
	if !ValidBlobID(blobID) {
		return nil, usageError{fmt.Errorf("blob id %.50q is malformed", blobID)}
	}
	hc := c.http
	var req *http.Request
	var err error
	if origin != "" {
		link := origin + "/v1/blobs/" + blobID
		if err := c.checkLink(link); err != nil {
			return nil, usageError{err}
		}
		hc = c.remoteHTTP()
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, link, nil)
		if err == nil {
			req.Header.Set("User-Agent", userAgent)
		}
	} else {
		req, err = c.newRequest(ctx, http.MethodGet, "/v1/blobs/"+blobID, nil, nil)
	}
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/octet-stream")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("downloading blob %s: %w", blobID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("downloading blob %s: %w", blobID, parseAPIError(resp))
	}
	if resp.ContentLength > max {
		return nil, fmt.Errorf("downloading blob %s: it is %d bytes, over %d", blobID, resp.ContentLength, max)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, fmt.Errorf("downloading blob %s: %w", blobID, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("downloading blob %s: it is over %d bytes", blobID, max)
	}
	return data, nil
}

// Attach encrypts a file, uploads it, and returns the attachment a message
// names it by.
func (c *Client) Attach(ctx context.Context, id *Identity, name, mimeType string, file []byte) (Attachment, error) {
	enc, err := EncryptAttachment(file)
	if err != nil {
		return Attachment{}, err
	}
	info, err := c.UploadBlob(ctx, id, enc.Blob)
	if err != nil {
		return Attachment{}, err
	}
	return Attachment{Blob: info.ID, Key: signing.EncodeB64(enc.Key), SHA256: enc.SHA256, Size: int64(len(file)),
		Type: mimeType, Name: name}, nil
}

// FetchAttachment downloads an attachment's blob, checks its SHA-256 and
// decrypts it. The blob may be at most the file's size and the encryption's
// overhead, and the client's MaxBlobBytes.
func (c *Client) FetchAttachment(ctx context.Context, a Attachment) ([]byte, error) {
	return c.fetchAttachment(ctx, "", a)
}

// FetchAttachmentFrom is FetchAttachment of an attachment that from (a
// message's sender, as Decrypt names it) sent: the blob stays on the
// sender's server, so one from a person on another server is downloaded
// from that server's domain (GET https://<domain>/v1/blobs/{id}).
func (c *Client) FetchAttachmentFrom(ctx context.Context, from string, a Attachment) ([]byte, error) {
	sender, err := c.Name(ctx, from)
	if err != nil {
		return nil, fmt.Errorf("attachment %q: %w", a.Name, err)
	}
	origin := ""
	if !sender.IsLocal() {
		if origin, err = c.DomainURL(sender.Domain); err != nil {
			return nil, fmt.Errorf("attachment %q: %w", a.Name, err)
		}
	}
	return c.fetchAttachment(ctx, origin, a)
}

func (c *Client) fetchAttachment(ctx context.Context, origin string, a Attachment) ([]byte, error) {
	if err := a.check(); err != nil {
		return nil, fmt.Errorf("attachment %q: %w", a.Name, err)
	}
	want := a.Size + AttachmentOverhead
	if want > c.maxBlobBytes() {
		return nil, fmt.Errorf("attachment %q: %d bytes, over the %d this client downloads", a.Name, a.Size, c.maxBlobBytes())
	}
	blob, err := c.downloadBlob(ctx, origin, a.Blob, want)
	if err != nil {
		return nil, err
	}
	key, _ := signing.DecodeB64(a.Key) // checked above
	file, err := DecryptAttachment(blob, key, a.SHA256)
	if err != nil {
		return nil, fmt.Errorf("attachment %q: %w", a.Name, err)
	}
	if int64(len(file)) != a.Size {
		return nil, fmt.Errorf("attachment %q: %d bytes, the message says %d", a.Name, len(file), a.Size)
	}
	return file, nil
}

// SyncCopies reports whether id's identity has more than one device (its
// record lists more than one signing key), so everything it sends goes to
// its own inbox as well.
func (c *Client) SyncCopies(ctx context.Context, id *Identity) (bool, error) {
	u, err := c.user(ctx, id.Handle)
	if err != nil {
		return false, fmt.Errorf("the record of %s: %w", id.Handle, err)
	}
	return len(u.SigningKeys) > 1, nil
}

// SendTo sends pt to to, a handle or an address on another server
// (relayed by id's server, which answers a queued receipt), with a sync
// copy (to id's own handle,
// peer naming to, or group as pt has it) when id has several devices:
// then both go in one group send, envelope ids "<mid>:<to>"; otherwise as
// a single message of envelope id mid. pt.MID is made when empty. It
// returns the receipt of to's copy and pt as sent.
func (c *Client) SendTo(ctx context.Context, id *Identity, to string, pt Plaintext, blobs []string) (Receipt, Plaintext, error) {
	if err := c.checkIdentity(ctx, id); err != nil {
		return Receipt{}, pt, err
	}
	a, err := c.Name(ctx, to)
	if err != nil {
		return Receipt{}, pt, err
	}
	to = a.String()
	if pt.MID == "" {
		pt.MID = NewMessageID()
	}
	sync, err := c.SyncCopies(ctx, id)
	if err != nil {
		return Receipt{}, pt, err
	}
	if !sync || to == id.Handle {
		u, err := c.user(ctx, to)
		if err != nil {
			return Receipt{}, pt, err
		}
		doc, err := NewMessageDoc(id, u, pt.MID, pt, blobs, c.now())
		if err != nil {
			return Receipt{}, pt, err
		}
		r, _, err := c.Post(ctx, doc)
		return r, pt, err
	}
	copyPT := pt
	if pt.Group == nil {
		copyPT.Peer = to
	}
	rs, err := c.sendEach(ctx, id, []string{to, id.Handle}, func(h string) Plaintext {
		if h == id.Handle {
			return copyPT
		}
		return pt
	}, blobs)
	if err != nil {
		return Receipt{}, pt, err
	}
	return rs[0], pt, nil
}

// SendGroup sends pt (whose Group is set) to recipients (handles, or
// addresses on other servers, each document for its recipient's server) in
// one group send, envelope ids as envelopeID makes them, adding id's own handle when it has several
// devices (a control message lists it among the recipients already).
// pt.MID is made when empty. It returns the receipts, in the order of the
// recipients (id's own last when it was added), and pt as sent.
func (c *Client) SendGroup(ctx context.Context, id *Identity, recipients []string, pt Plaintext, blobs []string) ([]Receipt, Plaintext, error) {
	if pt.Group == nil {
		return nil, pt, usageError{errors.New("a group send without a group")}
	}
	if err := c.checkIdentity(ctx, id); err != nil {
		return nil, pt, err
	}
	if pt.MID == "" {
		pt.MID = NewMessageID()
	}
	names := make([]string, len(recipients))
	for i, r := range recipients {
		a, err := c.Name(ctx, r)
		if err != nil {
			return nil, pt, err
		}
		names[i] = a.String()
	}
	recipients = names
	if !slices.Contains(recipients, id.Handle) {
		sync, err := c.SyncCopies(ctx, id)
		if err != nil {
			return nil, pt, err
		}
		if sync {
			recipients = append(recipients, id.Handle)
		}
	}
	if len(recipients) == 0 {
		return nil, pt, nil // alone in the group, with one device
	}
	rs, err := c.sendEach(ctx, id, recipients, func(string) Plaintext { return pt }, blobs)
	return rs, pt, err
}

// sendEach seals plaintextFor(h) to each of the distinct handles and posts
// them as one group send.
func (c *Client) sendEach(ctx context.Context, id *Identity, handles []string, plaintextFor func(h string) Plaintext, blobs []string) ([]Receipt, error) {
	if len(handles) > MaxBatchDocuments {
		return nil, usageError{fmt.Errorf("%d recipients, more than the %d of one group send", len(handles), MaxBatchDocuments)}
	}
	ts := c.now()
	docs := make([]signing.Signed, 0, len(handles))
	for _, h := range handles {
		u, err := c.user(ctx, h)
		if err != nil {
			return nil, fmt.Errorf("the record of %s: %w", h, err)
		}
		pt := plaintextFor(h)
		envID := envelopeID(pt.MID, h)
		if !ValidMessageID(envID) {
			return nil, usageError{fmt.Errorf("mid %q is too long for the envelope id %q", pt.MID, envID)}
		}
		doc, err := NewMessageDoc(id, u, envID, pt, blobs, ts)
		if err != nil {
			return nil, err
		}
		docs = append(docs, doc)
	}
	rs, _, err := c.SendBatch(ctx, id, docs)
	return rs, err
}

// envelopeID is the envelope id of the document for name in a group send
// or with a sync copy: "<mid>:<handle>" for a person of this server (the
// protocol's "<mid>:<to>"). A group may hold people of one handle on
// several servers, and a group send's ids must be distinct, so for an
// address elsewhere it is "<mid>:<handle>:<domain>", or, where that is
// over 64 characters, "<mid>:" and 22 characters of the address's
// SHA-256, base64url.
func envelopeID(mid, name string) string {
	h, d, remote := strings.Cut(name, "@")
	if !remote {
		return mid + ":" + h
	}
	if id := mid + ":" + h + ":" + d; len(id) <= 64 {
		return id
	}
	return mid + ":" + sha256B64([]byte(name))[:22]
}

// SendGroupChange sends the snapshot next, made from before (nil for a
// create), to the members of both, id among them: id takes its own change
// when it reads it back from its inbox (SyncGroups), in the order every
// member does. It returns the receipt of id's own copy.
func (c *Client) SendGroupChange(ctx context.Context, id *Identity, before, next *GroupState) (Receipt, error) {
	pt := Plaintext{Kind: KindGroup, Group: &GroupRef{ID: next.ID}, State: next}
	recipients := ChangeRecipients(before, next)
	rs, _, err := c.SendGroup(ctx, id, recipients, pt, nil)
	if err != nil {
		return Receipt{}, err
	}
	for _, r := range rs {
		if r.To == id.Handle {
			return r, nil
		}
	}
	return Receipt{}, fmt.Errorf("group change: no receipt for %s's own copy", id.Handle)
}

// SyncGroups reads id's inbox from g.Seq on and applies every message to g
// (ReceiveAt) without acknowledging anything: after it, g holds every
// group change the inbox holds, each taken in inbox order. A message that
// is not valid is passed over; any other failure (the network, a sender's
// changed keys) is returned, and g keeps what it applied before it.
func (c *Client) SyncGroups(ctx context.Context, id *Identity, g *Groups) error {
	if g.Domain == "" {
		g.Domain = id.Server
	}
	for {
		page, err := c.Poll(ctx, id, g.Seq, 500)
		if err != nil {
			return fmt.Errorf("reading the inbox for group changes: %w", err)
		}
		if len(page.Messages) == 0 {
			return nil
		}
		for _, env := range page.Messages {
			pt, err := c.Decrypt(ctx, id, env)
			switch {
			case errors.Is(err, ErrInvalidMessage), ErrorCode(err) == server.CodeUnknownHandle:
				g.Pass(env.Seq)
			case err != nil:
				return fmt.Errorf("reading seq %d for group changes: %w", env.Seq, err)
			default:
				_ = g.ReceiveAt(env.Seq, &pt) // what it drops, it remembers
			}
		}
	}
}
