package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"time"
)

// Source makes a part's data objects: a SQLite snapshot, or JetStream's.
type Source interface {
	// Kind is the store kind the manifest names (KindSQLite, KindJetStream).
	Kind() string
	// Snapshot hands each data object to put, once per name, reading r to
	// its end; put uploads it.
	Snapshot(ctx context.Context, put func(name string, r io.Reader) error) error
}

// Options say where a backup goes and what is kept afterwards.
type Options struct {
	Store  ObjectStore
	Layout Layout
	ID     string
	Part   Part
	// Version is the kezchat build, recorded in the manifest.
	Version   string
	Retention Retention
	// Now is the clock (time.Now when nil); Log discards when nil.
	Now func() time.Time
	Log *slog.Logger
}

func (o *Options) defaults() {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Result is what `kezchat backup` prints: one JSON line, which the operator
// reads from the Job's termination message.
type Result struct {
	ID   string `json:"id"`
	Part Part   `json:"part"`
	// Bytes and Objects count every object of the backup, the manifest
	// included.
	Bytes       int64     `json:"bytes"`
	Objects     int       `json:"objects"`
	StartedAt   time.Time `json:"startedAt"`
	CompletedAt time.Time `json:"completedAt"`
	Version     string    `json:"version"`
	// Deleted are the ids of the backups of this part retention removed.
	Deleted []string `json:"deleted"`
}

// Take backs src up as part opts.Part of backup opts.ID: it uploads the
// data objects, then the manifest, reads every object back to check its
// size and SHA-256, and only then applies retention. A backup whose
// manifest exists already is refused: a completed backup is never replaced.
// An incomplete one (a failed attempt with the same id) is written over.
func Take(ctx context.Context, src Source, opts Options) (*Result, error) {
	opts.defaults()
	if err := CheckID(opts.ID); err != nil {
		return nil, err
	}
	folder := opts.Layout.Folder(opts.ID, opts.Part)
	switch _, err := readManifest(ctx, opts.Store, opts.Layout, opts.ID, opts.Part); {
	case err == nil:
		return nil, fmt.Errorf("backup %s of part %s exists already in %s; a completed backup is never replaced, take a new id", opts.ID, opts.Part, opts.Store)
	case !errors.Is(err, ErrNotFound):
		return nil, fmt.Errorf("checking for an earlier backup %s: %w", opts.ID, err)
	}

	m := &Manifest{Format: FormatVersion, ID: opts.ID, Part: opts.Part, Version: opts.Version, Store: src.Kind(),
		StartedAt: opts.Now().UTC()}
	opts.Log.Info("backup started", "id", opts.ID, "part", opts.Part, "store", src.Kind(), "to", opts.Store.String(), "folder", folder)
	err := src.Snapshot(ctx, func(name string, r io.Reader) error {
		if !objectName.MatchString(name) || name == ManifestName {
			return fmt.Errorf("data object name %q", name)
		}
		for _, o := range m.Objects {
			if o.Name == name {
				return fmt.Errorf("data object %q written twice", name)
			}
		}
		h := &hashingReader{r: r, h: sha256.New()}
		start := time.Now()
		if err := opts.Store.Put(ctx, folder+name, h, -1); err != nil {
			return err
		}
		m.Objects = append(m.Objects, Object{Name: name, Size: h.n, SHA256: hex.EncodeToString(h.h.Sum(nil))})
		opts.Log.Info("uploaded", "object", folder+name, "bytes", h.n, "took", time.Since(start).Round(time.Millisecond))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backing up part %s: %w", opts.Part, err)
	}
	if len(m.Objects) == 0 {
		return nil, fmt.Errorf("backing up part %s: the snapshot made no data objects", opts.Part)
	}
	m.CompletedAt = opts.Now().UTC()
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding the manifest: %w", err)
	}
	manifest = append(manifest, '\n')
	// Written last: until it is there, the folder is an incomplete backup.
	if err := opts.Store.Put(ctx, folder+ManifestName, bytes.NewReader(manifest), int64(len(manifest))); err != nil {
		return nil, err
	}
	if err := verifyUploaded(ctx, opts.Store, folder, m, manifest); err != nil {
		return nil, fmt.Errorf("verifying backup %s after upload: %w", opts.ID, err)
	}
	res := &Result{ID: m.ID, Part: m.Part, Objects: len(m.Objects) + 1, Bytes: int64(len(manifest)),
		StartedAt: m.StartedAt, CompletedAt: m.CompletedAt, Version: m.Version, Deleted: []string{}}
	for _, o := range m.Objects {
		res.Bytes += o.Size
	}
	opts.Log.Info("backup verified", "id", opts.ID, "part", opts.Part, "bytes", res.Bytes, "objects", res.Objects,
		"took", m.CompletedAt.Sub(m.StartedAt).Round(time.Millisecond))
	if res.Deleted, err = applyRetention(ctx, opts, m); err != nil {
		return res, fmt.Errorf("backup %s succeeded, but retention failed: %w", opts.ID, err)
	}
	return res, nil
}

// verifyUploaded reads the manifest and every data object back and checks
// them against what was written.
func verifyUploaded(ctx context.Context, store ObjectStore, folder string, m *Manifest, manifest []byte) error {
	got, err := readAll(ctx, store, folder+ManifestName, int64(len(manifest))+1)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, manifest) {
		return fmt.Errorf("%s%s reads back different from what was written", folder, ManifestName)
	}
	for _, o := range m.Objects {
		rc, err := openVerified(ctx, store, folder, o)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func readAll(ctx context.Context, store ObjectStore, key string, limit int64) ([]byte, error) {
	rc, err := store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	return b, nil
}

// maxManifest bounds what is read as a manifest.
const maxManifest = 1 << 20

func readManifest(ctx context.Context, store ObjectStore, l Layout, id string, part Part) (*Manifest, error) {
	key := l.Folder(id, part) + ManifestName
	b, err := readAll(ctx, store, key, maxManifest+1)
	if err != nil {
		return nil, err
	}
	if len(b) > maxManifest {
		return nil, fmt.Errorf("%s is over %d bytes", key, maxManifest)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if m.ID != id || m.Part != part {
		return nil, fmt.Errorf("%s describes backup %s part %s", key, m.ID, m.Part)
	}
	return m, nil
}

// ChecksumError is a data object whose bytes are not what its manifest
// says.
type ChecksumError struct {
	Key  string
	Want Object
	// Size and SHA256 are what was read.
	Size   int64
	SHA256 string
}

func (e *ChecksumError) Error() string {
	if e.Size != e.Want.Size {
		return fmt.Sprintf("%s is %d bytes, but the manifest says %d: the object is damaged or was replaced", e.Key, e.Size, e.Want.Size)
	}
	return fmt.Sprintf("%s has SHA-256 %s, but the manifest says %s: the object is damaged or was replaced", e.Key, e.SHA256, e.Want.SHA256)
}

// openVerified opens a data object; reading it fails with a
// *ChecksumError, instead of io.EOF, unless its size and SHA-256 are the
// manifest's.
func openVerified(ctx context.Context, store ObjectStore, folder string, o Object) (io.ReadCloser, error) {
	rc, err := store.Get(ctx, folder+o.Name)
	if err != nil {
		return nil, err
	}
	return &verifyingReader{rc: rc, key: folder + o.Name, want: o, h: sha256.New()}, nil
}

type verifyingReader struct {
	rc   io.ReadCloser
	key  string
	want Object
	h    hash.Hash
	n    int64
	err  error
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n > v.want.Size {
		v.err = &ChecksumError{Key: v.key, Want: v.want, Size: v.n, SHA256: "(not computed: longer than expected)"}
		return 0, v.err
	}
	if errors.Is(err, io.EOF) {
		if sum := hex.EncodeToString(v.h.Sum(nil)); v.n != v.want.Size || sum != v.want.SHA256 {
			v.err = &ChecksumError{Key: v.key, Want: v.want, Size: v.n, SHA256: sum}
			return n, v.err
		}
		v.err = io.EOF
	} else if err != nil {
		v.err = fmt.Errorf("reading %s: %w", v.key, err)
	}
	return n, v.err
}

func (v *verifyingReader) Close() error { return v.rc.Close() }

type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (r *hashingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	return n, err
}
