//go:build unix

package outdir

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// ownedByUser reports whether fi belongs to the effective user.
func ownedByUser(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}

// owner describes fi's owner for a message.
func owner(fi fs.FileInfo) string {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("uid %d", st.Uid)
	}
	return "unknown"
}

// umask is the process's file mode creation mask, read once at start
// (setting it back at once, before any other goroutine creates files).
var umask = func() fs.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return fs.FileMode(m)
}()

// writableByOthers reports whether group or others may write to fi.
func writableByOthers(fi fs.FileInfo) bool { return fi.Mode().Perm()&0o022 != 0 }

// fileID returns the device and inode numbers of fi.
func fileID(fi fs.FileInfo) [2]uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return [2]uint64{uint64(st.Dev), uint64(st.Ino)}
	}
	return [2]uint64{}
}

// flock takes an exclusive lock on f without waiting; errLocked if
// another process holds one.
func flock(f *os.File) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == syscall.EWOULDBLOCK {
		return errLocked
	}
	return err
}
