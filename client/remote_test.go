package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// fakeDomain is another server on loopback, its domain 127.0.0.1:<port>:
// it answers WebFinger and the records of the people it is given, linking
// their key documents to keysURL when set. Its answers can be altered.
type fakeDomain struct {
	*httptest.Server
	domain string

	mu      sync.Mutex
	records map[string]server.PublicUser
	keysURL string
	// jrd, when set, changes each WebFinger answer.
	jrd func(j *JRD)
	// extra serves other paths.
	extra http.HandlerFunc
}

func newFakeDomain(t *testing.T) *fakeDomain {
	f := &fakeDomain{records: map[string]server.PublicUser{}}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	f.domain = strings.TrimPrefix(f.URL, "http://")
	return f
}

func (f *fakeDomain) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.URL.Path == "/.well-known/webfinger":
		res := r.URL.Query().Get("resource")
		handle, _ := strings.CutSuffix(strings.TrimPrefix(res, "acct:"), "@"+f.domain)
		rec, ok := f.records[handle]
		if !ok {
			http.Error(w, `{"error":{"code":"unknown_handle","message":"no"}}`, http.StatusNotFound)
			return
		}
		j := JRD{Subject: res, Links: []JRDLink{{Rel: "self", Type: "application/json", Href: f.URL + "/v1/u/" + handle}}}
		if f.keysURL != "" {
			j.Links = append(j.Links, JRDLink{Rel: relKeys, Href: f.keysURL + "/v1/keys/" + rec.PrimaryID})
		}
		if f.jrd != nil {
			f.jrd(&j)
		}
		w.Header().Set("Content-Type", "application/jrd+json")
		json.NewEncoder(w).Encode(j)
	case strings.HasPrefix(r.URL.Path, "/v1/u/"):
		rec, ok := f.records[strings.TrimPrefix(r.URL.Path, "/v1/u/")]
		if !ok {
			http.Error(w, `{"error":{"code":"unknown_handle","message":"no"}}`, http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(rec)
	case f.extra != nil:
		f.extra(w, r)
	default:
		http.NotFound(w, r)
	}
}

// person adds a person to the domain and returns its identity.
func (f *fakeDomain) person(t *testing.T, handle string) *Identity {
	id, u := newUser(t, "ed25519", handle)
	id.Server, u.Server = f.domain, f.domain
	f.mu.Lock()
	f.records[handle] = u.Public()
	f.mu.Unlock()
	return id
}

