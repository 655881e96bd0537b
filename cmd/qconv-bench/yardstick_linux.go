//go:build linux && (amd64 || arm64)

package main

import (
	"errors"
	"os"
	"syscall"
	"unsafe"
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

// canMap reports whether the mapped write yardstick runs here.
const canMap = true

// mapFile maps the size bytes of f, shared and writable.
func mapFile(f *os.File, size int64) ([]byte, error) {
	return syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
}

// copyMapped copies src into dst, a piece of a mapping of the file, after
// faulting its pages in writable in one call (MADV_POPULATE_WRITE), as
// qconv convert does.
func copyMapped(dst, src []byte) {
	const madvPopulateWrite = 23
	page := uintptr(os.Getpagesize())
	p := uintptr(unsafe.Pointer(unsafe.SliceData(dst)))
	lo := p &^ (page - 1)
	syscall.Syscall(syscall.SYS_MADVISE, lo, p+uintptr(len(dst))-lo, madvPopulateWrite)
	copy(dst, src)
}

// unmapFile unmaps a mapping made by mapFile.
func unmapFile(b []byte) error { return syscall.Munmap(b) }
