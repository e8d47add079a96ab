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

// userAt makes a registered-looking identity on the server of domain.
func userAt(t *testing.T, handle, domain string) (*Identity, *User) {
	id, u := newUser(t, "ed25519", handle)
	id.Server, u.Server = domain, domain
	return id, u
}

func TestAMessageToAnotherServerIsFromTheSendersAddressForTheRecipientsServer(t *testing.T) {
	alice, aliceU := userAt(t, "alice", "one.example")
	bob, bobU := userAt(t, "bob", "two.example")
	pt := Plaintext{Body: "hi", Reply: &Reply{From: "carol", MID: "m0"}}
	doc, err := NewMessageDoc(alice, bobU, "m-1", pt, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var p server.MessagePayload
	if err := server.DecodeJSON(doc.Payload, &p); err != nil {
		t.Fatal(err)
	}
	if p.From != "alice@one.example" || p.To != "bob" || p.Server != "two.example" {
		t.Fatalf("payload from %q to %q for %q", p.From, p.To, p.Server)
	}
	got, err := bob.Decrypt(envelopeOf(t, 1, doc), aliceU)
	if err != nil {
		t.Fatal(err)
	}
	// From and to are the payload's; carol, alice's neighbour, is named
	// by address on two.
	if got.From != "alice@one.example" || got.To != "bob" || got.Body != "hi" || got.Reply.From != "carol@one.example" {
		t.Fatalf("bob reads %+v (reply %+v)", got, got.Reply)
	}
	if got.Conversation("bob") != "alice@one.example" {
		t.Fatalf("conversation %q", got.Conversation("bob"))
	}
}

func TestAMessageFromAnotherServerIsRefusedWhenItsNamesDoNotHold(t *testing.T) {
	alice, aliceU := userAt(t, "alice", "one.example")
	bob, bobU := userAt(t, "bob", "two.example")
	now := time.Now()
	sign := func(p server.MessagePayload) Envelope {
		doc, err := signing.Sign(alice.Signer, p)
		if err != nil {
			t.Fatal(err)
		}
		return envelopeOf(t, 1, doc)
	}
	sealed := func(pt Plaintext) string {
		raw, _ := marshalPlaintext(pt)
		ct, err := Seal(bobU.EncKey, raw)
		if err != nil {
			t.Fatal(err)
		}
		return signing.EncodeB64(ct)
	}
	good := server.MessagePayload{Type: server.TypeMessage, Server: "two.example", From: "alice@one.example", To: "bob", ID: "m",
		TS: now.Unix(), CT: sealed(Plaintext{V: 1, From: "alice@one.example", To: "bob", TS: now.Unix(), Body: "x"})}
	if _, err := bob.Decrypt(sign(good), aliceU); err != nil {
		t.Fatalf("the good message: %v", err)
	}
	for _, c := range []struct {
		name   string
		change func(p *server.MessagePayload)
	}{
		{"from the bare handle", func(p *server.MessagePayload) {
			p.From = "alice"
			p.CT = sealed(Plaintext{V: 1, From: "alice", To: "bob", TS: now.Unix(), Body: "x"})
		}},
		{"from the address at another domain", func(p *server.MessagePayload) {
			p.From = "alice@three.example"
			p.CT = sealed(Plaintext{V: 1, From: "alice@three.example", To: "bob", TS: now.Unix(), Body: "x"})
		}},
		{"for the sender's server", func(p *server.MessagePayload) { p.Server = "one.example" }},
		{"to bob's address", func(p *server.MessagePayload) {
			p.To = "bob@two.example"
			p.CT = sealed(Plaintext{V: 1, From: "alice@one.example", To: "bob@two.example", TS: now.Unix(), Body: "x"})
		}},
		{"a plaintext from the bare handle", func(p *server.MessagePayload) {
			p.CT = sealed(Plaintext{V: 1, From: "alice", To: "bob", TS: now.Unix(), Body: "x"})
		}},
		{"a group state naming one person twice", func(p *server.MessagePayload) {
			s := &GroupState{ID: NewGroupID(), Version: 1, Name: "g", Members: []string{"alice", "alice@one.example", "bob@two.example"},
				Admins: []string{"alice"}, By: "alice", Op: OpCreate}
			p.CT = sealed(Plaintext{V: 1, From: "alice@one.example", To: "bob", TS: now.Unix(), Kind: KindGroup, Group: &GroupRef{ID: s.ID}, State: s})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := good
			c.change(&p)
			if pt, err := bob.Decrypt(sign(p), aliceU); !errors.Is(err, ErrInvalidMessage) {
				t.Fatalf("read %+v, %v", pt, err)
			}
		})
	}
}

func TestAGroupStateFromAnotherServerIsTakenInTheReadersNames(t *testing.T) {
	alice, aliceU := userAt(t, "alice", "one.example")
	bob, bobU := userAt(t, "bob", "two.example")
	s, err := NewGroup("alice", "team", []string{"bob@two.example", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := NewMessageDoc(alice, bobU, "m:bob:two.example", Plaintext{Kind: KindGroup, Group: &GroupRef{ID: s.ID}, State: s}, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pt, err := bob.Decrypt(envelopeOf(t, 7, doc), aliceU)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGroups("bob")
	g.Domain = "two.example"
	if err := g.ReceiveAt(7, &pt); err != nil {
		t.Fatal(err)
	}
	got := g.State(s.ID)
	if got.Hash() != s.Hash() || strings.Join(got.Members, ",") != "alice@one.example,bob,carol@one.example" || got.By != "alice@one.example" {
		t.Fatalf("bob holds %+v (%s), alice made %s", got, got.Hash(), s.Hash())
	}
	if !g.Accepts(s.ID, "carol@one.example") || g.Accepts(s.ID, "carol") {
		t.Fatal("carol of one is the member, not a carol of two")
	}
	// The state is carried again as it was written, whatever bob reads.
	b, _ := json.Marshal(got)
	if !strings.Contains(string(b), `"members":["alice","bob@two.example","carol"]`) {
		t.Fatalf("carried again as %s", b)
	}
}

func TestEnvelopeIDsOfAGroupSendAreDistinctAcrossServers(t *testing.T) {
	mid := NewMessageID()
	long := strings.Repeat("d", 60) + ".example"
	ids := map[string]string{}
	for name, want := range map[string]string{
		"bob":                    mid + ":bob",
		"bob@two.example":        mid + ":bob:two.example",
		"bob@three.example":      mid + ":bob:three.example",
		"bob@127.0.0.1:7000":     mid + ":bob:127.0.0.1:7000",
		"bob@" + long:            mid + ":" + sha256B64([]byte("bob@" + long))[:22],
		"carol@" + long + ".net": mid + ":" + sha256B64([]byte("carol@" + long + ".net"))[:22],
	} {
		got := envelopeID(mid, name)
		if got != want || !ValidMessageID(got) {
			t.Errorf("envelopeID(%s) = %q, want %q", name, got, want)
		}
		if other, ok := ids[got]; ok {
			t.Errorf("%s and %s share %q", name, other, got)
		}
		ids[got] = name
	}
}
