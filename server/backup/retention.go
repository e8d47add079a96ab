package backup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Retention says which completed backups of a part are kept after a new
// one is verified. The new one is always kept, and counts towards KeepCount.
type Retention struct {
	// KeepCount keeps at most this many backups (0: no count limit).
	KeepCount int
	// KeepAge deletes backups completed longer ago than this (0: no age
	// limit).
	KeepAge time.Duration
}

// Validate refuses negative limits.
func (r Retention) Validate() error {
	if r.KeepCount < 0 {
		return fmt.Errorf("--keep-count %d: want 0 (no limit) or more", r.KeepCount)
	}
	if r.KeepAge < 0 {
		return fmt.Errorf("--keep-age %s: want 0 (no limit) or more", r.KeepAge)
	}
	return nil
}

// List returns the completed backups of part under l, newest first (by
// completedAt). A folder without a manifest is not one; neither is one
// whose manifest does not parse (it is logged, and left alone).
func List(ctx context.Context, store ObjectStore, l Layout, part Part) ([]*Manifest, []error, error) {
	keys, err := store.List(ctx, l.Root())
	if err != nil {
		return nil, nil, err
	}
	var out []*Manifest
	var bad []error
	for _, key := range keys {
		id, p, ok := l.parseManifestKey(key)
		if !ok || p != part {
			continue
		}
		m, err := readManifest(ctx, store, l, id, p)
		if err != nil {
			if errors.Is(err, ErrNotFound) { // deleted since the listing
				continue
			}
			bad = append(bad, err)
			continue
		}
		out = append(out, m)
	}
	slices.SortStableFunc(out, func(a, b *Manifest) int { return b.CompletedAt.Compare(a.CompletedAt) })
	return out, bad, nil
}

// expired picks, from backups newest first, those retention deletes;
// keep is never among them.
func (r Retention) expired(backups []*Manifest, keep string, now time.Time) []*Manifest {
	var out []*Manifest
	kept := 1 // the new backup
	for _, m := range backups {
		if m.ID == keep {
			continue
		}
		switch {
		case r.KeepAge > 0 && m.CompletedAt.Before(now.Add(-r.KeepAge)):
			out = append(out, m)
		case r.KeepCount > 0 && kept >= r.KeepCount:
			out = append(out, m)
		default:
			kept++
		}
	}
	return out
}

func applyRetention(ctx context.Context, opts Options, taken *Manifest) ([]string, error) {
	deleted := []string{}
	if opts.Retention.KeepCount == 0 && opts.Retention.KeepAge == 0 {
		return deleted, nil
	}
	backups, bad, err := List(ctx, opts.Store, opts.Layout, opts.Part)
	if err != nil {
		return deleted, fmt.Errorf("listing backups: %w", err)
	}
	for _, e := range bad {
		opts.Log.Warn("not a backup retention counts or deletes", "err", e)
	}
	for _, m := range opts.Retention.expired(backups, taken.ID, opts.Now()) {
		if err := Delete(ctx, opts.Store, opts.Layout, m.ID, opts.Part); err != nil {
			return deleted, err
		}
		opts.Log.Info("deleted by retention", "id", m.ID, "part", opts.Part, "completedAt", m.CompletedAt)
		deleted = append(deleted, m.ID)
	}
	return deleted, nil
}

// Delete removes part of backup id: its manifest first, so that a deletion
// cut short leaves an incomplete backup, never one that looks complete and
// is not.
func Delete(ctx context.Context, store ObjectStore, l Layout, id string, part Part) error {
	folder := l.Folder(id, part)
	if err := store.Delete(ctx, folder+ManifestName); err != nil {
		return fmt.Errorf("deleting backup %s: %w", id, err)
	}
	keys, err := store.List(ctx, folder)
	if err != nil {
		return fmt.Errorf("deleting backup %s: %w", id, err)
	}
	for _, k := range keys {
		if err := store.Delete(ctx, k); err != nil {
			return fmt.Errorf("deleting backup %s: %w", id, err)
		}
	}
	return nil
}
