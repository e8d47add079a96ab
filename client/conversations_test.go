package client_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/client/clienttest"
	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
	"kez.lat/chat/server/testutil"
)

// person is one member of a conversation: an identity, a client of its
// own (its own cache of records) and its groups.
type person struct {
	id     *client.Identity
	c      *client.Client
	groups *client.Groups
}

func newPerson(t *testing.T, url, handle string) *person {
	t.Helper()
	c := clienttest.New(t, url, 10*time.Second)
	id := clienttest.Register(t, c, handle)
	return &person{id: id, c: c, groups: client.NewGroups(handle)}
}

// receive reads p's inbox from where its groups stand, applies each
// message to them as a reader would, and returns those they let through.
func (p *person) receive(t *testing.T) []client.Plaintext {
	t.Helper()
	ctx := context.Background()
	var out []client.Plaintext
	for {
		page, err := p.c.Poll(ctx, p.id, p.groups.Seq, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Messages) == 0 {
			return out
		}
		for _, env := range page.Messages {
			pt, err := p.c.Decrypt(ctx, p.id, env)
			if err != nil {
				t.Fatalf("%s reading seq %d: %v", p.id.Handle, env.Seq, err)
			}
			if err := p.groups.ReceiveAt(env.Seq, &pt); err == nil {
				out = append(out, pt)
			}
		}
	}
}

// bodies is the bodies of the text messages among pts.
func bodies(pts []client.Plaintext) []string {
	var out []string
	for _, pt := range pts {
		if pt.KindOrText() == client.KindText {
			out = append(out, pt.From+": "+pt.Body)
		}
	}
	return out
}

