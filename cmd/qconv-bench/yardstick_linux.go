//go:build linux && (amd64 || arm64)

package main

import (
	"errors"
	"os"
	"syscall"
)

// allocate gives f its final size with its blocks allocated, as qconv
// convert does with its output files (truncate where fallocate is not
// supported).
func allocate(f *os.File, size int64) error {
	err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return f.Truncate(size)
	}
	return err
}

// startWriteback asks the kernel to start writing back [off, off+n) of f,
// as qconv convert does after each job (sync_file_range, advisory).
func startWriteback(f *os.File, off, n int64) {
	const syncFileRangeWrite = 2
	syscall.Syscall6(syscall.SYS_SYNC_FILE_RANGE, f.Fd(), uintptr(off), uintptr(n), syncFileRangeWrite, 0, 0)
}
