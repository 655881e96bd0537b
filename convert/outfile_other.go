//go:build !linux || !(amd64 || arm64)

package convert

import "os"

// allocate gives the new, empty file f its final size (a sparse file).
func allocate(f *os.File, size int64) error { return f.Truncate(size) }

// startWriteback does nothing here: early writeback (sync_file_range) is
// a Linux optimisation, and the final fsync writes everything anyway.
func startWriteback(f *os.File, off, n int64) {}
