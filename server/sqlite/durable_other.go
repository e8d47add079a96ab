//go:build !linux

package sqlite

import (
	"io/fs"
	"os"
)

func fdatasync(f *os.File) error { return f.Sync() }

// linkCount is not known here: the WAL file is taken to be the one SQLite
// writes, as it is while a connection is open.
func linkCount(fs.FileInfo) uint64 { return 1 }
