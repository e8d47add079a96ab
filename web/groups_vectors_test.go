package web

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/json"
	"slices"
	"testing"

	"kez.lat/chat/client"
	"kez.lat/chat/server/signing"
)

// groupVector is one client taking a sequence of group snapshots by the
// rules of docs/protocol.md ("Groups"): each input says whether it was
// taken, and the case ends in the state the client holds (null when it
// holds none) and whether that state lists it.
type groupVector struct {
	Name      string             `json:"name"`
	Client    string             `json:"client"`
	Inputs    []groupVectorInput `json:"inputs"`
	Final     *client.GroupState `json:"final"`
	FinalHash string             `json:"final_hash"`
	Member    bool               `json:"member"`
}

// groupVectorInput is one control message: its sender and snapshot, the
// snapshot's JCS canonical form and hash, and whether the client took it.
type groupVectorInput struct {
	From      string             `json:"from"`
	State     *client.GroupState `json:"state"`
	Canonical string             `json:"canonical"`
	Hash      string             `json:"hash"`
	Taken     bool               `json:"taken"`
}

// groupStep is one input of a case as the generator writes it.
type groupStep struct {
	from  string
	state *client.GroupState
}

// snapshot builds a snapshot by hand, so the vectors hold ones the client
// would never make (a non-admin adding, a last admin leaving alone).
func snapshot(parent *client.GroupState, name string, members, admins []string, by, op string) *client.GroupState {
	s := &client.GroupState{ID: signing.EncodeB64(fixedKey("group")[:16]), Version: 1, Name: name,
		Members: members, Admins: admins, By: by, Op: op}
	if parent != nil {
		s.ID, s.Version, s.Prev = parent.ID, parent.Version+1, parent.Hash()
	}
	return s
}

// byteOrderDisagrees reports whether comparing a and b as base64url strings
// and as the bytes they encode give different answers: a pair that tells an
// implementation comparing bytes from one comparing the strings (the
// protocol compares the strings).
func byteOrderDisagrees(a, b string) bool {
	ra, _ := signing.DecodeB64(a)
	rb, _ := signing.DecodeB64(b)
	return (a < b) != (bytes.Compare(ra, rb) < 0)
}

