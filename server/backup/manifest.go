// Package backup takes backups of a KezChat's data to an object store,
// verifies them, applies retention, and restores them. A backup is taken per
// part (the chat server's store, the sig-server's key log) because each
// sits on a volume of its own: <prefix>/<id>/<part>/ holds the part's data
// objects and, written last, manifest.json, which names each object with
// its size and SHA-256. A folder without a manifest is an incomplete backup
// and is never listed or restored. docs/backups.md describes the layout.
package backup

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// FormatVersion is the manifest format this code writes and reads.
const FormatVersion = 1

// ManifestName is the manifest's object name in a part's folder.
const ManifestName = "manifest.json"

// Part names what a backup holds.
type Part string

const (
	// PartServer is the chat server's store: its SQLite database, or its
	// JetStream streams and KV buckets.
	PartServer Part = "server"
	// PartSigServer is the sig-server's SQLite key log.
	PartSigServer Part = "sigserver"
)

// ParsePart checks a --part value.
func ParsePart(s string) (Part, error) {
	switch p := Part(s); p {
	case PartServer, PartSigServer:
		return p, nil
	case "":
		return "", fmt.Errorf("--part is required: server or sigserver")
	default:
		return "", fmt.Errorf("--part %q: want server or sigserver", s)
	}
}

// Store kinds a manifest names.
const (
	KindSQLite    = "sqlite"
	KindJetStream = "jetstream"
)

// idPattern keeps a backup id one path segment, usable as a Kubernetes
// label value and an object key part.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

// CheckID checks a --id value.
func CheckID(id string) error {
	if id == "" {
		return fmt.Errorf("--id is required")
	}
	if !idPattern.MatchString(id) {
		return fmt.Errorf("--id %q: want 1 to 63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit", id)
	}
	return nil
}

// Object is one data object of a part.
type Object struct {
	// Name is the object's key in the part's folder.
	Name string `json:"name"`
	// Size is its length in bytes, SHA256 the hex SHA-256 of those bytes.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Manifest describes one part of one backup.
type Manifest struct {
	Format int    `json:"format"`
	ID     string `json:"id"`
	Part   Part   `json:"part"`
	// Version is the kezchat build that took it.
	Version string `json:"version"`
	// Store is KindSQLite or KindJetStream.
	Store       string    `json:"store"`
	StartedAt   time.Time `json:"startedAt"`
	CompletedAt time.Time `json:"completedAt"`
	Objects     []Object  `json:"objects"`
}

var objectName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,200}$`)

// ParseManifest decodes a manifest strictly and checks it is one this code
// can restore from.
func ParseManifest(data []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest is not valid JSON: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("manifest has data after its JSON object")
	}
	if m.Format != FormatVersion {
		return nil, fmt.Errorf("manifest format %d: this kezchat reads format %d", m.Format, FormatVersion)
	}
	if err := CheckID(m.ID); err != nil {
		return nil, fmt.Errorf("manifest id: %w", err)
	}
	if _, err := ParsePart(string(m.Part)); err != nil {
		return nil, fmt.Errorf("manifest part: %w", err)
	}
	if m.Store != KindSQLite && m.Store != KindJetStream {
		return nil, fmt.Errorf("manifest store %q: want %s or %s", m.Store, KindSQLite, KindJetStream)
	}
	if m.StartedAt.IsZero() || m.CompletedAt.Before(m.StartedAt) {
		return nil, fmt.Errorf("manifest times: started %s, completed %s", m.StartedAt, m.CompletedAt)
	}
	if len(m.Objects) == 0 {
		return nil, fmt.Errorf("manifest names no data objects")
	}
	seen := map[string]bool{}
	for _, o := range m.Objects {
		switch {
		case !objectName.MatchString(o.Name) || o.Name == ManifestName:
			return nil, fmt.Errorf("manifest object name %q", o.Name)
		case seen[o.Name]:
			return nil, fmt.Errorf("manifest names object %q twice", o.Name)
		case o.Size < 0 || len(o.SHA256) != 64 || strings.ToLower(o.SHA256) != o.SHA256:
			return nil, fmt.Errorf("manifest object %q: size %d, sha256 %q", o.Name, o.Size, o.SHA256)
		}
		seen[o.Name] = true
	}
	return &m, nil
}

// Layout turns (prefix, id, part) into object keys.
type Layout struct {
	// Prefix is the folder inside the bucket, without leading or trailing
	// slashes; empty for the bucket's root.
	Prefix string
}

// NewLayout cleans a --s3-prefix value.
func NewLayout(prefix string) (Layout, error) {
	p := strings.Trim(prefix, "/")
	for _, seg := range strings.Split(p, "/") {
		if p != "" && (seg == "" || seg == "." || seg == "..") {
			return Layout{}, fmt.Errorf("--s3-prefix %q: empty, . or .. path segments", prefix)
		}
	}
	return Layout{Prefix: p}, nil
}

// Root is the folder every backup is under ("" or "prefix/").
func (l Layout) Root() string {
	if l.Prefix == "" {
		return ""
	}
	return l.Prefix + "/"
}

// Folder is the folder of one part of one backup, ending in /.
func (l Layout) Folder(id string, part Part) string {
	return l.Root() + id + "/" + string(part) + "/"
}

// parseManifestKey returns the id and part of a key of the form
// <root><id>/<part>/manifest.json.
func (l Layout) parseManifestKey(key string) (id string, part Part, ok bool) {
	rest, found := strings.CutPrefix(key, l.Root())
	if !found {
		return "", "", false
	}
	segs := strings.Split(rest, "/")
	if len(segs) != 3 || segs[2] != ManifestName || CheckID(segs[0]) != nil {
		return "", "", false
	}
	p, err := ParsePart(segs[1])
	if err != nil {
		return "", "", false
	}
	return segs[0], p, true
}
