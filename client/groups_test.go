package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func validGroup() *GroupState {
	return &GroupState{ID: "AAAAAAAAAAAAAAAAAAAAAA", Version: 1, Name: "team", Members: []string{"alice", "bob"},
		Admins: []string{"alice"}, By: "alice", Op: OpCreate}
}

func TestGroupStateCheckRefusesMalformedSnapshots(t *testing.T) {
	many := make([]string, MaxGroupMembers+1)
	for i := range many {
		many[i] = fmt.Sprintf("user%04d", i)
	}
	for _, c := range []struct {
		name   string
		change func(s *GroupState)
	}{
		{"short id", func(s *GroupState) { s.ID = "AAAA" }},
		{"id with non-zero trailing bits", func(s *GroupState) { s.ID = "AAAAAAAAAAAAAAAAAAAAAB" }},
		{"version 0", func(s *GroupState) { s.Version = 0 }},
		{"version beyond JavaScript's integers", func(s *GroupState) { s.Version = 1 << 53 }},
		{"version 1 with a prev", func(s *GroupState) { s.Prev = validGroup().Hash() }},
		{"version 1 not a create", func(s *GroupState) { s.Op = OpAdd }},
		{"version 2 a create", func(s *GroupState) { s.Version, s.Prev = 2, validGroup().Hash() }},
		{"version 2 without prev", func(s *GroupState) { s.Version, s.Op = 2, OpAdd }},
		{"unknown op", func(s *GroupState) { s.Op = "merge" }},
		{"empty name", func(s *GroupState) { s.Name = "" }},
		{"65-character name", func(s *GroupState) { s.Name = strings.Repeat("é", 65) }},
		{"no members", func(s *GroupState) { s.Members = nil }},
		{"257 members", func(s *GroupState) { s.Members, s.Admins = many, many[:1] }},
		{"unsorted members", func(s *GroupState) { s.Members = []string{"bob", "alice"} }},
		{"repeated member", func(s *GroupState) { s.Members = []string{"alice", "alice", "bob"} }},
		{"member not a handle", func(s *GroupState) { s.Members = []string{"Alice", "alice"} }},
		{"no admins", func(s *GroupState) { s.Admins = []string{} }},
		{"admin not a member", func(s *GroupState) { s.Admins = []string{"alice", "carol"} }},
		{"no author", func(s *GroupState) { s.By = "" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := validGroup()
			c.change(s)
			if err := s.Check(); err == nil {
				t.Fatalf("%+v passed", s)
			}
			g := NewGroups("bob")
			if err := g.Take(s.By, s); !errors.Is(err, ErrSnapshotDropped) {
				t.Fatalf("Take: %v, want it dropped", err)
			}
		})
	}
	if err := validGroup().Check(); err != nil {
		t.Fatalf("the valid group: %v", err)
	}
	s := validGroup()
	s.Name = strings.Repeat("é", MaxGroupName)
	if err := s.Check(); err != nil {
		t.Fatalf("a 64-character name: %v", err)
	}
}

func TestGroupStateHashCoversMembersTheClientDoesNotKnow(t *testing.T) {
	known, err := validGroup().MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var plain, extended GroupState
	if err := json.Unmarshal(known, &plain); err != nil {
		t.Fatal(err)
	}
	withColor := strings.Replace(string(known), `{`, `{"color":"blue",`, 1)
	if err := json.Unmarshal([]byte(withColor), &extended); err != nil {
		t.Fatal(err)
	}
	if plain.Hash() != validGroup().Hash() {
		t.Error("decoding changed the hash")
	}
	if extended.Hash() == plain.Hash() {
		t.Error("a member the client does not know is not hashed")
	}
	again, _ := json.Marshal(extended)
	if !strings.Contains(string(again), `"color":"blue"`) {
		t.Errorf("re-encoded without the unknown member: %s", again)
	}
	var s GroupState
	if err := json.Unmarshal([]byte(strings.Replace(string(known), `"name"`, `"Name"`, 1)), &s); err == nil {
		t.Error("a member differing from name only in case was read")
	}
}

