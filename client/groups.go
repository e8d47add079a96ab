package client

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// Group operations (a snapshot's op, for display).
const (
	OpCreate  = "create"
	OpAdd     = "add"
	OpRemove  = "remove"
	OpLeave   = "leave"
	OpRename  = "rename"
	OpPromote = "promote"
)

// Group limits (docs/protocol.md, "Groups").
const (
	MaxGroupMembers  = 256
	MaxGroupName     = 64 // characters
	groupIDBytes     = 16
	maxSafeInteger   = 1<<53 - 1 // a version must read the same in JavaScript
	maxGroupVersions = 4         // versions kept per group; see groupHistory
	maxGroups        = 256       // groups one client keeps; see Groups.add
)

// GroupState is a group's state, the snapshot every control message carries
// whole (docs/protocol.md, "Groups"). Members and Admins are sorted and
// distinct.
type GroupState struct {
	ID      string   `json:"id"`
	Version uint64   `json:"version"`
	Prev    string   `json:"prev"`
	Name    string   `json:"name"`
	Members []string `json:"members"`
	Admins  []string `json:"admins"`
	By      string   `json:"by"`
	Op      string   `json:"op"`

	// raw is the canonical JSON of a decoded snapshot, members this client
	// does not know included: its hash is the sender's, which every other
	// member computes over the object it received.
	raw []byte
	// writer is the domain of the server whose client wrote the snapshot
	// when its names are not this client's as written (another server's
	// writer, or one naming this server's people by address): Members,
	// Admins and By are then the names raw holds, qualified (see qualify).
	writer string
}

// groupStateFields is GroupState without its methods, for encoding/json.
type groupStateFields GroupState

// UnmarshalJSON decodes a snapshot as received, keeping its canonical form.
// Members it does not know are ignored (and hashed); one that differs from a
// known member only in case is refused.
func (s *GroupState) UnmarshalJSON(data []byte) error {
	canonical, err := signing.Canonicalize(data)
	if err != nil {
		return fmt.Errorf("group state: %w", err)
	}
	var f groupStateFields
	if err := server.DecodeOpenJSON(data, &f); err != nil {
		return fmt.Errorf("group state: %w", err)
	}
	*s = GroupState(f)
	s.raw = canonical
	return nil
}

