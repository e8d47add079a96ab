package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// A server that answers a peer's record could answer any keys: the client
// checks them itself. It pins what it first saw of each peer (trust on
// first use) and refuses a record whose primary key differs, or whose
// enc_key or device keys no key document signed by the pinned primary key
// vouches for (docs/protocol.md, "Checking keys").

// Pin is what a client has seen of a peer's identity.
type Pin struct {
	PrimaryID string `json:"primary_id"`
	Alg       string `json:"alg"`
	Key       string `json:"key"` // the primary key, base64url
	EncKey    string `json:"enc_key"`
	// KeysVersion is the highest key document of the peer verified, 0
	// when none.
	KeysVersion uint64 `json:"keys_version,omitempty"`
}

// pinOf is what u's record says.
func pinOf(u *User) Pin {
	return Pin{PrimaryID: u.PrimaryID, Alg: u.Alg, Key: signing.EncodeB64(u.Key), EncKey: signing.EncodeB64(u.EncKey)}
}

// Pins keep a client's pins, by the name of each peer: its handle on the
// client's own server, its address (handle@domain) on another.
type Pins interface {
	// Pin returns name's pin, nil when there is none.
	Pin(name string) (*Pin, error)
	SavePin(name string, p Pin) error
}

// KeyChangedError refuses a peer's record whose keys are not the ones
// pinned, and that nothing the pinned identity signed vouches for: a new
// identity under the same handle, or a server that swapped keys.
type KeyChangedError struct {
	Handle   string
	Was, Now Pin
	// WasSafety and NowSafety are the safety numbers with the pinned and
	// with the answered identity.
	WasSafety, NowSafety string
	// Why says what differs.
	Why string
}

func (e *KeyChangedError) Error() string {
	return fmt.Sprintf("the keys of %s changed (%s): safety number %s before, %s now", e.Handle, e.Why, e.WasSafety, e.NowSafety)
}

// ErrKeyDocumentMismatch refuses a record whose enc_key or device keys
// differ from the peer's latest verified key document: the server
// answers keys the identity did not sign.
var ErrKeyDocumentMismatch = errors.New("the server answers keys the identity's key document does not list")

// checkPeer verifies u, a record the server answered for the peer name
// (a handle here, an address elsewhere), against the peer's key documents
// at dir (the sig-server its WebFinger links, nil when none) and its pin,
// pins it on first contact, and moves the pin forward when a document
// signed by the pinned primary key vouches for a new enc_key. Device keys
// no verified document lists are dropped from u. Pins are kept by name.
func (c *Client) checkPeer(ctx context.Context, name string, u *User, dir *Client) error {
	doc, err := c.verifiedKeys(ctx, u, dir)
	if err != nil {
		return err
	}
	if doc == nil && len(u.SigningKeys) > 0 {
		u.SigningKeys, u.KeysVersion = nil, 0 // nothing verified vouches for them
	}
	now := pinOf(u)
	if doc != nil {
		now.KeysVersion = doc.Version
	}
	was, err := c.Pins.Pin(name)
	if err != nil {
		return fmt.Errorf("reading the pin of %s: %w", name, err)
	}
	if was == nil {
		return c.Pins.SavePin(name, now)
	}
	if doc == nil {
		// A server that hides the documents once must not lower the
		// version pinned: a rollback would then pass for a first sight.
		now.KeysVersion = was.KeysVersion
	}
	changed := func(why string) error {
		e := &KeyChangedError{Handle: name, Was: *was, Now: now, Why: why}
		e.WasSafety, _ = c.safetyWith(ctx, *was, u)
		e.NowSafety, _ = c.safetyWith(ctx, now, u)
		return e
	}
	switch {
	case was.PrimaryID != now.PrimaryID || was.Alg != now.Alg || was.Key != now.Key:
		return changed("another primary key")
	case doc != nil && doc.Version < was.KeysVersion:
		return changed(fmt.Sprintf("key document version %d answered, %d seen before", doc.Version, was.KeysVersion))
	case doc != nil && doc.Version == was.KeysVersion && was.EncKey != now.EncKey:
		return changed(fmt.Sprintf("a second key document of version %d", doc.Version))
	case was.EncKey != now.EncKey && doc == nil:
		return changed("another enc_key, which no key document vouches for")
	case *was == now:
		return nil
	}
	// The same primary key signed the document that lists the new enc_key.
	return c.Pins.SavePin(name, now)
}