// created is the group alice made with bob, as bob took it.
func created(t *testing.T) (*Groups, *GroupState) {
	t.Helper()
	v1, err := NewGroup("alice", "team", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	g := NewGroups("bob")
	if err := g.Take("alice", v1); err != nil {
		t.Fatal(err)
	}
	return g, v1
}

func TestGroupNextRefusesWhatMembersWouldDrop(t *testing.T) {
	_, v1 := created(t)
	if _, err := v1.Next("bob", OpAdd, func(n *GroupState) { n.Members = append(n.Members, "dave") }); err == nil {
		t.Error("a non-admin's add was made")
	}
	if _, err := v1.Next("alice", OpLeave, func(n *GroupState) { n.Members = Without(n.Members, "alice") }); err == nil {
		t.Error("the last admin left without naming another")
	}
	next, err := v1.Next("alice", OpLeave, func(n *GroupState) {
		n.Members, n.Admins = Without(n.Members, "alice"), []string{"carol"}
	})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := created(t)
	if err := g.Take("alice", next); err != nil {
		t.Fatalf("the leave naming carol admin: %v", err)
	}
	if s := g.State(v1.ID); s.IsMember("alice") || !s.IsAdmin("carol") {
		t.Errorf("state %+v", s)
	}
}

func TestGroupsKeepABoundedNumberOfVersions(t *testing.T) {
	g, s := created(t)
	for i := range 3 * maxGroupVersions {
		next, err := s.Next("alice", OpRename, func(n *GroupState) { n.Name = fmt.Sprintf("team %d", i) })
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Take("alice", next); err != nil {
			t.Fatalf("version %d: %v", next.Version, err)
		}
		s = next
	}
	vs := g.Versions(s.ID)
	if len(vs) != maxGroupVersions || vs[len(vs)-1] != s {
		t.Fatalf("kept %d versions, the last %+v", len(vs), vs[len(vs)-1])
	}
	// The version before the state is still a parent: a concurrent change
	// of the state's version is weighed against it.
	rival, err := g.Versions(s.ID)[len(vs)-2].Next("alice", OpRename, func(n *GroupState) { n.Name = "rival" })
	if err != nil {
		t.Fatal(err)
	}
	err = g.Take("alice", rival)
	if won := rival.Hash() < s.Hash(); won != (err == nil) {
		t.Errorf("rival with the smaller hash %v: taken %v (%v)", won, err == nil, err)
	}
}

func TestGroupsKeepABoundedNumberOfGroups(t *testing.T) {
	g := NewGroups("bob")
	for i := range maxGroups {
		members := []string{"alice", "bob"}
		if i == 0 {
			members = []string{"alice", "bob", "carol"}
		}
		s, err := NewGroup("alice", "g", members[1:])
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Take("alice", s); err != nil {
			t.Fatalf("group %d: %v", i, err)
		}
	}
	one, _ := NewGroup("alice", "one more", []string{"bob"})
	if err := g.Take("alice", one); !errors.Is(err, ErrSnapshotDropped) {
		t.Fatalf("group %d, all listing the client: %v, want it dropped", maxGroups+1, err)
	}
	// A group the client was removed from makes room.
	first := g.List()[0]
	out, err := first.Next("alice", OpRemove, func(n *GroupState) { n.Members = Without(n.Members, "bob") })
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Take("alice", out); err != nil {
		t.Fatal(err)
	}
	if err := g.Take("alice", one); err != nil {
		t.Fatalf("with a group the client is not in: %v", err)
	}
	if g.State(first.ID) != nil || len(g.groups) != maxGroups {
		t.Errorf("kept %d groups, the one it left: %v", len(g.groups), g.State(first.ID) != nil)
	}
}

func TestGroupsAcceptMessagesOnlyFromMembersOfGroupsTheClientIsIn(t *testing.T) {
	g, v1 := created(t)
	for _, c := range []struct {
		group, from string
		want        bool
	}{
		{v1.ID, "alice", true},
		{v1.ID, "carol", true},
		{v1.ID, "dave", false},
		{NewGroupID(), "alice", false},
	} {
		if got := g.Accepts(c.group, c.from); got != c.want {
			t.Errorf("Accepts(%s, %s) = %v, want %v", c.group, c.from, got, c.want)
		}
	}
	out, err := v1.Next("alice", OpRemove, func(n *GroupState) { n.Members = Without(n.Members, "bob") })
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Take("alice", out); err != nil {
		t.Fatal(err)
	}
	if g.Accepts(v1.ID, "alice") || len(g.List()) != 0 {
		t.Error("a removed member still shows the group")
	}
}

func TestGroupsReceiveEachMessageOnceAndRememberWhatTheyRefused(t *testing.T) {
	g, v1 := created(t)
	g.Seq = 10
	group := &GroupRef{ID: v1.ID}
	fromStranger := Plaintext{From: "mallory", Group: group, Body: "hi"}
	if err := g.ReceiveAt(11, &fromStranger); !errors.Is(err, ErrNotInGroup) {
		t.Fatalf("a stranger's group message: %v, want ErrNotInGroup", err)
	}
	v2, err := v1.Next("alice", OpRemove, func(n *GroupState) { n.Members = Without(n.Members, "carol") })
	if err != nil {
		t.Fatal(err)
	}
	if err := g.ReceiveAt(12, &Plaintext{From: "alice", Kind: KindGroup, Group: group, State: v2}); err != nil {
		t.Fatal(err)
	}
	fromCarol := Plaintext{From: "carol", Group: group, Body: "still here"}
	if err := g.ReceiveAt(13, &fromCarol); !errors.Is(err, ErrNotInGroup) {
		t.Fatalf("a removed member's message: %v", err)
	}
	// Read again (an inbox read twice): the same answers, nothing applied
	// again.
	for seq, want := range map[uint64]error{11: ErrDroppedBefore, 12: nil, 13: ErrDroppedBefore} {
		if err := g.ReceiveAt(seq, &fromCarol); !errors.Is(err, want) && err != want {
			t.Errorf("seq %d again: %v, want %v", seq, err, want)
		}
	}
	g.Pass(20)
	if g.Seq != 20 || g.State(v1.ID).Version != 2 {
		t.Errorf("seq %d, version %d", g.Seq, g.State(v1.ID).Version)
	}

	path := filepath.Join(t.TempDir(), "id.groups.json")
	if err := g.Save(path); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); runtime.GOOS != "windows" && st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
	back, err := LoadGroups(path, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if back.Seq != 20 || back.State(v1.ID).Hash() != v2.Hash() || len(back.Versions(v1.ID)) != 2 ||
		!errors.Is(back.ReceiveAt(13, &fromCarol), ErrDroppedBefore) {
		t.Errorf("loaded back: seq %d, %+v", back.Seq, back.State(v1.ID))
	}
	if _, err := LoadGroups(path, "carol"); err == nil {
		t.Error("bob's groups loaded as carol's")
	}
	if g, err := LoadGroups(filepath.Join(t.TempDir(), "none.json"), "bob"); err != nil || len(g.List()) != 0 {
		t.Errorf("no file: %v", err)
	}
	data, _ := os.ReadFile(path)
	for name, bad := range map[string]string{
		"a version that does not follow": strings.Replace(string(data), `"version":2`, `"version":3`, 1),
		"an unknown member":              strings.Replace(string(data), `{"v":1`, `{"v":1,"x":1`, 1),
		"dropped seqs beyond seq":        strings.Replace(string(data), `"seq":20`, `"seq":12`, 1),
	} {
		p := filepath.Join(t.TempDir(), "bad.json")
		if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadGroups(p, "bob"); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
	if runtime.GOOS != "windows" {
		os.Chmod(path, 0o644)
		if _, err := LoadGroups(path, "bob"); err == nil {
			t.Error("a groups file others may read was loaded")
		}
	}
}
