//go:build !linux || !(amd64 || arm64)

package convert

import "os"

// allocate gives the new, empty file f its final size (a sparse file;
// allocated is false).
func allocate(f *os.File, size int64) (allocated bool, err error) { return false, f.Truncate(size) }

// newFileWriter brings the new, empty file f to size bytes and returns its
// writer: pwrite here (the shared mapping is a Linux optimisation).
func newFileWriter(f *os.File, size int64) (fileWriter, error) {
	if _, err := allocate(f, size); err != nil {
		return nil, err
	}
	return pwriter{f}, nil
}

// startWriteback does nothing here: early writeback (sync_file_range) is
// a Linux optimisation, and the final fsync writes everything anyway.
func startWriteback(f *os.File, off, n int64) {}