// MarshalJSON encodes the snapshot as received (canonical), or, for one made
// here, its fields.
func (s GroupState) MarshalJSON() ([]byte, error) {
	if s.raw != nil {
		return bytes.Clone(s.raw), nil
	}
	f := groupStateFields(s)
	if f.Members == nil {
		f.Members = []string{}
	}
	if f.Admins == nil {
		f.Admins = []string{}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(f); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// Canonical is the snapshot's JCS canonical JSON.
func (s *GroupState) Canonical() ([]byte, error) {
	if s.raw != nil {
		return s.raw, nil
	}
	b, err := s.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("group state: %w", err)
	}
	return signing.Canonicalize(b)
}

// Hash is the snapshot's hash, the base64url SHA-256 of its canonical JSON:
// what the next version names as prev, and what breaks a tie between two
// snapshots of one version.
func (s *GroupState) Hash() string {
	c, err := s.Canonical()
	if err != nil {
		// Only a name with invalid UTF-8 cannot be canonicalized; Check
		// refuses it, so no such state is ever held.
		return ""
	}
	sum := sha256.Sum256(c)
	return signing.EncodeB64(sum[:])
}

// qualify makes the names of a snapshot a client of the server writer
// wrote this client's, of the server own (see QualifyName), keeping the
// bytes as carried, which its hash is over. The lists must be sorted and
// distinct as written; they are sorted again as named here (Check then
// finds two names that became one). A snapshot of this server's writer
// changes only where it names this server's people by address.
func (s *GroupState) qualify(writer, own string) error {
	if err := checkHandleList("members", s.Members, MaxGroupMembers); err != nil {
		return fmt.Errorf("group state: %w", err)
	}
	if err := checkHandleList("admins", s.Admins, MaxGroupMembers); err != nil {
		return fmt.Errorf("group state: %w", err)
	}
	list := func(hs []string) ([]string, error) {
		out := make([]string, len(hs))
		for i, h := range hs {
			n, err := QualifyName(h, writer, own)
			if err != nil {
				return nil, fmt.Errorf("group state: %w", err)
			}
			out[i] = n
		}
		slices.Sort(out)
		return out, nil
	}
	members, err := list(s.Members)
	if err != nil {
		return err
	}
	admins, err := list(s.Admins)
	if err != nil {
		return err
	}
	by, err := QualifyName(s.By, writer, own)
	if err != nil {
		return fmt.Errorf("group state: by: %w", err)
	}
	if writer == own && slices.Equal(members, s.Members) && slices.Equal(admins, s.Admins) && by == s.By {
		return nil
	}
	if s.raw == nil {
		// Made here, never carried: the hash is over the names as written.
		if s.raw, err = s.Canonical(); err != nil {
			return err
		}
	}
	s.Members, s.Admins, s.By, s.writer = members, admins, by, writer
	return nil
}

// IsMember reports whether handle is one of the group's members.
func (s *GroupState) IsMember(handle string) bool {
	_, ok := slices.BinarySearch(s.Members, handle)
	return ok
}

// IsAdmin reports whether handle is one of the group's admins.
func (s *GroupState) IsAdmin(handle string) bool {
	_, ok := slices.BinarySearch(s.Admins, handle)
	return ok
}

// NewGroupID returns a random group id: 16 bytes, base64url (22 characters).
func NewGroupID() string {
	var b [groupIDBytes]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return signing.EncodeB64(b[:])
}

// ValidGroupID reports whether id is 22 base64url characters of 16 bytes.
func ValidGroupID(id string) bool {
	if len(id) != 22 {
		return false
	}
	b, err := signing.DecodeB64(id)
	return err == nil && len(b) == groupIDBytes
}

// Check reports whether the snapshot is well formed on its own: an id,
// version 1 a create with no prev and later ones naming a 32-byte prev,
// 1 to 64 characters of name, 1 to 256 sorted distinct members of whom the
// admins are a non-empty sorted subset, a known op, and an author.
func (s *GroupState) Check() error {
	switch {
	case !ValidGroupID(s.ID):
		return fmt.Errorf("group id %.40q is not 16 bytes of base64url", s.ID)
	case s.Version < 1 || s.Version > maxSafeInteger:
		return fmt.Errorf("version %d is out of range", s.Version)
	case s.Version == 1 && (s.Prev != "" || s.Op != OpCreate):
		return errors.New("version 1 must be a create with an empty prev")
	case s.Version > 1 && s.Op == OpCreate:
		return fmt.Errorf("version %d is a create", s.Version)
	}
	if s.Version > 1 {
		if p, err := signing.DecodeB64(s.Prev); err != nil || len(p) != sha256.Size {
			return fmt.Errorf("prev %.60q is not a base64url SHA-256", s.Prev)
		}
	}
	switch s.Op {
	case OpCreate, OpAdd, OpRemove, OpLeave, OpRename, OpPromote:
	default:
		return fmt.Errorf("unknown op %.20q", s.Op)
	}
	if !utf8.ValidString(s.Name) {
		return errors.New("the name is not valid UTF-8")
	}
	if n := utf8.RuneCountInString(s.Name); n < 1 || n > MaxGroupName {
		return fmt.Errorf("the name is %d characters, not 1 to %d", n, MaxGroupName)
	}
	if err := checkHandleList("members", s.Members, MaxGroupMembers); err != nil {
		return err
	}
	if err := checkHandleList("admins", s.Admins, len(s.Members)); err != nil {
		return err
	}
	for _, a := range s.Admins {
		if !s.IsMember(a) {
			return fmt.Errorf("admin %s is not a member", a)
		}
	}
	if checkName(s.By) != nil {
		return fmt.Errorf("by %.80q is not a handle or an address", s.By)
	}
	return nil
}

// checkHandleList checks 1 to max names (handles or addresses), sorted
// and distinct.
func checkHandleList(what string, hs []string, max int) error {
	if len(hs) < 1 || len(hs) > max {
		return fmt.Errorf("%d %s, not 1 to %d", len(hs), what, max)
	}
	for i, h := range hs {
		if checkName(h) != nil {
			return fmt.Errorf("%s: %.80q is not a handle or an address", what, h)
		}
		if i > 0 && hs[i-1] >= h {
			return fmt.Errorf("%s are not sorted and distinct", what)
		}
	}
	return nil
}

// ErrSnapshotDropped is wrapped by every reason Groups.Take drops a
// snapshot.
var ErrSnapshotDropped = errors.New("group snapshot dropped")

func dropped(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrSnapshotDropped, fmt.Sprintf(format, args...))
}