func groupVectors(t *testing.T) []groupVector {
	abc := []string{"alice", "bob", "carol"}
	v1 := snapshot(nil, "team", abc, []string{"alice"}, "alice", client.OpCreate)
	// Two admins, so that two may change version 1 at once.
	v1two := snapshot(nil, "team", []string{"alice", "bob", "carol", "dave"}, []string{"alice", "bob"}, "alice", client.OpCreate)
	// Two renames of v1two by its two admins whose hashes order differently
	// as strings and as bytes.
	var renA, renB *client.GroupState
	for i := 0; ; i++ {
		renA = snapshot(v1two, "plans "+string(rune('a'+i%26))+string(rune('a'+i/26)), v1two.Members, v1two.Admins, "alice", client.OpRename)
		renB = snapshot(v1two, "ideas", v1two.Members, v1two.Admins, "bob", client.OpRename)
		if byteOrderDisagrees(renA.Hash(), renB.Hash()) {
			break
		}
	}
	renWin, renLose := renA, renB
	if renB.Hash() < renA.Hash() {
		renWin, renLose = renB, renA
	}
	// Alice and bob, both admins, remove each other at once.
	v1ab := snapshot(nil, "team", abc, []string{"alice", "bob"}, "alice", client.OpCreate)
	rmBob := snapshot(v1ab, "team", []string{"alice", "carol"}, []string{"alice"}, "alice", client.OpRemove)
	rmAlice := snapshot(v1ab, "team", []string{"bob", "carol"}, []string{"bob"}, "bob", client.OpRemove)
	rmWin, rmLose := rmBob, rmAlice
	if rmAlice.Hash() < rmBob.Hash() {
		rmWin, rmLose = rmAlice, rmBob
	}
	loser := rmLose.By // the admin removed by the winning snapshot
	removeCarol := snapshot(v1, "team", []string{"alice", "bob"}, []string{"alice"}, "alice", client.OpRemove)
	addDave := snapshot(removeCarol, "team", []string{"alice", "bob", "dave"}, []string{"alice"}, "alice", client.OpAdd)
	readdCarol := snapshot(addDave, "team", []string{"alice", "bob", "carol", "dave"}, []string{"alice"}, "alice", client.OpAdd)
	v2add := snapshot(v1, "team", []string{"alice", "bob", "carol", "dave"}, []string{"alice"}, "alice", client.OpAdd)
	v3rename := snapshot(v2add, "team 3", v2add.Members, v2add.Admins, "alice", client.OpRename)

	cases := []struct {
		name, client string
		steps        []groupStep
	}{
		{"create: a listed member takes version 1", "bob", []groupStep{{"alice", v1}}},
		{"create not listing the client is dropped", "dave", []groupStep{{"alice", v1}}},
		{"create whose by is not its sender is dropped", "bob", []groupStep{{"carol", v1}}},
		{"add: a member takes the next version", "bob", []groupStep{{"alice", v1}, {"alice", v2add}}},
		{"added member takes a later version it has no parent of (rule 1)", "dave", []groupStep{{"alice", v2add}, {"alice", v3rename}}},
		{"remove: the removed member takes it and learns it is out", "carol", []groupStep{{"alice", v1}, {"alice", removeCarol}}},
		{"a non-admin leaves", "alice", []groupStep{{"alice", v1},
			{"bob", snapshot(v1, "team", []string{"alice", "carol"}, []string{"alice"}, "bob", client.OpLeave)}}},
		{"a non-admin leaving and renaming is dropped", "alice", []groupStep{{"alice", v1},
			{"bob", snapshot(v1, "mine", []string{"alice", "carol"}, []string{"alice"}, "bob", client.OpLeave)}}},
		{"a non-admin adding is dropped", "alice", []groupStep{{"alice", v1},
			{"bob", snapshot(v1, "team", []string{"alice", "bob", "carol", "erin"}, []string{"alice"}, "bob", client.OpAdd)}}},
		{"a snapshot from a non-member is dropped", "bob", []groupStep{{"alice", v1},
			{"dave", snapshot(v1, "team", []string{"alice", "bob", "carol", "dave"}, []string{"alice", "dave"}, "dave", client.OpAdd)}}},
		{"concurrent changes of one version: the smaller hash wins (winner last)", "carol", []groupStep{{"alice", v1two},
			{renLose.By, renLose}, {renWin.By, renWin}}},
		{"concurrent changes of one version: the smaller hash wins (winner first)", "carol", []groupStep{{"alice", v1two},
			{renWin.By, renWin}, {renLose.By, renLose}}},
		{"a snapshot building on the losing branch is dropped", "carol", []groupStep{{"alice", v1two},
			{renLose.By, renLose}, {renWin.By, renWin},
			{renLose.By, snapshot(renLose, renLose.Name, []string{"alice", "bob", "carol"}, v1two.Admins, renLose.By, client.OpRemove)},
			{renWin.By, snapshot(renWin, renWin.Name, v1two.Members, []string{"alice", "bob", "carol"}, renWin.By, client.OpPromote)}}},
		{"two admins remove each other: a third member", "carol", []groupStep{{"alice", v1ab}, {"alice", rmBob}, {"bob", rmAlice}}},
		{"two admins remove each other: the one removed learns it", loser, []groupStep{{"alice", v1ab}, {rmWin.By, rmWin}, {rmLose.By, rmLose}}},
		{"two admins remove each other: the one removed learns it (its own first)", loser, []groupStep{{"alice", v1ab}, {rmLose.By, rmLose}, {rmWin.By, rmWin}}},
		{"a last admin leaving names another admin", "bob", []groupStep{{"alice", v1},
			{"alice", snapshot(v1, "team", []string{"bob", "carol"}, []string{"bob"}, "alice", client.OpLeave)}}},
		{"a last admin leaving without naming another is dropped", "bob", []groupStep{{"alice", v1},
			{"alice", snapshot(v1, "team", []string{"bob", "carol"}, []string{}, "alice", client.OpLeave)}}},
		{"a version that skips one is dropped", "bob", []groupStep{{"alice", v1}, {"alice", v3rename}}},
		{"a version older than the state is dropped", "bob", []groupStep{{"alice", v1}, {"alice", v2add}, {"alice", v3rename},
			{"alice", snapshot(v1, "old", v1.Members, v1.Admins, "alice", client.OpRename)}}},
		{"a removed member added again takes the snapshot that lists it", "carol", []groupStep{{"alice", v1}, {"alice", removeCarol}, {"alice", readdCarol}}},
	}
	var out []groupVector
	for _, c := range cases {
		gv := groupVector{Name: c.name, Client: c.client}
		g := client.NewGroups(c.client)
		for _, s := range c.steps {
			canonical, err := s.state.Canonical()
			if err != nil {
				t.Fatal(err)
			}
			gv.Inputs = append(gv.Inputs, groupVectorInput{From: s.from, State: s.state, Canonical: string(canonical),
				Hash: s.state.Hash(), Taken: g.Take(s.from, s.state) == nil})
		}
		if gv.Final = g.State(v1.ID); gv.Final != nil {
			gv.FinalHash, gv.Member = gv.Final.Hash(), gv.Final.IsMember(c.client)
		}
		out = append(out, gv)
	}
	return out
}

