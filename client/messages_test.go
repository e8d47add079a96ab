package client

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

const testDomain = "chat.test"

// newUser makes a registered-looking identity and its public record.
func newUser(t *testing.T, alg, handle string) (*Identity, *User) {
	t.Helper()
	id, err := NewIdentity(alg)
	if err != nil {
		t.Fatal(err)
	}
	id.Handle, id.Server = handle, testDomain
	return id, &User{
		Handle:    handle,
		Server:    testDomain,
		PrimaryID: id.PrimaryID(),
		Alg:       alg,
		Key:       id.Signer.PublicKey(),
		EncKey:    id.EncPublicKey(),
		CreatedAt: time.Unix(1764000000, 0),
	}
}

// envelopeOf passes doc through the server's envelope encoding and back, as
// a recipient receives it.
func envelopeOf(t *testing.T, seq uint64, doc signing.Signed) Envelope {
	t.Helper()
	msg, err := marshalDoc(doc)
	if err != nil {
		t.Fatal(err)
	}
	se := &server.Envelope{Seq: seq, ReceivedAt: time.Unix(1764000001, 0), Message: msg}
	data, err := se.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var env Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	if env.Seq != seq || env.ReceivedAt != 1764000001 {
		t.Fatalf("envelope decoded as %+v", env)
	}
	return env
}

func TestNewMessageVerifiesAndDecrypts(t *testing.T) {
	for _, alg := range signing.Algorithms() {
		t.Run(alg, func(t *testing.T) {
			alice, aliceU := newUser(t, alg, "alice")
			bob, bobU := newUser(t, "ed25519", "bob")
			body := "hi bob <3 & \u00e9\U0001F600\nsecond line"
			doc, err := NewMessage(alice, bobU, "m-1", body)
			if err != nil {
				t.Fatal(err)
			}
			canonical, pub, err := doc.Verify()
			if err != nil {
				t.Fatal(err)
			}
			if string(pub) != string(alice.Signer.PublicKey()) || doc.Signature.Alg != alg {
				t.Fatal("not signed by alice's key")
			}
			if string(canonical) != string(doc.Payload) {
				t.Fatal("payload is not stored in canonical form")
			}
			var p server.MessagePayload
			if err := server.DecodeJSON(canonical, &p); err != nil {
				t.Fatalf("the server's strict decoder refuses the payload: %v", err)
			}
			if p.Type != server.TypeMessage || p.Server != testDomain || p.From != "alice" || p.To != "bob" || p.ID != "m-1" {
				t.Fatalf("payload %+v", p)
			}
			if d := time.Since(time.Unix(p.TS, 0)); d < 0 || d > time.Minute {
				t.Fatalf("ts %d is not now", p.TS)
			}
			env := envelopeOf(t, 7, doc)
			pt, err := bob.Decrypt(env, aliceU)
			if err != nil {
				t.Fatal(err)
			}
			if pt.V != 1 || pt.From != "alice" || pt.To != "bob" || pt.Body != body || pt.TS != p.TS {
				t.Fatalf("plaintext %+v", pt)
			}
			if hdr, err := env.Payload(); err != nil || hdr.From != "alice" {
				t.Fatalf("Payload: %v %+v", err, hdr)
			}
		})
	}
}