// verifiedKeys returns u's latest key document at sig (the key directory
// u's server links, nil when none), its whole chain verified from version
// 1 (so signed by the primary key u's primary_id derives from), and checks
// that u's enc_key and device keys are the document's. It returns nil when
// there is no directory, or the identity published none.
func (c *Client) verifiedKeys(ctx context.Context, u *User, sig *Client) (*KeyDocument, error) {
	var err error
	var chain []*KeyDocument
	if sig != nil {
		chain, err = sig.KeyLog(ctx, u.PrimaryID)
	}
	switch {
	case sig == nil, ErrorCode(err) == server.CodeUnknownIdentity, ErrorCode(err) == server.CodeNotFound:
		// No sig-server linked (or none where the link points), or no
		// document: the record's enc_key stands on its pin alone, and its
		// device keys on nothing (checkPeer drops them). A server that
		// hides the documents gains nothing: a pinned enc_key that
		// changes without one is refused.
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("checking the keys of %s: %w", u.Address(), err)
	case len(chain) == 0:
		return nil, nil
	}
	doc := chain[len(chain)-1]
	if !bytes.Equal(doc.EncKey, u.EncKey) {
		return nil, fmt.Errorf("%w: the enc_key of %s", ErrKeyDocumentMismatch, u.Address())
	}
	for _, k := range u.SigningKeys {
		if !slices.ContainsFunc(doc.SigningKeys, func(d SigningKey) bool { return d.Alg == k.Alg && bytes.Equal(d.Key, k.Key) }) {
			return nil, fmt.Errorf("%w: a device key of %s", ErrKeyDocumentMismatch, u.Address())
		}
	}
	return doc, nil
}

// keyDirectory is a client of the sig-server that WebFinger links u's key
// document to, nil when the server links none.
func (c *Client) keyDirectory(ctx context.Context, u *User) (*Client, error) {
	j, err := c.WebFinger(ctx, u.Handle)
	if err != nil {
		return nil, fmt.Errorf("finding the key directory of %s: %w", u.Handle, err)
	}
	for _, l := range j.Links {
		if l.Rel != relKeys {
			continue
		}
		base, ok := strings.CutSuffix(l.Href, "/v1/keys/"+u.PrimaryID)
		if !ok {
			return nil, fmt.Errorf("%w: WebFinger links the keys of %s to %s", ErrKeyDocumentMismatch, u.Handle, l.Href)
		}
		if base == strings.TrimRight(c.BaseURL(), "/") {
			return c, nil
		}
		return New(base, c.http), nil
	}
	return nil, nil
}

// relKeys is the WebFinger relation of an identity's key document.
const relKeys = "https://kez.lat/rel/keys"

// safetyWith is the safety number of this client's identity (Self) and
// the identity p pins for peer.
func (c *Client) safetyWith(ctx context.Context, p Pin, peer *User) (string, error) {
	if c.Self == nil {
		return "", errors.New("no identity to compare with")
	}
	alg, own, err := c.primaryKey(ctx)
	if err != nil {
		return "", err
	}
	key, err := signing.DecodeB64(p.Key)
	if err != nil {
		return "", err
	}
	return SafetyNumber(alg, own, c.Self.Handle+"@"+c.Self.Server, p.Alg, key, peer.Handle+"@"+peer.Server), nil
}

// primaryKey is Self's primary key: its signing key, or for a device key
// the one its primary_id derives from, read from its own record.
func (c *Client) primaryKey(ctx context.Context) (string, []byte, error) {
	if !c.Self.IsDevice() {
		return c.Self.Signer.Alg(), c.Self.Signer.PublicKey(), nil
	}
	u, err := c.lookupUnchecked(ctx, c.Self.Handle)
	if err != nil {
		return "", nil, err
	}
	if u.PrimaryID != c.Self.Primary {
		return "", nil, fmt.Errorf("the record of %s is of primary_id %s, this device speaks for %s", u.Handle, u.PrimaryID, c.Self.Primary)
	}
	return u.Alg, u.Key, nil
}

