package client_test

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// swappingServer is a chat server behind a proxy that, once told to,
// answers another record for a handle, as a compromised server would.
type swappingServer struct {
	*httptest.Server
	swap atomic.Pointer[server.PublicUser] // answered for its Handle
	// hideKeys makes WebFinger link no key document.
	hideKeys atomic.Bool
}

func newSwappingServer(t *testing.T, target string) *swappingServer {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	s := &swappingServer{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ModifyResponse = func(res *http.Response) error {
		if s.hideKeys.Load() && res.Request.URL.Path == "/.well-known/webfinger" {
			b := []byte(`{"subject":"acct:hidden","links":[]}`)
			res.Body = io.NopCloser(bytes.NewReader(b))
			res.ContentLength = int64(len(b))
			res.Header.Set("Content-Length", strconv.Itoa(len(b)))
			return nil
		}
		fake := s.swap.Load()
		if fake == nil || res.Request.URL.Path != "/v1/u/"+fake.Handle {
			return nil
		}
		b, _ := json.Marshal(fake)
		res.Body = io.NopCloser(bytes.NewReader(b))
		res.ContentLength = int64(len(b))
		res.Header.Set("Content-Length", strconv.Itoa(len(b)))
		return nil
	}
	s.Server = httptest.NewServer(proxy)
	t.Cleanup(s.Close)
	return s
}

// pinningClient is a client of url that checks keys with the pins in
// pins, as the CLI does; each has a fresh cache of records.
func pinningClient(url, pins string, self *client.Identity) *client.Client {
	c := client.New(url, &http.Client{Timeout: 10 * time.Second})
	c.Pins = &client.FilePins{Path: pins}
	c.Self = self
	return c
}

func TestASwappedKeyIsRefusedUntilTheNewSafetyNumberIsTrusted(t *testing.T) {
	ctx := context.Background()
	srv, plain := startServer(t)
	alice := register(t, plain, "ed25519", "alice")
	bob := register(t, plain, "ed25519", "bob")
	front := newSwappingServer(t, srv.URL)
	pins := filepath.Join(t.TempDir(), "pins.json")
	c := pinningClient(front.URL, pins, alice)
	if _, err := c.Send(ctx, alice, "bob", "first contact pins bob"); err != nil {
		t.Fatal(err)
	}
	before, err := c.Safety(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}

	// The server now answers its own key for bob: it could read what
	// alice writes. Only the key, then the whole identity.
	enc, _ := ecdh.X25519().GenerateKey(rand.Reader)
	bobRec, _ := plain.Lookup(ctx, "bob")
	swapped := bobRec.Public()
	swapped.EncKey = signing.EncodeB64(enc.PublicKey().Bytes())
	front.swap.Store(&swapped)
	c2 := pinningClient(front.URL, pins, alice)
	_, err = c2.Send(ctx, alice, "bob", "must not be readable by the server")
	var changed *client.KeyChangedError
	if !errors.As(err, &changed) || changed.Handle != "bob" || !strings.Contains(changed.Why, "enc_key") {
		t.Fatalf("sending to a swapped enc_key: %v, want a KeyChangedError", err)
	}
	mallory, _ := client.NewIdentity("ed25519")
	whole := swapped
	whole.Alg, whole.Key, whole.PrimaryID = "ed25519", signing.EncodeB64(mallory.Signer.PublicKey()), mallory.PrimaryID()
	front.swap.Store(&whole)
	_, err = c2.Send(ctx, alice, "bob", "must not be readable by the server")
	if !errors.As(err, &changed) || changed.Why != "another primary key" || changed.WasSafety != before || changed.NowSafety == before {
		t.Fatalf("sending to a swapped identity: %v, want a KeyChangedError with the old and a new safety number", err)
	}
	// The inbox holds only the first message.
	page, err := plain.Poll(ctx, bob, 0, 10)
	if err != nil || len(page.Messages) != 1 {
		t.Fatalf("bob's inbox: %d messages, %v; want the first only", len(page.Messages), err)
	}

	// Alice and bob compare safety numbers; this time they match (the
	// server stops swapping: bob really has the keys it answers).
	front.swap.Store(nil)
	now, err := c2.Trust(ctx, "bob")
	if err != nil || now != before {
		t.Fatalf("Trust = %q, %v; want the first safety number %q", now, err, before)
	}
	if _, err := c2.Send(ctx, alice, "bob", "after trusting"); err != nil {
		t.Fatal(err)
	}
}

func TestAKeyDocumentSignedByThePinnedKeyMovesThePinAndAnUnsignedOneDoesNot(t *testing.T) {
	ctx := context.Background()
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	srv := testutil.StartServer(t, testutil.Options{SigServerURL: sig.URL})
	plain := client.New(srv.URL, &http.Client{Timeout: 10 * time.Second})
	alice := register(t, plain, "ed25519", "alice")
	bob := register(t, plain, "ed25519", "bob")
	keys := client.New(sig.URL, &http.Client{Timeout: 10 * time.Second})
	publish := func(prev *client.KeyDocument, enc []byte) *client.KeyDocument {
		t.Helper()
		doc, err := client.NewKeyDocument(bob.Signer, prev, []client.SigningKey{{Alg: bob.Signer.Alg(), Key: bob.Signer.PublicKey(), Label: "primary"}}, enc, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := keys.PublishKeys(ctx, doc); err != nil {
			t.Fatal(err)
		}
		d, err := keys.LatestKeys(ctx, bob.PrimaryID())
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	v1 := publish(nil, bob.Enc.PublicKey().Bytes())
	front := newSwappingServer(t, srv.URL)
	pins := filepath.Join(t.TempDir(), "pins.json")
	if _, err := pinningClient(front.URL, pins, alice).Send(ctx, alice, "bob", "pinned at version 1"); err != nil {
		t.Fatal(err)
	}

	// Bob moves to a new encryption key, signed by his primary key: the
	// pin follows without a word.
	newEnc, _ := ecdh.X25519().GenerateKey(rand.Reader)
	publish(v1, newEnc.PublicKey().Bytes())
	if _, err := pinningClient(front.URL, pins, alice).Send(ctx, alice, "bob", "to the new key"); err != nil {
		t.Fatalf("sending after a signed key change: %v", err)
	}

	// A server that hides the documents once does not lower the version
	// pinned (a rollback to version 1 would pass after it).
	front.hideKeys.Store(true)
	if _, err := pinningClient(front.URL, pins, alice).Send(ctx, alice, "bob", "directory hidden"); err != nil {
		t.Fatalf("sending to the pinned enc_key with the directory hidden: %v", err)
	}
	if p, err := (&client.FilePins{Path: pins}).Pin("bob"); err != nil || p.KeysVersion != 2 {
		t.Fatalf("pin after a hidden directory: %+v %v, want keys_version 2", p, err)
	}
	front.hideKeys.Store(false)

	// The server answers yet another enc_key, which no document lists.
	rec, _ := plain.Lookup(ctx, "bob")
	swapped := rec.Public()
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	swapped.EncKey = signing.EncodeB64(other.PublicKey().Bytes())
	front.swap.Store(&swapped)
	if _, err := pinningClient(front.URL, pins, alice).Send(ctx, alice, "bob", "never"); !errors.Is(err, client.ErrKeyDocumentMismatch) {
		t.Fatalf("an enc_key the key document does not list: %v, want ErrKeyDocumentMismatch", err)
	}
}

func TestSafetyNumbersAreTheSameOnBothSides(t *testing.T) {
	a, b := make([]byte, 32), make([]byte, 32)
	b[0] = 1
	ab := client.SafetyNumber("ed25519", a, "alice@chat.test", "ed25519", b, "bob@chat.test")
	ba := client.SafetyNumber("ed25519", b, "bob@chat.test", "ed25519", a, "alice@chat.test")
	if ab != ba || len(strings.ReplaceAll(ab, " ", "")) != 60 || len(strings.Fields(ab)) != 12 {
		t.Fatalf("safety numbers %q and %q: want the same 12 groups of 5 digits", ab, ba)
	}
	b[31] = 9
	if changed := client.SafetyNumber("ed25519", a, "alice@chat.test", "ed25519", b, "bob@chat.test"); changed == ab {
		t.Fatal("another key gives the same safety number")
	}
}