// checkGroupVectors replays each case with the Go client: the hashes, what
// is taken, and the state it ends in.
func checkGroupVectors(t *testing.T, cases []groupVector) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range cases {
		g := client.NewGroups(c.Client)
		var id string
		for i, in := range c.Inputs {
			raw, err := json.Marshal(in.State)
			if err != nil {
				t.Fatal(err)
			}
			var s client.GroupState
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatalf("%s: input %d: %v", c.Name, i, err)
			}
			if canonical, _ := s.Canonical(); string(canonical) != in.Canonical || s.Hash() != in.Hash {
				t.Errorf("%s: input %d: canonical %s hash %s, want %s %s", c.Name, i, canonical, s.Hash(), in.Canonical, in.Hash)
			}
			err = g.Take(in.From, &s)
			if (err == nil) != in.Taken {
				t.Errorf("%s: input %d taken: %v (%v), want %v", c.Name, i, err == nil, err, in.Taken)
			}
			seen[map[bool]string{true: "taken", false: "dropped"}[err == nil]] = true
			id = s.ID
		}
		got := g.State(id)
		switch {
		case c.Final == nil && got != nil:
			t.Errorf("%s: holds version %d, want no state", c.Name, got.Version)
		case c.Final != nil && (got == nil || got.Hash() != c.FinalHash || c.Final.Hash() != c.FinalHash || got.IsMember(c.Client) != c.Member):
			t.Errorf("%s: holds %+v, want %+v (member %v)", c.Name, got, c.Final, c.Member)
		}
		if got != nil && slices.ContainsFunc(g.List(), func(s *client.GroupState) bool { return s.ID == id }) != c.Member {
			t.Errorf("%s: listed %v, want %v", c.Name, !c.Member, c.Member)
		}
	}
	if !seen["taken"] || !seen["dropped"] {
		t.Error("the group vectors do not both take and drop snapshots")
	}
}

// attachmentVector is a file encrypted as docs/protocol.md ("Attachments")
// says, with a fixed key and nonce.
type attachmentVector struct {
	Key    string `json:"key"`
	Nonce  string `json:"nonce"`
	File   string `json:"file"`
	Blob   string `json:"blob"`
	SHA256 string `json:"sha256"`
}

// sealAttachment is the attachment encryption written out with the
// standard library alone, apart from the client's.
func sealAttachment(t *testing.T, key, nonce, file []byte) []byte {
	t.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return gcm.Seal(bytes.Clone(nonce), nonce, file, []byte("kez-chat/v1 attachment"))
}

func attachmentVectors(t *testing.T) []attachmentVector {
	var out []attachmentVector
	for _, file := range [][]byte{{}, []byte("hello, file ✓"), bytes.Repeat([]byte{0, 1, 2, 254, 255}, 100)} {
		key, nonce := fixedKey("attachment key"), fixedKey("attachment nonce")[:12]
		blob := sealAttachment(t, key, nonce, file)
		sum := sha256.Sum256(blob)
		out = append(out, attachmentVector{Key: signing.EncodeB64(key), Nonce: signing.EncodeB64(nonce), File: signing.EncodeB64(file),
			Blob: signing.EncodeB64(blob), SHA256: signing.EncodeB64(sum[:])})
	}
	return out
}

func checkAttachmentVectors(t *testing.T, vs []attachmentVector) {
	t.Helper()
	for i, v := range vs {
		key, _ := signing.DecodeB64(v.Key)
		nonce, _ := signing.DecodeB64(v.Nonce)
		file, _ := signing.DecodeB64(v.File)
		blob, _ := signing.DecodeB64(v.Blob)
		if !bytes.Equal(sealAttachment(t, key, nonce, file), blob) {
			t.Errorf("attachment %d: the blob is not the file encrypted", i)
		}
		got, err := client.DecryptAttachment(blob, key, v.SHA256)
		if err != nil || !bytes.Equal(got, file) {
			t.Errorf("attachment %d: the client decrypts %q (%v)", i, got, err)
		}
	}
}
