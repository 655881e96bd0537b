//go:build linux && (amd64 || arm64)

package convert

import (
	"errors"
	"os"
	"syscall"
)

// allocate gives the new, empty file f its final size with its blocks
// allocated (fallocate), which makes the buffered writes that fill it
// about a third cheaper than into a sparse file and reports a full disk
// at once. File systems without fallocate get a sparse file (truncate).
func allocate(f *os.File, size int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = syscall.Fallocate(int(fd), 0, 0, size)
			if ferr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if errors.Is(ferr, syscall.EOPNOTSUPP) || errors.Is(ferr, syscall.ENOSYS) {
		return f.Truncate(size)
	}
	if ferr != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: ferr}
	}
	return nil
}

// syncFileRangeWrite is SYNC_FILE_RANGE_WRITE of sync_file_range(2).
const syncFileRangeWrite = 2

// startWriteback asks the kernel to start writing the dirty pages of f
// that lie entirely in [off, off+n) to disk, without waiting for them, so
// that the fsync that ends the file has less left to wait for. Pages
// shared with a neighbouring range that may still be written are left
// alone (writing them now would write them twice). It is advisory: errors
// are ignored, and the final fsync reports any failure to write.
func startWriteback(f *os.File, off, n int64) {
	const page = 4096
	lo := (off + page - 1) &^ (page - 1)
	hi := (off + n) &^ (page - 1)
	if hi <= lo {
		return
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		syscall.Syscall6(syscall.SYS_SYNC_FILE_RANGE, fd, uintptr(lo), uintptr(hi-lo), syncFileRangeWrite, 0, 0)
	})
}
