package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"slices"

	"kez.lat/chat/server"
)

// maxGroupsFile bounds what LoadGroups reads: maxGroups groups of
// maxGroupVersions snapshots of 256 members fit with room to spare.
const maxGroupsFile = 16 << 20

// groupsFile is the on-disk form of Groups.
type groupsFile struct {
	Version int                 `json:"v"`
	Handle  string              `json:"handle"`
	Domain  string              `json:"domain,omitempty"`
	Seq     uint64              `json:"seq"`
	Dropped []uint64            `json:"dropped"`
	Groups  []groupsFileHistory `json:"groups"`
}

type groupsFileHistory struct {
	Versions []*GroupState `json:"versions"`
	// Writers are, for each version, the domain of the server whose client
	// wrote it when its names are not this client's as written, else ""
	// (absent: all "").
	Writers []string `json:"writers,omitempty"`
}

// Save writes the groups, and Seq, to path with mode 0600, replacing the
// file atomically.
func (g *Groups) Save(path string) error {
	f := groupsFile{Version: 1, Handle: g.Self, Domain: g.Domain, Seq: g.Seq, Dropped: g.dropped, Groups: []groupsFileHistory{}}
	if f.Dropped == nil {
		f.Dropped = []uint64{}
	}
	for _, id := range g.order {
		h := groupsFileHistory{Versions: g.groups[id].versions}
		for i, v := range h.Versions {
			if v.writer == "" {
				continue
			}
			if g.Domain == "" {
				return errors.New("saving groups: a group state from another server, but no domain of this client's own")
			}
			if h.Writers == nil {
				h.Writers = make([]string, len(h.Versions))
			}
			h.Writers[i] = v.writer
		}
		f.Groups = append(f.Groups, h)
	}
	data, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("saving groups: %w", err)
	}
	if err := writePrivateFile(path, append(data, '\n'), true); err != nil {
		return fmt.Errorf("saving groups: %w", err)
	}
	return nil
}

// LoadGroups reads the groups of the client self that Save wrote to path;
// no file is no groups. The file must not be readable by others (it tells
// whom the person talks with), and must be self's.
func LoadGroups(path, self string) (*Groups, error) {
	g := NewGroups(self)
	file, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return g, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading groups: %w", err)
	}
	defer file.Close()
	if st, err := file.Stat(); err == nil && runtime.GOOS != "windows" && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("loading groups: %s has mode %v; it must not be accessible to others (chmod 600 %s)", path, st.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(file, maxGroupsFile+1))
	if err != nil {
		return nil, fmt.Errorf("loading groups: %w", err)
	}
	if len(data) > maxGroupsFile {
		return nil, fmt.Errorf("loading groups: %s is over %d bytes", path, maxGroupsFile)
	}
	var f groupsFile
	if err := server.DecodeJSON(data, &f); err != nil {
		return nil, fmt.Errorf("loading groups from %s: %w", path, err)
	}
	if f.Version != 1 || f.Handle != self {
		return nil, fmt.Errorf("loading groups from %s: version %d of %q, not version 1 of %q", path, f.Version, f.Handle, self)
	}
	g.Seq, g.Domain = f.Seq, f.Domain
	if len(f.Dropped) > maxDroppedSeqs || !slices.IsSorted(f.Dropped) || (len(f.Dropped) > 0 && f.Dropped[len(f.Dropped)-1] > f.Seq) {
		return nil, fmt.Errorf("loading groups from %s: the dropped seqs are not sorted, at most %d, up to seq", path, maxDroppedSeqs)
	}
	g.dropped = f.Dropped
	for i, h := range f.Groups {
		if h.Writers != nil && (len(h.Writers) != len(h.Versions) || f.Domain == "") {
			return nil, fmt.Errorf("loading groups from %s: group %d: writers do not match its versions, or no domain", path, i+1)
		}
		for j, w := range h.Writers {
			if w == "" || h.Versions[j] == nil {
				continue
			}
			if err := CheckDomain(w, true); err != nil {
				return nil, fmt.Errorf("loading groups from %s: group %d: writer %.80q", path, i+1, w)
			}
			if err := h.Versions[j].qualify(w, f.Domain); err != nil {
				return nil, fmt.Errorf("loading groups from %s: group %d: %w", path, i+1, err)
			}
		}
		if err := checkHistory(h.Versions); err != nil {
			return nil, fmt.Errorf("loading groups from %s: group %d: %w", path, i+1, err)
		}
		id := h.Versions[0].ID
		if g.groups[id] != nil || len(g.groups) >= maxGroups {
			return nil, fmt.Errorf("loading groups from %s: group %d is there twice, or one too many", path, i+1)
		}
		g.groups[id] = &groupHistory{versions: h.Versions}
		g.order = append(g.order, id)
	}
	return g, nil
}

// checkHistory checks what a saved history must be: 1 to maxGroupVersions
// well-formed snapshots of one group, consecutive, each naming the one
// before.
func checkHistory(vs []*GroupState) error {
	if len(vs) < 1 || len(vs) > maxGroupVersions {
		return fmt.Errorf("%d versions", len(vs))
	}
	for i, s := range vs {
		if s == nil {
			return errors.New("a null version")
		}
		if err := s.Check(); err != nil {
			return err
		}
		if i > 0 && (s.ID != vs[0].ID || s.Version != vs[i-1].Version+1 || s.Prev != vs[i-1].Hash()) {
			return fmt.Errorf("version %d does not follow version %d", s.Version, vs[i-1].Version)
		}
	}
	return nil
}