func TestDecryptRefusesForgeries(t *testing.T) {
	alice, aliceU := newUser(t, "ed25519", "alice")
	bob, bobU := newUser(t, "ed25519", "bob")
	mallory, malloryU := newUser(t, "bip340", "mallory")
	carol, carolU := newUser(t, "ed25519", "carol")
	now := time.Now()

	good, err := NewMessage(alice, bobU, "m-1", "hello")
	if err != nil {
		t.Fatal(err)
	}
	// signPayload signs an edited copy of a payload with s.
	signPayload := func(s signing.Signer, p server.MessagePayload) signing.Signed {
		doc, err := signing.Sign(s, p)
		if err != nil {
			t.Fatal(err)
		}
		return doc
	}
	var goodP server.MessagePayload
	if err := json.Unmarshal(good.Payload, &goodP); err != nil {
		t.Fatal(err)
	}
	// A ciphertext to bob whose plaintext claims another sender.
	sealed := func(pt Plaintext) string {
		raw, _ := marshalPlaintext(pt)
		ct, err := Seal(bobU.EncKey, raw)
		if err != nil {
			t.Fatal(err)
		}
		return signing.EncodeB64(ct)
	}

	tampered := good
	tampered.Payload = json.RawMessage(strings.Replace(string(good.Payload), `"id":"m-1"`, `"id":"m-2"`, 1))

	cases := []struct {
		name   string
		env    Envelope
		sender *User
		as     *Identity
	}{
		{"tampered payload", envelopeOf(t, 1, tampered), aliceU, bob},
		{"wrong sender record", envelopeOf(t, 1, good), malloryU, bob},
		{"signed by mallory, from alice", envelopeOf(t, 1, signPayload(mallory.Signer, goodP)), aliceU, bob},
		{"from mallory claiming alice", envelopeOf(t, 1, func() signing.Signed {
			p := goodP
			p.From = "mallory"
			p.CT = sealed(Plaintext{V: 1, From: "alice", To: "bob", TS: now.Unix(), Body: "x"})
			return signPayload(mallory.Signer, p)
		}()), malloryU, bob},
		{"plaintext to carol", envelopeOf(t, 1, func() signing.Signed {
			p := goodP
			p.CT = sealed(Plaintext{V: 1, From: "alice", To: "carol", TS: now.Unix(), Body: "x"})
			return signPayload(alice.Signer, p)
		}()), aliceU, bob},
		{"addressed to bob, opened by carol", envelopeOf(t, 1, good), aliceU, carol},
		{"addressed to carol, encrypted to bob", envelopeOf(t, 1, func() signing.Signed {
			doc, err := NewMessage(alice, &User{Handle: "carol", Server: testDomain, EncKey: bobU.EncKey}, "m", "x")
			if err != nil {
				t.Fatal(err)
			}
			return doc
		}()), aliceU, bob},
		{"other server", envelopeOf(t, 1, func() signing.Signed {
			p := goodP
			p.Server = "evil.example"
			return signPayload(alice.Signer, p)
		}()), aliceU, bob},
		{"wrong type", envelopeOf(t, 1, func() signing.Signed {
			p := goodP
			p.Type = server.TypeRegister
			return signPayload(alice.Signer, p)
		}()), aliceU, bob},
		{"ct tampered and re-signed", envelopeOf(t, 1, func() signing.Signed {
			p := goodP
			ct, _ := signing.DecodeB64(p.CT)
			ct[len(ct)-1] ^= 1
			p.CT = signing.EncodeB64(ct)
			return signPayload(alice.Signer, p)
		}()), aliceU, bob},
		{"not encrypted to bob", envelopeOf(t, 1, func() signing.Signed {
			doc, _ := NewMessage(alice, &User{Handle: "bob", Server: testDomain, EncKey: carolU.EncKey}, "m", "x")
			return doc
		}()), aliceU, bob},
	}
	for _, c := range cases {
		pt, err := c.as.Decrypt(c.env, c.sender)
		t.Logf("%s: %v", c.name, err)
		if !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s: got %+v, %v; want ErrInvalidMessage", c.name, pt, err)
		}
	}
	// The untouched message still opens.
	if _, err := bob.Decrypt(envelopeOf(t, 1, good), aliceU); err != nil {
		t.Fatal(err)
	}
}

func TestNewMessageNeedsHandle(t *testing.T) {
	id, _ := NewIdentity("ed25519")
	_, bobU := newUser(t, "ed25519", "bob")
	if _, err := NewMessage(id, bobU, "m", "x"); err == nil {
		t.Fatal("built a message from an unregistered identity")
	}
}

func TestNewMessageID(t *testing.T) {
	a, b := NewMessageID(), NewMessageID()
	if a == b || len(a) != 22 {
		t.Fatalf("ids %q %q", a, b)
	}
	for _, c := range a {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			t.Fatalf("id %q has %q", a, c)
		}
	}
}

func TestPayloadReadsAMessageThatNamesBlobs(t *testing.T) {
	id := server.NewBlobID()
	e := Envelope{Seq: 1, Message: signing.Signed{Payload: json.RawMessage(`{"blobs":["` + id + `"],"ct":"AAAA","from":"alice","id":"m-1","server":"chat.test","to":"bob","ts":1764000000,"type":"kez.chat.message/v1"}`)}}
	p, err := e.Payload()
	if err != nil || len(p.Blobs) != 1 || p.Blobs[0] != id {
		t.Fatalf("Payload: %+v, %v", p, err)
	}
	// The member is omitted when a message names none, as before.
	b, _ := json.Marshal(MessagePayload{Type: server.TypeMessage, From: "alice"})
	if strings.Contains(string(b), "blobs") {
		t.Errorf("a payload without blobs encodes %s", b)
	}
}
