package backup

import (
	"context"
	"errors"
	"io"
)

// ErrNotFound is what an ObjectStore's Get returns, wrapped, for a key it
// does not hold.
var ErrNotFound = errors.New("object not found")

// ObjectStore is the bucket backups are kept in: server/backup/s3 implements
// it on any S3-compatible service. Keys are slash-separated paths.
type ObjectStore interface {
	// Put stores what r holds under key, replacing any object there; size
	// is r's length, or -1 when unknown.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Get opens the object at key; a missing one is an ErrNotFound.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// List returns every key under prefix (a folder, ending in /), at any
	// depth, in lexical order.
	List(ctx context.Context, prefix string) ([]string, error)
	// Delete removes the object at key; a missing one is no error.
	Delete(ctx context.Context, key string) error
	// String names the store for logs, e.g. s3://bucket at https://host.
	String() string
}