// groupHistory is the versions of one group a client took, ascending and
// consecutive; the last is the group's state. Only the state and the one
// before it are ever a parent (a snapshot older than the state is dropped),
// so the oldest beyond maxGroupVersions are let go.
type groupHistory struct {
	versions []*GroupState
}

func (h *groupHistory) state() *GroupState { return h.versions[len(h.versions)-1] }

// at is the version v taken, or nil.
func (h *groupHistory) at(v uint64) *GroupState {
	first := h.versions[0].Version
	if v < first || v-first >= uint64(len(h.versions)) {
		return nil
	}
	return h.versions[v-first]
}

// Groups is one client's knowledge of its groups: every snapshot it took,
// by the rules of docs/protocol.md ("Groups"). It is not safe for
// concurrent use.
type Groups struct {
	// Self is the client's handle.
	Self string
	// Domain is the client's server's domain, which names in the states
	// of other servers' writers are qualified against (see QualifyName);
	// saved with the groups.
	Domain string
	// Seq is the last seq of Self's inbox whose messages were received
	// (Receive): a reader that reads the inbox again passes over those, so
	// each snapshot is taken once, in inbox order.
	Seq uint64
	// dropped are the seqs, at or below Seq, of the messages ReceiveAt
	// refused, so that reading them again refuses them again; the oldest
	// beyond an inbox's worth are let go.
	dropped []uint64
	groups  map[string]*groupHistory
	order   []string // group ids, oldest first: List's order, and eviction's
}

// NewGroups returns an empty Groups of the client self.
func NewGroups(self string) *Groups {
	return &Groups{Self: self, groups: make(map[string]*groupHistory)}
}

// State is the group's current state as this client holds it (the group
// may no longer list the client), or nil when it knows none.
func (g *Groups) State(id string) *GroupState {
	if h := g.groups[id]; h != nil {
		return h.state()
	}
	return nil
}

// Versions is every version of the group this client keeps, oldest first.
func (g *Groups) Versions(id string) []*GroupState {
	if h := g.groups[id]; h != nil {
		return slices.Clone(h.versions)
	}
	return nil
}

// List is the groups whose state lists the client, in the order it first
// took them: a client shows nothing of a group it is not in.
func (g *Groups) List() []*GroupState {
	var out []*GroupState
	for _, id := range g.order {
		if s := g.groups[id].state(); s.IsMember(g.Self) {
			out = append(out, s)
		}
	}
	return out
}

// Accepts reports whether a group message from sender is shown: the
// client is in the group and so is the sender.
func (g *Groups) Accepts(groupID, sender string) bool {
	s := g.State(groupID)
	return s != nil && s.IsMember(g.Self) && s.IsMember(sender)
}

// ErrNotInGroup is returned by Receive for a group message of a group the
// client is not in, or from a handle that is not a member.
var ErrNotInGroup = errors.New("not a message of a group this client is in, from a member")

