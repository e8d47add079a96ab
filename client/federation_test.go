package client_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/client/clienttest"
	"kez.lat/chat/server"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/testutil"
)

// These tests run several real chat servers on loopback, each its own
// domain (127.0.0.1:<port>) with a sig-server of its own, federating over
// plain HTTP as they would over HTTPS, and people chat across them
// through the Go client.

// fedWait bounds every wait for a relay between servers.
const fedWait = 20 * time.Second

// fedServer is a federated chat server and its sig-server.
type fedServer struct {
	srv    *testutil.Server
	sig    *testutil.SigServer
	domain string
}

func startFedServer(t *testing.T) *fedServer {
	t.Helper()
	sig := testutil.StartSigServer(t, testutil.SigOptions{})
	srv := testutil.StartServer(t, testutil.Options{Federation: &app.Federation{}, SigServerURL: sig.URL})
	return &fedServer{srv: srv, sig: sig, domain: srv.Service.Domain()}
}

// fedPerson is a person at a client of its server: pins kept, people at
// loopback test domains reached, groups followed.
type fedPerson struct {
	t      *testing.T
	id     *client.Identity
	c      *client.Client
	groups *client.Groups
	server *fedServer
	seq    uint64 // the inbox read so far (read)
}

// person registers handle on s and publishes its key document (its
// primary key alone), as a client does.
func (s *fedServer) person(t *testing.T, handle string) *fedPerson {
	t.Helper()
	ctx := context.Background()
	c := clienttest.New(t, s.srv.URL, 10*time.Second)
	c.InsecureLoopback = true
	id := clienttest.Register(t, c, handle)
	doc, err := client.NewKeyDocument(id.Signer, nil, []client.SigningKey{{Alg: id.Signer.Alg(), Key: id.Signer.PublicKey(), Label: "primary"}}, id.EncPublicKey(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := clienttest.New(t, s.sig.URL, 10*time.Second).PublishKeys(ctx, doc); err != nil {
		t.Fatal(err)
	}
	c.Pins, c.Self = &client.FilePins{Path: filepath.Join(t.TempDir(), handle+".pins.json")}, id
	g := client.NewGroups(handle)
	g.Domain = s.domain
	return &fedPerson{t: t, id: id, c: c, groups: g, server: s}
}

// address is p's address, as people of other servers name it.
func (p *fedPerson) address() string { return p.id.Handle + "@" + p.server.domain }

// read waits until p's inbox holds n messages after what p read, and
// returns them decrypted, applied to p's groups, in order.
func (p *fedPerson) read(n int) []client.Plaintext {
	p.t.Helper()
	ctx := context.Background()
	var page client.Page
	testutil.Eventually(p.t, fedWait, fmt.Sprintf("%d messages for %s", n, p.address()), func() bool {
		var err error
		page, err = p.c.Poll(ctx, p.id, p.seq, 0)
		if err != nil {
			p.t.Fatal(err)
		}
		return len(page.Messages) >= n
	})
	if len(page.Messages) != n {
		p.t.Fatalf("%s has %d messages, want %d", p.address(), len(page.Messages), n)
	}
	var out []client.Plaintext
	for _, env := range page.Messages {
		pt, err := p.c.Decrypt(ctx, p.id, env)
		if err != nil {
			p.t.Fatalf("%s reading seq %d: %v", p.address(), env.Seq, err)
		}
		if err := p.groups.ReceiveAt(env.Seq, &pt); err != nil {
			p.t.Fatalf("%s: seq %d from %s refused by its groups: %v", p.address(), env.Seq, pt.From, err)
		}
		out = append(out, pt)
		p.seq = env.Seq
	}
	return out
}

// waitOutbox waits until p's outbox entry id is in state, and returns it.
func (p *fedPerson) waitOutbox(id, state string) client.OutboxEntry {
	p.t.Helper()
	var got client.OutboxEntry
	testutil.Eventually(p.t, fedWait, fmt.Sprintf("%s's outbox entry %s %s", p.address(), id, state), func() bool {
		entries, err := p.c.Outbox(context.Background(), p.id)
		if err != nil {
			p.t.Fatal(err)
		}
		for _, e := range entries {
			if e.ID == id {
				got = e
			}
		}
		return got.State == state
	})
	return got
}

func TestPeopleOnThreeServersWriteReplyAndReceiptBackAcrossThem(t *testing.T) {
	ctx := context.Background()
	one, two, three := startFedServer(t), startFedServer(t), startFedServer(t)
	alice, bob, carol := one.person(t, "alice"), two.person(t, "bob"), three.person(t, "carol")

	// alice@one writes to bob@two and carol@three; her server queues both.
	for _, to := range []*fedPerson{bob, carol} {
		r, pt, err := alice.c.SendTo(ctx, alice.id, to.address(), client.Plaintext{Body: "hello " + to.id.Handle}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != client.OutboxQueued || r.To != to.address() || r.ID != pt.MID || r.Seq != 0 {
			t.Fatalf("receipt for %s: %+v", to.address(), r)
		}
		alice.waitOutbox(pt.MID, client.OutboxDelivered)
	}
	var first client.Plaintext
	for _, to := range []*fedPerson{bob, carol} {
		got := to.read(1)[0]
		if got.From != alice.address() || got.To != to.id.Handle || got.Body != "hello "+to.id.Handle {
			t.Fatalf("%s read %+v", to.address(), got)
		}
		if got.Conversation(to.id.Handle) != alice.address() {
			t.Fatalf("%s files it under %q", to.address(), got.Conversation(to.id.Handle))
		}
		first = got
	}
	// carol replies, quoting alice by address; alice reads her own bare
	// handle in the quote, and carol's address as the sender.
	reply := client.Plaintext{Body: "hi alice", Reply: &client.Reply{From: first.From, MID: first.MID, Body: first.Body}}
	if _, _, err := carol.c.SendTo(ctx, carol.id, first.From, reply, nil); err != nil {
		t.Fatal(err)
	}
	// and tells alice she read it: a receipt goes back as any message.
	if _, _, err := carol.c.SendTo(ctx, carol.id, first.From, client.Plaintext{Kind: client.KindReceipt, Receipt: client.ReceiptRead, MIDs: []string{first.MID}}, nil); err != nil {
		t.Fatal(err)
	}
	got := alice.read(2)
	if got[0].From != carol.address() || got[0].Body != "hi alice" || got[0].Reply == nil || got[0].Reply.From != "alice" || got[0].Reply.MID != first.MID {
		t.Fatalf("alice read %+v (reply %+v)", got[0], got[0].Reply)
	}
	if got[1].From != carol.address() || got[1].Kind != client.KindReceipt || !slices.Equal(got[1].MIDs, []string{first.MID}) {
		t.Fatalf("alice read %+v, want carol's receipt", got[1])
	}
	// Each knows the others by address, pinned as such.
	for _, c := range []struct {
		who  *fedPerson
		peer *fedPerson
	}{{alice, carol}, {carol, alice}, {bob, alice}} {
		if pin, err := c.who.c.Pins.Pin(c.peer.address()); err != nil || pin == nil || pin.PrimaryID != c.peer.id.PrimaryID() || pin.KeysVersion != 1 {
			t.Errorf("%s's pin of %s: %+v %v", c.who.address(), c.peer.address(), pin, err)
		}
	}
}

func TestAGroupSpanningThreeServersConvergesAndCarriesItsMessages(t *testing.T) {
	ctx := context.Background()
	one, two, three := startFedServer(t), startFedServer(t), startFedServer(t)
	alice, dave := one.person(t, "alice"), one.person(t, "dave")
	bob, carol := two.person(t, "bob"), three.person(t, "carol")
	everyone := []*fedPerson{alice, dave, bob, carol}

	v1, err := client.NewGroup("alice", "team", []string{"dave", bob.address(), carol.address()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.SendGroupChange(ctx, alice.id, nil, v1); err != nil {
		t.Fatal(err)
	}
	for _, p := range everyone {
		p.read(1)
	}
	// alice makes bob an admin; bob, on two, renames the group and
	// removes dave, writing in his own names.
	v2, err := alice.groups.State(v1.ID).Next("alice", client.OpPromote, func(n *client.GroupState) { n.Admins = append(n.Admins, bob.address()) })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.SendGroupChange(ctx, alice.id, v1, v2); err != nil {
		t.Fatal(err)
	}
	for _, p := range everyone {
		p.read(1)
	}
	held := bob.groups.State(v1.ID)
	v3, err := held.Next("bob", client.OpRemove, func(n *client.GroupState) { n.Members = client.Without(n.Members, "dave@"+one.domain) })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.c.SendGroupChange(ctx, bob.id, held, v3); err != nil {
		t.Fatal(err)
	}
	for _, p := range everyone {
		p.read(1)
	}
	hash := alice.groups.State(v1.ID).Hash()
	for _, c := range []struct {
		p       *fedPerson
		members []string
		in      bool
	}{
		{alice, []string{"alice", bob.address(), carol.address()}, true},
		{bob, []string{alice.address(), "bob", carol.address()}, true},
		{carol, []string{alice.address(), bob.address(), "carol"}, true},
		{dave, []string{"alice", bob.address(), carol.address()}, false},
	} {
		s := c.p.groups.State(v1.ID)
		if s == nil || s.Version != 3 || s.Hash() != hash || !slices.Equal(s.Members, c.members) || s.IsMember(c.p.id.Handle) != c.in {
			t.Fatalf("%s holds %+v (hash %s, alice's %s)", c.p.address(), s, s.Hash(), hash)
		}
	}
	// carol writes to the group: one group send to her server, one
	// document per member, each for that member's server.
	rs, pt, err := carol.c.SendGroup(ctx, carol.id, client.Without(carol.groups.State(v1.ID).Members, "carol"), client.Plaintext{Group: &client.GroupRef{ID: v1.ID}, Body: "hi team"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.State != client.OutboxQueued {
			t.Fatalf("carol's receipts %+v, want each queued", rs)
		}
	}
	for _, p := range []*fedPerson{alice, bob} {
		got := p.read(1)[0]
		if got.From != carol.address() || got.Body != "hi team" || got.MID != pt.MID || !p.groups.Accepts(v1.ID, got.From) {
			t.Fatalf("%s read %+v", p.address(), got)
		}
	}
}

func TestAnAttachmentStaysOnItsSendersServerAndIsFetchedFromThere(t *testing.T) {
	ctx := context.Background()
	one, two := startFedServer(t), startFedServer(t)
	alice, bob := one.person(t, "alice"), two.person(t, "bob")
	file := []byte("the minutes of the meeting, in full")
	a, err := alice.c.Attach(ctx, alice.id, "minutes.txt", "text/plain", file)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := alice.c.SendTo(ctx, alice.id, bob.address(), client.Plaintext{Attachments: []client.Attachment{a}}, []string{a.Blob}); err != nil {
		t.Fatal(err)
	}
	got := bob.read(1)[0]
	if len(got.Attachments) != 1 {
		t.Fatalf("bob read %+v", got)
	}
	data, err := bob.c.FetchAttachmentFrom(ctx, got.From, got.Attachments[0])
	if err != nil || string(data) != string(file) {
		t.Fatalf("bob fetched %q, %v", data, err)
	}
	// bob's own server never held it.
	if _, err := bob.c.FetchAttachment(ctx, got.Attachments[0]); client.ErrorCode(err) != server.CodeUnknownBlob {
		t.Fatalf("fetching it from bob's own server: %v", err)
	}
}

func TestAKeyTheSendersDomainDoesNotPublishIsRefusedByTheRecipientsClientToo(t *testing.T) {
	ctx := context.Background()
	one, two := startFedServer(t), startFedServer(t)
	alice, bob := one.person(t, "alice"), two.person(t, "bob")
	// A device key alice's key document does not list: her own server
	// refuses what it signs.
	rogue, err := alice.id.NewDevice("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	bobRec, err := alice.c.Lookup(ctx, bob.address())
	if err != nil {
		t.Fatal(err)
	}
	doc, err := client.NewMessageDoc(rogue, bobRec, client.NewMessageID(), client.Plaintext{Body: "trust me"}, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := alice.c.Post(ctx, doc); client.ErrorCode(err) != server.CodeKeyNotAuthorized {
		t.Fatalf("alice's server took a document signed by an unpublished key: %v", err)
	}
	// Had a server relayed it anyway, bob's client, which asks one.example
	// for alice's keys itself, would refuse it.
	if pt, err := bob.c.Decrypt(ctx, bob.id, client.Envelope{Seq: 1, Message: doc}); !errors.Is(err, client.ErrInvalidMessage) {
		t.Fatalf("bob read %+v, %v", pt, err)
	}
	// What alice's published key signs is read.
	if _, _, err := alice.c.SendTo(ctx, alice.id, bob.address(), client.Plaintext{Body: "it is me"}, nil); err != nil {
		t.Fatal(err)
	}
	if got := bob.read(1)[0]; got.Body != "it is me" {
		t.Fatalf("bob read %+v", got)
	}
}

func TestTheOutboxSaysWhatTheOtherServerRefusedAndPrivacyIsKept(t *testing.T) {
	ctx := context.Background()
	one, two := startFedServer(t), startFedServer(t)
	alice, bob := one.person(t, "alice"), two.person(t, "bob")
	want := client.Privacy{Strangers: client.StrangersRefuse, Known: []string{"carol@three.example"}, Blocked: []string{}}
	got, err := bob.c.SetPrivacy(ctx, bob.id, want)
	if err != nil {
		t.Fatal(err)
	}
	if read, err := bob.c.Privacy(ctx, bob.id); err != nil || read.Strangers != want.Strangers || !slices.Equal(read.Known, want.Known) || !slices.Equal(got.Known, want.Known) {
		t.Fatalf("privacy set %+v, read %+v %v", got, read, err)
	}
	_, pt, err := alice.c.SendTo(ctx, alice.id, bob.address(), client.Plaintext{Body: "hello stranger"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if e := alice.waitOutbox(pt.MID, client.OutboxFailed); e.Error == nil || e.Error.Code != server.CodeStrangerRefused || e.To != bob.address() {
		t.Fatalf("outbox entry %+v (error %+v)", e, e.Error)
	}
	// Known, alice gets through.
	want.Known = append(want.Known, alice.address())
	if _, err := bob.c.SetPrivacy(ctx, bob.id, want); err != nil {
		t.Fatal(err)
	}
	_, pt, err = alice.c.SendTo(ctx, alice.id, bob.address(), client.Plaintext{Body: "hello again"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	alice.waitOutbox(pt.MID, client.OutboxDelivered)
	if got := bob.read(1)[0]; got.Body != "hello again" {
		t.Fatalf("bob read %+v", got)
	}
}

func TestASenderWithTwoDevicesKeepsACopyOfWhatGoesToAnotherServer(t *testing.T) {
	ctx := context.Background()
	one, two := startFedServer(t), startFedServer(t)
	alice, bob := one.person(t, "alice"), two.person(t, "bob")
	phone, err := alice.id.NewDevice("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	sig := clienttest.New(t, one.sig.URL, 10*time.Second)
	prev, err := sig.LatestKeys(ctx, alice.id.PrimaryID())
	if err != nil {
		t.Fatal(err)
	}
	doc, err := client.NewKeyDocument(alice.id.Signer, prev, append(slices.Clone(prev.SigningKeys),
		client.SigningKey{Alg: phone.Signer.Alg(), Key: phone.Signer.PublicKey(), Label: "phone"}), alice.id.EncPublicKey(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := sig.PublishKeys(ctx, doc); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.Lookup(ctx, "alice"); err != nil { // her own record, cached since she registered
		t.Fatal(err)
	}
	r, pt, err := alice.c.SendTo(ctx, alice.id, bob.address(), client.Plaintext{Body: "from my laptop"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != client.OutboxQueued || r.To != bob.address() || r.ID != pt.MID+":bob:"+two.domain {
		t.Fatalf("receipt %+v", r)
	}
	// Her phone reads the copy, naming bob by address.
	onPhone := &fedPerson{t: t, id: phone, c: clienttest.New(t, one.srv.URL, 10*time.Second), groups: client.NewGroups("alice"), server: one}
	onPhone.c.InsecureLoopback = true
	if got := onPhone.read(1)[0]; got.From != "alice" || got.Peer != bob.address() || got.Body != "from my laptop" || got.MID != pt.MID {
		t.Fatalf("her phone read %+v", got)
	}
	if got := bob.read(1)[0]; got.From != alice.address() || got.Body != "from my laptop" || got.Peer != "" {
		t.Fatalf("bob read %+v", got)
	}
	// Both sides compute one safety number, over both addresses.
	mine, err := alice.c.Safety(ctx, bob.address())
	if err != nil {
		t.Fatal(err)
	}
	if theirs, err := bob.c.Safety(ctx, alice.address()); err != nil || theirs != mine {
		t.Fatalf("safety numbers %s and %s (%v)", mine, theirs, err)
	}
}
