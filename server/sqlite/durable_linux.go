package sqlite

import (
	"io/fs"
	"os"
	"syscall"
)

// fdatasync flushes f's data, and its size when that changed, without the
// rest of its metadata: what SQLite's own sync of the WAL does on Linux.
func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

func linkCount(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}