func (f *fakeDomain) set(change func(f *fakeDomain)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

// ownServerNowhere is a client of a server that is never reached: the
// people of other servers are not looked up at one's own.
func ownServerNowhere(t *testing.T) *Client {
	c := New("http://127.0.0.1:1", &http.Client{Timeout: 5 * time.Second})
	c.SetDomain("one.example")
	c.InsecureLoopback = true
	me, _ := newUser(t, "ed25519", "alice")
	me.Server = "one.example"
	c.Pins, c.Self = &FilePins{Path: filepath.Join(t.TempDir(), "pins.json")}, me
	return c
}

func TestAnAddressIsLookedUpAtItsOwnDomainAndPinnedByAddress(t *testing.T) {
	ctx := context.Background()
	two := newFakeDomain(t)
	bob := two.person(t, "bob")
	c := ownServerNowhere(t)
	addr := "bob@" + two.domain
	u, err := c.Lookup(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if u.Handle != "bob" || u.Server != two.domain || u.PrimaryID != bob.PrimaryID() {
		t.Fatalf("looked up %+v", u)
	}
	pin, err := c.Pins.Pin(addr)
	if err != nil || pin == nil || pin.PrimaryID != bob.PrimaryID() {
		t.Fatalf("pin of %s: %+v %v", addr, pin, err)
	}
	if p, _ := c.Pins.Pin("bob"); p != nil {
		t.Fatal("pinned under the bare handle, which is a person of the client's own server")
	}
	// Another identity under the address is refused, named by address,
	// until trusted.
	two.person(t, "bob")
	_, err = c.Lookup(ctx, addr)
	var changed *KeyChangedError
	if !errors.As(err, &changed) || changed.Handle != addr || changed.WasSafety == changed.NowSafety {
		t.Fatalf("a new primary key for %s: %v", addr, err)
	}
	if _, err := c.Trust(ctx, addr); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lookup(ctx, addr); err != nil {
		t.Fatalf("after trust: %v", err)
	}
	// An address at the client's own domain is the bare handle.
	if a, err := c.Name(ctx, "carol@one.example"); err != nil || a != (Address{Handle: "carol"}) {
		t.Fatalf("carol@one.example named %+v %v", a, err)
	}
}

func TestAnAddressAtALoopbackDomainNeedsInsecureLoopback(t *testing.T) {
	ctx := context.Background()
	two := newFakeDomain(t)
	two.person(t, "bob")
	c := ownServerNowhere(t)
	c.InsecureLoopback = false
	if _, err := c.Lookup(ctx, "bob@"+two.domain); !errors.Is(err, errLoopbackDomain) {
		t.Fatalf("lookup without InsecureLoopback: %v", err)
	}
	if _, err := c.DomainURL(two.domain); err == nil {
		t.Fatal("a loopback domain has an origin without InsecureLoopback")
	}
	for domain, want := range map[string]string{"two.example": "https://two.example", "127.0.0.1:7000": "http://127.0.0.1:7000"} {
		c.InsecureLoopback = true
		if got, err := c.DomainURL(domain); err != nil || got != want {
			t.Errorf("DomainURL(%s) = %q %v, want %q", domain, got, err, want)
		}
	}
}

func TestWhatAnotherDomainAnswersIsRefusedWhenItIsNotTheAddresss(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		change func(f *fakeDomain)
		want   error // nil: any error
	}{
		{"WebFinger about someone else", func(f *fakeDomain) {
			f.jrd = func(j *JRD) { j.Subject = "acct:carol@" + f.domain }
		}, nil},
		{"no record linked", func(f *fakeDomain) { f.jrd = func(j *JRD) { j.Links = nil } }, nil},
		{"the record of another handle", func(f *fakeDomain) {
			r := f.records["bob"]
			r.Handle = "carol"
			f.records["bob"] = r
		}, nil},
		{"the record of another server", func(f *fakeDomain) {
			r := f.records["bob"]
			r.Server = "three.example"
			f.records["bob"] = r
		}, nil},
		{"a record whose primary_id is not its key's", func(f *fakeDomain) {
			r := f.records["bob"]
			r.PrimaryID = strings.Repeat("0", 40)
			f.records["bob"] = r
		}, nil},
		{"a record linked over plain HTTP elsewhere than loopback", func(f *fakeDomain) {
			f.jrd = func(j *JRD) { j.Links[0].Href = "http://two.example/v1/u/bob" }
		}, nil},
		{"a record behind a redirect to plain HTTP", func(f *fakeDomain) {
			f.jrd = func(j *JRD) { j.Links[0].Href = f.URL + "/moved" }
			f.extra = func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "http://two.example/v1/u/bob", http.StatusFound)
			}
		}, nil},
		{"a keys link not to the record's identity", func(f *fakeDomain) {
			f.keysURL = f.URL
			f.jrd = func(j *JRD) { j.Links[1].Href = f.URL + "/v1/keys/" + strings.Repeat("0", 40) }
		}, ErrKeyDocumentMismatch},
		{"an answer over 64 KiB", func(f *fakeDomain) {
			f.jrd = func(j *JRD) { j.Links = append(j.Links, JRDLink{Rel: "padding", Href: strings.Repeat("x", 70<<10)}) }
		}, nil},
		{"no such person", func(f *fakeDomain) { delete(f.records, "bob") }, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			two := newFakeDomain(t)
			two.person(t, "bob")
			two.set(c.change)
			_, err := ownServerNowhere(t).Lookup(ctx, "bob@"+two.domain)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("looked up: %v, want %v", err, c.want)
			}
		})
	}
}

func TestAnAddresssKeysAreCheckedAgainstTheKeyDocumentItsDomainLinks(t *testing.T) {
	ctx := context.Background()
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	two := newFakeDomain(t)
	bob := two.person(t, "bob")
	two.set(func(f *fakeDomain) { f.keysURL = sig.URL })
	phone, err := bob.NewDevice("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	keys := []SigningKey{{Alg: "ed25519", Key: bob.Signer.PublicKey(), Label: "primary"}, {Alg: "ed25519", Key: phone.Signer.PublicKey(), Label: "phone"}}
	doc, err := NewKeyDocument(bob.Signer, nil, keys, bob.EncPublicKey(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := New(sig.URL, nil)
	if _, _, err := dir.PublishKeys(ctx, doc); err != nil {
		t.Fatal(err)
	}
	addr := "bob@" + two.domain
	// The record lists the published device keys: they speak for bob.
	two.set(func(f *fakeDomain) {
		r := f.records["bob"]
		r.SigningKeys = []server.SigningKeyJSON{{Alg: "ed25519", Key: signing.EncodeB64(keys[0].Key), Label: "primary"}, {Alg: "ed25519", Key: signing.EncodeB64(keys[1].Key), Label: "phone"}}
		r.KeysVersion = 1
		f.records["bob"] = r
	})
	c := ownServerNowhere(t)
	u, err := c.Lookup(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if !u.Authorizes("ed25519", phone.Signer.PublicKey()) {
		t.Fatal("the published device key does not speak for bob")
	}
	if pin, _ := c.Pins.Pin(addr); pin == nil || pin.KeysVersion != 1 {
		t.Fatalf("pin %+v", pin)
	}
	// An enc_key the document does not list is the domain's, not bob's.
	other, _ := NewIdentity("ed25519")
	two.set(func(f *fakeDomain) {
		r := f.records["bob"]
		r.EncKey = signing.EncodeB64(other.EncPublicKey())
		f.records["bob"] = r
	})
	if _, err := ownServerNowhere(t).Lookup(ctx, addr); !errors.Is(err, ErrKeyDocumentMismatch) {
		t.Fatalf("an enc_key no document lists: %v", err)
	}
}
