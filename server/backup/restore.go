package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Target is where a part is restored to: a SQLite file, or JetStream.
type Target interface {
	// Kind is the store kind it takes (KindSQLite, KindJetStream).
	Kind() string
	// Existing reports whether the target holds data already, and what,
	// for the log: a restore never writes over it.
	Existing(ctx context.Context) (what string, exists bool, err error)
	// Restore reads the manifest's data objects through open, whose readers
	// fail with a *ChecksumError at their end unless the object is what the
	// manifest says, checks what they hold, and only then puts it in place.
	Restore(ctx context.Context, m *Manifest, open func(name string) (io.ReadCloser, error)) error
}

// SkipRestore is what a Target's Restore returns when, once it could look
// without racing another restore, it found no restore wanted: What says
// why (the data is there, or another restore put it there).
type SkipRestore struct{ What string }

func (e *SkipRestore) Error() string { return "restore skipped: " + e.What }

// RestoreOptions say which backup to restore.
type RestoreOptions struct {
	Store  ObjectStore
	Layout Layout
	ID     string
	Part   Part
	Log    *slog.Logger
}

// RestoreResult says what Restore did.
type RestoreResult struct {
	// Skipped is set when the target held data already; Existing says what.
	Skipped  bool
	Existing string
	Manifest *Manifest
}

// Restore restores part opts.Part of backup opts.ID into dst, unless dst
// holds data already: then it does nothing, since it runs before every
// start of the component and must never overwrite live data.
func Restore(ctx context.Context, dst Target, opts RestoreOptions) (*RestoreResult, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if err := CheckID(opts.ID); err != nil {
		return nil, err
	}
	what, exists, err := dst.Existing(ctx)
	if err != nil {
		return nil, fmt.Errorf("checking the restore target: %w", err)
	}
	if exists {
		opts.Log.Info("restore skipped: the target holds data already, which a restore never overwrites", "existing", what, "id", opts.ID, "part", opts.Part)
		return &RestoreResult{Skipped: true, Existing: what}, nil
	}
	m, err := readManifest(ctx, opts.Store, opts.Layout, opts.ID, opts.Part)
	if err != nil {
		return nil, fmt.Errorf("reading the manifest of backup %s part %s (a backup without one is incomplete): %w", opts.ID, opts.Part, err)
	}
	if m.Store != dst.Kind() {
		return nil, fmt.Errorf("backup %s part %s holds a %s store; the restore target is %s", m.ID, m.Part, m.Store, dst.Kind())
	}
	start := time.Now()
	opts.Log.Info("restore started", "id", m.ID, "part", m.Part, "store", m.Store, "version", m.Version, "completedAt", m.CompletedAt, "from", opts.Store.String())
	folder := opts.Layout.Folder(m.ID, m.Part)
	open := func(name string) (io.ReadCloser, error) {
		for _, o := range m.Objects {
			if o.Name == name {
				return openVerified(ctx, opts.Store, folder, o)
			}
		}
		return nil, fmt.Errorf("backup %s part %s has no object %q", m.ID, m.Part, name)
	}
	if err := dst.Restore(ctx, m, open); err != nil {
		if skip := (*SkipRestore)(nil); errors.As(err, &skip) {
			opts.Log.Info("restore skipped: the target holds data already, which a restore never overwrites", "existing", skip.What, "id", opts.ID, "part", opts.Part)
			return &RestoreResult{Skipped: true, Existing: skip.What}, nil
		}
		return nil, fmt.Errorf("restoring backup %s part %s: %w", m.ID, m.Part, err)
	}
	opts.Log.Info("restored", "id", m.ID, "part", m.Part, "took", time.Since(start).Round(time.Millisecond))
	return &RestoreResult{Manifest: m}, nil
}