func TestAGroupOfThreeTalksAndARemovedMemberStopsReceiving(t *testing.T) {
	ctx := context.Background()
	srv := testutil.StartServer(t, testutil.Options{})
	alice, bob, carol := newPerson(t, srv.URL, "alice"), newPerson(t, srv.URL, "bob"), newPerson(t, srv.URL, "carol")

	v1, err := client.NewGroup("alice", "team", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	own, err := alice.c.SendGroupChange(ctx, alice.id, nil, v1)
	if err != nil {
		t.Fatal(err)
	}
	if own.To != "alice" {
		t.Fatalf("the receipt of alice's own copy is %+v", own)
	}
	// Alice takes her own group when she reads it back, as the others do.
	if alice.groups.State(v1.ID) != nil {
		t.Fatal("alice holds the group before reading her inbox")
	}
	for _, p := range []*person{alice, bob, carol} {
		if err := p.c.SyncGroups(ctx, p.id, p.groups); err != nil {
			t.Fatal(err)
		}
		if s := p.groups.State(v1.ID); s == nil || s.Hash() != v1.Hash() || len(p.groups.List()) != 1 {
			t.Fatalf("%s holds %+v after the create", p.id.Handle, s)
		}
	}

	send := func(p *person, body string) []client.Receipt {
		t.Helper()
		s := p.groups.State(v1.ID)
		rs, pt, err := p.c.SendGroup(ctx, p.id, client.Without(s.Members, p.id.Handle),
			client.Plaintext{Body: body, Group: &client.GroupRef{ID: v1.ID}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.ID != pt.MID+":"+r.To {
				t.Errorf("envelope id %q to %s, want <mid>:<to>", r.ID, r.To)
			}
		}
		return rs
	}
	if rs := send(bob, "hi from bob"); len(rs) != 2 {
		t.Fatalf("bob's group send: %d receipts", len(rs))
	}
	send(alice, "hi from alice")
	for _, c := range []struct {
		p    *person
		want []string
	}{
		{alice, []string{"bob: hi from bob"}},
		{bob, []string{"alice: hi from alice"}},
		{carol, []string{"bob: hi from bob", "alice: hi from alice"}},
	} {
		if got := bodies(c.p.receive(t)); !slices.Equal(got, c.want) {
			t.Errorf("%s read %q, want %q", c.p.id.Handle, got, c.want)
		}
	}

	// Alice removes carol: carol's client learns it from the change itself.
	v2, err := v1.Next("alice", client.OpRemove, func(n *client.GroupState) { n.Members = client.Without(n.Members, "carol") })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.SendGroupChange(ctx, alice.id, v1, v2); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*person{alice, bob, carol} {
		p.receive(t)
		if s := p.groups.State(v1.ID); s == nil || s.Hash() != v2.Hash() {
			t.Fatalf("%s holds %+v after the removal", p.id.Handle, s)
		}
	}
	if len(carol.groups.List()) != 0 || carol.groups.Accepts(v1.ID, "alice") {
		t.Error("carol still shows the group she was removed from")
	}
	if rs := send(bob, "without carol"); len(rs) != 1 || rs[0].To != "alice" {
		t.Fatalf("bob's send after the removal went to %+v", rs)
	}
	if got := bodies(carol.receive(t)); len(got) != 0 {
		t.Errorf("carol received %q after her removal", got)
	}
	if got := bodies(alice.receive(t)); !slices.Equal(got, []string{"bob: without carol"}) {
		t.Errorf("alice read %q", got)
	}

	// Carol, no longer a member, cannot write into the group.
	if _, _, err := carol.c.SendGroup(ctx, carol.id, []string{"alice"},
		client.Plaintext{Body: "still here?", Group: &client.GroupRef{ID: v1.ID}}, nil); err != nil {
		t.Fatal(err)
	}
	if got := alice.receive(t); len(got) != 0 {
		t.Errorf("alice let through %+v from a removed member", got)
	}
}

func TestAGroupSendIsAllOrNothingAndNamesTheRefusedDocument(t *testing.T) {
	ctx := context.Background()
	srv := testutil.StartServer(t, testutil.Options{})
	alice, bob := newPerson(t, srv.URL, "alice"), newPerson(t, srv.URL, "bob")
	bobRec, err := alice.c.Lookup(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	nobody := *bobRec
	nobody.Handle = "nobody"
	doc := func(to *client.User, body string) signing.Signed {
		t.Helper()
		d, err := client.NewMessageDoc(alice.id, to, "m1:"+to.Handle, client.Plaintext{Body: body, MID: "m1"}, nil, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	_, _, err = alice.c.SendBatch(ctx, alice.id, []signing.Signed{doc(bobRec, "one"), doc(&nobody, "two")})
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != server.CodeUnknownRecipient || apiErr.Index != 1 {
		t.Fatalf("a group send to an unknown handle: %v, want unknown_recipient naming document 1", err)
	}
	if page, err := bob.c.Poll(ctx, bob.id, 0, 10); err != nil || len(page.Messages) != 0 {
		t.Fatalf("bob's inbox after a refused group send: %+v %v", page.Messages, err)
	}

	docs := []signing.Signed{doc(bobRec, "one")}
	first, replayed, err := alice.c.SendBatch(ctx, alice.id, docs)
	if err != nil || replayed || len(first) != 1 || first[0].To != "bob" {
		t.Fatalf("group send: %+v %v %v", first, replayed, err)
	}
	again, replayed, err := alice.c.SendBatch(ctx, alice.id, docs)
	if err != nil || !replayed || again[0] != first[0] {
		t.Fatalf("the same group send again: %+v replayed %v %v; want the first receipts, replayed", again, replayed, err)
	}
	if _, _, err := alice.c.SendBatch(ctx, alice.id, nil); err == nil {
		t.Error("an empty group send was posted")
	}
	many := make([]signing.Signed, client.MaxBatchDocuments+1)
	if _, _, err := alice.c.SendBatch(ctx, alice.id, many); err == nil {
		t.Errorf("a group send of %d documents was posted", len(many))
	}
}

func TestEveryDeviceOfAnIdentityReadsWhatAnotherSent(t *testing.T) {
	ctx := context.Background()
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	srv := testutil.StartServer(t, testutil.Options{SigServerURL: sig.URL})
	alice, bob := newPerson(t, srv.URL, "alice"), newPerson(t, srv.URL, "bob")
	phone, err := alice.id.NewDevice("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	keys := client.New(sig.URL, &http.Client{Timeout: 10 * time.Second})
	doc, err := client.NewKeyDocument(alice.id.Signer, nil, []client.SigningKey{
		{Alg: "ed25519", Key: alice.id.Signer.PublicKey(), Label: "primary"},
		{Alg: "ed25519", Key: phone.Signer.PublicKey(), Label: "phone"},
	}, alice.id.EncPublicKey(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := keys.PublishKeys(ctx, doc); err != nil {
		t.Fatal(err)
	}
	onPhone := &person{id: phone, c: clienttest.New(t, srv.URL, 10*time.Second), groups: client.NewGroups("alice")}

	r, pt, err := onPhone.c.SendTo(ctx, phone, "bob", client.Plaintext{Body: "from my phone"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.To != "bob" || r.ID != pt.MID+":bob" {
		t.Fatalf("receipt %+v for mid %s, want bob's, of id <mid>:bob", r, pt.MID)
	}
	got := bob.receive(t)
	if len(got) != 1 || got[0].Body != "from my phone" || got[0].MID != pt.MID || got[0].Peer != "" {
		t.Fatalf("bob read %+v", got)
	}
	copies := alice.receive(t)
	if len(copies) != 1 || copies[0].Body != "from my phone" || copies[0].MID != pt.MID || copies[0].Conversation("alice") != "bob" {
		t.Fatalf("alice's other device read %+v, want the sync copy of the conversation with bob", copies)
	}

	// Bob, with one device, sends no sync copy: one message, id the mid.
	r, pt, err = bob.c.SendTo(ctx, bob.id, "alice", client.Plaintext{Body: "to both of yours"}, nil)
	if err != nil || r.ID != pt.MID {
		t.Fatalf("bob's send: %+v %v, want envelope id the mid", r, err)
	}
}
