//go:build !linux || !(amd64 || arm64)

package convert

import "os"

// allocate gives the new, empty file f its final size (a sparse file;
// allocated is false).
func allocate(f *os.File, size int64) (allocated bool, err error) { return false, f.Truncate(size) }

// newFileWriter returns the writer of f: pwrite here (the shared mapping
// is a Linux optimisation).
func newFileWriter(f *os.File, size int64, allocated bool) fileWriter { return pwriter{f} }

// startWriteback does nothing here: early writeback (sync_file_range) is
// a Linux optimisation, and the final fsync writes everything anyway.
func startWriteback(f *os.File, off, n int64) {}
