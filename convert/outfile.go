package convert

import (
	"io"
	"os"
)

// A fileWriter writes an output file that newFileWriter has brought to its
// size. Workers write disjoint ranges of it concurrently. On a Linux tmpfs
// the writes go through a shared memory mapping of the file (see
// mappedFile), elsewhere, and where the file cannot be mapped, through
// pwrite.
type fileWriter interface {
	io.WriterAt
	// grow brings the file to size bytes, more than before (allocating
	// its blocks where the file system can, as newFileWriter does).
	// Writes may run meanwhile.
	grow(size int64) error
	// close ends the writer (unmapping the file); no write may run
	// concurrently or follow. The file stays open: its data is in the
	// page cache and the caller's fsync writes it.
	close() error
}

// pwriter writes with pwrite (os.File.WriteAt). Concurrent buffered
// writes to one file take its inode lock in turn, which is what the
// mapping avoids.
type pwriter struct{ *os.File }

func (w pwriter) grow(size int64) error {
	_, err := allocate(w.File, size)
	return err
}

func (pwriter) close() error { return nil }