// SafetyNumber is the number two people compare to know that each has the
// other's primary key, and no one else's: 60 digits, the same on both
// sides, shown as 12 groups of 5. It changes when either primary key does.
func SafetyNumber(algA string, keyA []byte, addressA string, algB string, keyB []byte, addressB string) string {
	a, b := safetyHalf(algA, keyA, addressA), safetyHalf(algB, keyB, addressB)
	if b < a {
		a, b = b, a
	}
	digits := a + b
	var groups []string
	for i := 0; i < len(digits); i += 5 {
		groups = append(groups, digits[i:i+5])
	}
	return strings.Join(groups, " ")
}

// safetyHalf is one identity's 30 digits: SHA-256 over a fixed label, the
// key and its address; each of six 5-byte chunks, big-endian, mod 100000.
func safetyHalf(alg string, key []byte, address string) string {
	h := sha256.New()
	h.Write([]byte("kez-chat safety number v1\x00" + alg + "\x00"))
	h.Write(key)
	h.Write([]byte("\x00" + address))
	sum := h.Sum(nil)
	var b strings.Builder
	for i := range 6 {
		var chunk [8]byte
		copy(chunk[3:], sum[5*i:5*i+5])
		fmt.Fprintf(&b, "%05d", binary.BigEndian.Uint64(chunk[:])%100000)
	}
	return b.String()
}

// Safety is the safety number of this client's identity (Self) and
// name's (a handle, or an address elsewhere) pinned identity, or its
// current record's when none is pinned.
func (c *Client) Safety(ctx context.Context, name string) (string, error) {
	a, err := c.Name(ctx, name)
	if err != nil {
		return "", err
	}
	u, _, err := c.fetchRecord(ctx, a, false)
	if err != nil {
		return "", err
	}
	p := pinOf(u)
	if c.Pins != nil {
		if was, err := c.Pins.Pin(a.String()); err != nil {
			return "", err
		} else if was != nil {
			p = *was
		}
	}
	return c.safetyWith(ctx, p, u)
}

// Trust pins the current record of name (a handle, or an address
// elsewhere), after checking it against its key documents: what a person
// does once the new safety number matched. It returns the new safety
// number.
func (c *Client) Trust(ctx context.Context, name string) (string, error) {
	if c.Pins == nil {
		return "", errors.New("this client keeps no pins")
	}
	a, err := c.Name(ctx, name)
	if err != nil {
		return "", err
	}
	u, dir, err := c.fetchRecord(ctx, a, true)
	if err != nil {
		return "", err
	}
	doc, err := c.verifiedKeys(ctx, u, dir)
	if err != nil {
		return "", err
	}
	p := pinOf(u)
	if doc != nil {
		p.KeysVersion = doc.Version
	}
	if err := c.Pins.SavePin(a.String(), p); err != nil {
		return "", err
	}
	c.forget(a.String())
	return c.safetyWith(ctx, p, u)
}

// FilePins keeps pins in a JSON file only its owner may read, beside the
// identity file.
type FilePins struct {
	Path string
	mu   sync.Mutex
}

var _ Pins = (*FilePins)(nil)

func (f *FilePins) read() (map[string]Pin, error) {
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]Pin{}, nil
	}
	if err != nil {
		return nil, err
	}
	var file struct {
		V    int            `json:"v"`
		Pins map[string]Pin `json:"pins"`
	}
	if err := server.DecodeJSON(b, &file); err != nil || file.V != 1 {
		return nil, fmt.Errorf("%s: not a pins file of version 1 (%v)", f.Path, err)
	}
	if file.Pins == nil {
		file.Pins = map[string]Pin{}
	}
	return file.Pins, nil
}

// Pin returns handle's pin.
func (f *FilePins) Pin(handle string) (*Pin, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pins, err := f.read()
	if err != nil {
		return nil, err
	}
	if p, ok := pins[handle]; ok {
		return &p, nil
	}
	return nil, nil
}

// SavePin stores handle's pin, writing the file anew.
func (f *FilePins) SavePin(handle string, p Pin) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	pins, err := f.read()
	if err != nil {
		return err
	}
	pins[handle] = p
	b, err := json.MarshalIndent(struct {
		V    int            `json:"v"`
		Pins map[string]Pin `json:"pins"`
	}{1, pins}, "", "  ")
	if err != nil {
		return err
	}
	tmp := f.Path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, f.Path)
}
