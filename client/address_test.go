package client

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseAddressTakesHandlesAndAddressesAsTheProtocolDefinesThem(t *testing.T) {
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	for _, c := range []struct {
		in       string
		loopback bool
		want     Address // zero: refused
	}{
		{"bob", false, Address{Handle: "bob"}},
		{"bob@two.example", false, Address{"bob", "two.example"}},
		{"b.o-b_1@chat.two-three.example", false, Address{"b.o-b_1", "chat.two-three.example"}},
		{"bob@localhost", false, Address{"bob", "localhost"}},
		{"bob@" + long, false, Address{"bob", long}}, // 253 bytes
		{"bob@" + long + "d", false, Address{}},
		{"bob@" + strings.Repeat("a", 64) + ".example", false, Address{}},
		{"bob@127.0.0.1:7000", true, Address{"bob", "127.0.0.1:7000"}},
		{"bob@localhost:7000", true, Address{"bob", "localhost:7000"}},
		{"bob@127.0.0.1:7000", false, Address{}},
		{"bob@127.0.0.1:07000", true, Address{}},
		{"bob@127.0.0.1:0", true, Address{}},
		{"bob@127.0.0.1:65536", true, Address{}},
		{"bob@10.0.0.1:7000", true, Address{}},
		{"bob@two.example:443", true, Address{}},
		{"bob@Two.example", false, Address{}},
		{"bob@two..example", false, Address{}},
		{"bob@-two.example", false, Address{}},
		{"bob@two-.example", false, Address{}},
		{"bob@two_three.example", false, Address{}},
		{"bob@", false, Address{}},
		{"bob@two.example@three.example", false, Address{}},
		{"@two.example", false, Address{}},
		{"Bob@two.example", false, Address{}},
		{"bo@two.example", false, Address{}},
		{"admin@two.example", false, Address{}}, // reserved everywhere
		{"", false, Address{}},
	} {
		got, err := ParseAddress(c.in, c.loopback)
		if c.want == (Address{}) {
			if err == nil {
				t.Errorf("ParseAddress(%q, %v) = %+v, want refused", c.in, c.loopback, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseAddress(%q, %v) = %+v, %v; want %+v", c.in, c.loopback, got, err, c.want)
		}
		if got.String() != c.in || got.IsLocal() != !strings.Contains(c.in, "@") {
			t.Errorf("%+v reads back as %q (local %v)", got, got.String(), got.IsLocal())
		}
	}
	if _, err := ParseAddress("bob@127.0.0.1:7000", false); !errors.Is(err, errLoopbackDomain) {
		t.Errorf("a loopback domain without loopback: %v", err)
	}
}

func TestQualifyNameQualifiesWithTheWritersDomainAndStripsTheReaders(t *testing.T) {
	for _, c := range []struct {
		name, writer, own, want string
	}{
		{"carol", "one.example", "two.example", "carol@one.example"},
		{"bob@two.example", "one.example", "two.example", "bob"},
		{"dave@three.example", "one.example", "two.example", "dave@three.example"},
		{"carol", "two.example", "two.example", "carol"},
		{"dave@three.example", "two.example", "two.example", "dave@three.example"},
		{"carol", "127.0.0.1:7001", "127.0.0.1:7002", "carol@127.0.0.1:7001"},
		{"bob@127.0.0.1:7002", "127.0.0.1:7001", "127.0.0.1:7002", "bob"},
	} {
		got, err := QualifyName(c.name, c.writer, c.own)
		if err != nil || got != c.want {
			t.Errorf("QualifyName(%q, %q, %q) = %q, %v; want %q", c.name, c.writer, c.own, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "Carol", "carol@", "carol@Three.example", "x"} {
		if got, err := QualifyName(bad, "one.example", "two.example"); err == nil {
			t.Errorf("QualifyName(%q) = %q, want refused", bad, got)
		}
	}
}

func TestPlaintextFromAnotherServerIsReadInTheReadersNames(t *testing.T) {
	gid := NewGroupID()
	// What alice@one.example writes: her server's people bare, others by
	// address.
	written := Plaintext{V: 1, From: "alice@one.example", To: "bob", Body: "hi", Peer: "carol",
		Reply:  &Reply{From: "bob@two.example", MID: "m1"},
		Target: &Target{From: "dave@three.example", MID: "m2"},
		Group:  &GroupRef{ID: gid}}
	raw, err := marshalPlaintext(written)
	if err != nil {
		t.Fatal(err)
	}
	read, err := parsePlaintext(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := read.Qualify("one.example", "two.example"); err != nil {
		t.Fatal(err)
	}
	if read.From != "alice@one.example" || read.To != "bob" || read.Peer != "carol@one.example" ||
		read.Reply.From != "bob" || read.Target.From != "dave@three.example" {
		t.Fatalf("read as %+v, reply %+v, target %+v", read, read.Reply, read.Target)
	}
	if written.Reply.From != "bob@two.example" || written.Target.From != "dave@three.example" {
		t.Fatal("Qualify changed the plaintext it was copied from")
	}
	// From its own server, bare handles stay, and an address at it is the
	// bare handle, as every other reader takes it.
	local := written
	if err := local.Qualify("two.example", "two.example"); err != nil || local.Peer != "carol" || local.Reply.From != "bob" || local.Target.From != "dave@three.example" {
		t.Fatalf("a local plaintext read as %+v (reply %+v) %v", local, local.Reply, err)
	}
}

// carried encodes s as a message carries it and decodes it as a reader on
// own does, from a writer on writer.
func carried(t *testing.T, s *GroupState, writer, own string) *GroupState {
	t.Helper()
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var got GroupState
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if err := got.qualify(writer, own); err != nil {
		t.Fatalf("qualifying %s: %v", data, err)
	}
	return &got
}

func TestGroupSpanningServersConvergesOnOneChainOfHashes(t *testing.T) {
	const one, two, three = "one.example", "two.example", "three.example"
	// alice@one makes the group, naming the others by address.
	v1, err := NewGroup("alice", "team", []string{"bob@two.example", "carol@three.example", "erin"})
	if err != nil {
		t.Fatal(err)
	}
	readers := map[string]*Groups{one: NewGroups("alice"), two: NewGroups("bob"), three: NewGroups("carol")}
	fromOne := map[string]string{one: "alice", two: "alice@one.example", three: "alice@one.example"}
	for own, g := range readers {
		g.Domain = own
		s := carried(t, v1, one, own)
		if s.Hash() != v1.Hash() {
			t.Fatalf("%s hashes version 1 as %s, alice as %s", own, s.Hash(), v1.Hash())
		}
		if err := g.Take(fromOne[own], s); err != nil {
			t.Fatalf("%s: %v", own, err)
		}
	}
	wantMembers := map[string][]string{
		one:   {"alice", "bob@two.example", "carol@three.example", "erin"},
		two:   {"alice@one.example", "bob", "carol@three.example", "erin@one.example"},
		three: {"alice@one.example", "bob@two.example", "carol", "erin@one.example"},
	}
	for own, g := range readers {
		if s := g.State(v1.ID); !slices.Equal(s.Members, wantMembers[own]) || !slices.Equal(s.Admins, []string{LocalName("alice@one.example", own)}) {
			t.Fatalf("%s holds members %v admins %v", own, s.Members, s.Admins)
		}
	}
	// bob@two, an admin once alice promotes him, removes erin@one: he
	// writes in his own names, and everyone chains on his bytes.
	v2, err := readers[one].State(v1.ID).Next("alice", OpPromote, func(n *GroupState) { n.Admins = append(n.Admins, "bob@two.example") })
	if err != nil {
		t.Fatal(err)
	}
	for own, g := range readers {
		if err := g.Take(fromOne[own], carried(t, v2, one, own)); err != nil {
			t.Fatalf("%s taking version 2: %v", own, err)
		}
	}
	v3, err := readers[two].State(v1.ID).Next("bob", OpRemove, func(n *GroupState) { n.Members = Without(n.Members, "erin@one.example") })
	if err != nil {
		t.Fatal(err)
	}
	fromTwo := map[string]string{one: "bob@two.example", two: "bob", three: "bob@two.example"}
	for own, g := range readers {
		if err := g.Take(fromTwo[own], carried(t, v3, two, own)); err != nil {
			t.Fatalf("%s taking version 3: %v", own, err)
		}
	}
	hash := readers[one].State(v1.ID).Hash()
	for own, g := range readers {
		s := g.State(v1.ID)
		if s.Version != 3 || s.Hash() != hash || s.IsMember(LocalName("erin@one.example", own)) || len(s.Members) != 3 {
			t.Fatalf("%s holds version %d (%s) members %v, alice %s", own, s.Version, s.Hash(), s.Members, hash)
		}
	}
	// A reader on three saves and loads its groups: the names stay its.
	path := filepath.Join(t.TempDir(), "groups.json")
	if err := readers[three].Save(path); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadGroups(path, "carol")
	if err != nil {
		t.Fatal(err)
	}
	if s := loaded.State(v1.ID); s == nil || s.Hash() != hash || !slices.Equal(s.Members, []string{"alice@one.example", "bob@two.example", "carol"}) || loaded.Domain != three {
		t.Fatalf("loaded %+v", s)
	}
}

func TestAGroupStateNamingThisServersPeopleByAddressIsReadWithTheirHandles(t *testing.T) {
	// A writer of one.example names its neighbour by address: every
	// reader, on one.example or not, takes the same members.
	s := &GroupState{ID: NewGroupID(), Version: 1, Name: "team", Members: []string{"alice", "bob@two.example", "carol@one.example"},
		Admins: []string{"alice"}, By: "alice", Op: OpCreate}
	for own, want := range map[string]string{
		"one.example":   "alice,bob@two.example,carol",
		"two.example":   "alice@one.example,bob,carol@one.example",
		"three.example": "alice@one.example,bob@two.example,carol@one.example",
	} {
		got := carried(t, s, "one.example", own)
		if strings.Join(got.Members, ",") != want || got.Hash() != s.Hash() || got.Check() != nil {
			t.Errorf("read on %s as %v (%s, alice wrote %s)", own, got.Members, got.Hash(), s.Hash())
		}
	}
	// Kept in a groups file on one.example, it reads back the same.
	g := NewGroups("alice")
	g.Domain = "one.example"
	if err := g.Take("alice", carried(t, s, "one.example", "one.example")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "groups.json")
	if err := g.Save(path); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadGroups(path, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if got := loaded.State(s.ID); strings.Join(got.Members, ",") != "alice,bob@two.example,carol" || got.Hash() != s.Hash() {
		t.Fatalf("loaded %v (%s)", got.Members, got.Hash())
	}
}

func TestGroupStateFromAnotherServerIsRefusedWhenItsNamesAreNot(t *testing.T) {
	for _, c := range []struct {
		name             string
		members, admins  []string
		by               string
		droppedOnQualify bool
	}{
		{"unsorted as written", []string{"carol", "alice"}, []string{"alice"}, "alice", true},
		{"a member not a name", []string{"alice", "Bob@two.example"}, []string{"alice"}, "alice", true},
		// bob and bob@one.example are one person to every reader.
		{"one person twice", []string{"alice", "bob", "bob@one.example"}, []string{"alice"}, "alice", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &GroupState{ID: NewGroupID(), Version: 1, Name: "team", Members: c.members, Admins: c.admins, By: c.by, Op: OpCreate}
			data, err := json.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			var got GroupState
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatal(err)
			}
			err = got.qualify("one.example", "two.example")
			if c.droppedOnQualify {
				if err == nil {
					t.Fatalf("qualified as %v", got.Members)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := got.Check(); err == nil {
				t.Fatalf("%v passed", got.Members)
			}
		})
	}
}