// Receive applies a verified, decrypted message to the groups: a control
// message's snapshot is taken (or dropped, wrapping ErrSnapshotDropped);
// any other group message must be of a group the client is in, from a
// member (else ErrNotInGroup). A message of no group passes.
func (g *Groups) Receive(pt *Plaintext) error {
	switch {
	case pt.Kind == KindGroup:
		return g.Take(pt.From, pt.State)
	case pt.Group != nil && !g.Accepts(pt.Group.ID, pt.From):
		return fmt.Errorf("%w: group %s, from %s", ErrNotInGroup, pt.Group.ID, pt.From)
	}
	return nil
}

// maxDroppedSeqs is the most refused seqs Groups remembers: a full inbox
// of them (the server's default cap on unacknowledged messages).
const maxDroppedSeqs = 10000

// ErrDroppedBefore is ReceiveAt's answer for a message it refused when it
// was first received.
var ErrDroppedBefore = errors.New("refused when it was first received")

// ReceiveAt is Receive for the message of inbox seq, each message once, in
// inbox order: one at or below Seq was received before, and gets the
// answer it got then (nil, or ErrDroppedBefore) without being applied
// again. A reader calls it for every message it reads, and Pass for one it
// cannot read.
func (g *Groups) ReceiveAt(seq uint64, pt *Plaintext) error {
	if seq <= g.Seq {
		if _, ok := slices.BinarySearch(g.dropped, seq); ok {
			return ErrDroppedBefore
		}
		return nil
	}
	g.Seq = seq
	err := g.Receive(pt)
	if err != nil {
		g.dropped = append(g.dropped, seq)
		if len(g.dropped) > maxDroppedSeqs {
			g.dropped = slices.Delete(g.dropped, 0, len(g.dropped)-maxDroppedSeqs)
		}
	}
	return err
}

// Pass moves Seq past a message that could not be read (it was not valid).
func (g *Groups) Pass(seq uint64) { g.Seq = max(g.Seq, seq) }

// ChangeRecipients is whom a control message from before to after goes to:
// the members of both (so a removed member learns it), the author among
// them. before is nil for a create.
func ChangeRecipients(before, after *GroupState) []string {
	hs := slices.Clone(after.Members)
	if before != nil {
		hs = append(hs, before.Members...)
	}
	return sortedSet(hs)
}

// Take applies the rules of docs/protocol.md ("Groups") to snapshot t
// received from the handle from. It returns nil when t was taken (it is
// then the state, or it was already), else an error wrapping
// ErrSnapshotDropped that says why.
func (g *Groups) Take(from string, t *GroupState) error {
	if err := t.Check(); err != nil {
		return dropped("malformed: %v", err)
	}
	if t.By != from {
		return dropped("by %s, but sent by %s", t.By, from)
	}
	h := g.groups[t.ID]
	if h == nil {
		// Rule 1: a group the client does not know; it was added.
		if !t.IsMember(g.Self) {
			return dropped("a group %s does not know, which does not list it", g.Self)
		}
		return g.add(t)
	}
	err := takeKnown(h, from, t)
	// A client that is not in the state it holds (it was removed, or left)
	// takes, like one that knows no state, a later snapshot that lists it:
	// it was added again, from a state it never received.
	if err != nil && !h.state().IsMember(g.Self) && t.Version > h.state().Version && t.IsMember(g.Self) {
		h.versions = []*GroupState{t}
		return nil
	}
	return err
}

// takeKnown is rules 2 to 4: t must build on a version h holds, be allowed
// by that parent, and not lose to the state.
func takeKnown(h *groupHistory, from string, t *GroupState) error {
	n := h.state().Version
	// Rule 2.
	parent := h.at(t.Version - 1)
	if parent == nil || parent.Hash() != t.Prev {
		return dropped("version %d does not build on a version held (the state is version %d)", t.Version, n)
	}
	// Rule 3.
	if err := allowed(parent, from, t); err != nil {
		return err
	}
	// Rule 4.
	switch {
	case t.Version == n+1:
		h.versions = append(h.versions, t)
		if len(h.versions) > maxGroupVersions {
			h.versions = slices.Delete(h.versions, 0, len(h.versions)-maxGroupVersions)
		}
		return nil
	case t.Version == n:
		switch cur, th := h.state().Hash(), t.Hash(); {
		case th == cur:
			return nil // taken already
		case th < cur:
			// Nothing is held above n, so nothing built on the loser is.
			h.versions[len(h.versions)-1] = t
			return nil
		default:
			return dropped("version %d lost to the state's smaller hash", t.Version)
		}
	default:
		return dropped("version %d is older than the state, version %d", t.Version, n)
	}
}

// allowed is rule 3: an admin of the parent may change anything; a member
// who is not may only leave, leaving name and admins as they were.
func allowed(parent *GroupState, from string, t *GroupState) error {
	switch {
	case !parent.IsMember(from):
		return dropped("%s is not a member of version %d", from, parent.Version)
	case parent.IsAdmin(from):
		return nil
	case t.Op != OpLeave || t.Name != parent.Name || !slices.Equal(t.Admins, parent.Admins) ||
		!slices.Equal(t.Members, slices.DeleteFunc(slices.Clone(parent.Members), func(m string) bool { return m == from })):
		return dropped("%s is not an admin of version %d and may only leave", from, parent.Version)
	}
	return nil
}

// add starts the history of a group the client did not know with t.
func (g *Groups) add(t *GroupState) error {
	if len(g.groups) >= maxGroups {
		// Make room by forgetting the oldest group the client is not in.
		i := slices.IndexFunc(g.order, func(id string) bool { return !g.groups[id].state().IsMember(g.Self) })
		if i < 0 {
			return dropped("the client keeps %d groups already", maxGroups)
		}
		delete(g.groups, g.order[i])
		g.order = slices.Delete(g.order, i, i+1)
	}
	g.groups[t.ID] = &groupHistory{versions: []*GroupState{t}}
	g.order = append(g.order, t.ID)
	return nil
}

// NewGroup makes version 1 of a new group: the author its only admin,
// members the author and the others given.
func NewGroup(author, name string, others []string) (*GroupState, error) {
	s := &GroupState{ID: NewGroupID(), Version: 1, Name: name, Members: sortedSet(append([]string{author}, others...)),
		Admins: []string{author}, By: author, Op: OpCreate}
	if err := s.Check(); err != nil {
		return nil, fmt.Errorf("new group: %w", err)
	}
	return s, nil
}

// Next makes the version after s, by author, with op and members, admins and
// name changed by change (which gets a copy); it is checked as Take would
// check it, so an author cannot send what its members would drop.
func (s *GroupState) Next(author, op string, change func(next *GroupState)) (*GroupState, error) {
	next := &GroupState{ID: s.ID, Version: s.Version + 1, Prev: s.Hash(), Name: s.Name,
		Members: slices.Clone(s.Members), Admins: slices.Clone(s.Admins), By: author, Op: op}
	change(next)
	next.Members, next.Admins = sortedSet(next.Members), sortedSet(next.Admins)
	if err := next.Check(); err != nil {
		return nil, fmt.Errorf("group %s: %w", s.Name, err)
	}
	if err := allowed(s, author, next); err != nil {
		return nil, fmt.Errorf("group %s: %w", s.Name, err)
	}
	return next, nil
}

// Without returns hs without h.
func Without(hs []string, h string) []string {
	return slices.DeleteFunc(slices.Clone(hs), func(x string) bool { return x == h })
}

// sortedSet sorts hs and drops duplicates.
func sortedSet(hs []string) []string {
	hs = slices.Clone(hs)
	slices.Sort(hs)
	return slices.Compact(hs)
}
