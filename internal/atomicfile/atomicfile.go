// Package atomicfile writes a file so that readers see either the old
// contents or the complete new contents, never a partial file: data goes
// to a temporary file in the same directory, which Commit renames over the
// target after syncing it to disk.
//
// It is for output files of qconv (converted checkpoints, index files). It
// is not a lock: two writers of the same path race, and the last Commit
// wins.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
)

// A File is a temporary file that becomes path on Commit. Write to it
// through the embedded *os.File (Write, WriteAt, Seek, Truncate...); do
// not Close or rename it directly.
type File struct {
	*os.File
	path string
	done bool // committed or aborted
}

// Create creates a temporary file ".<base>.tmp-<random>" next to path,
// with mode 0666 before umask (the mode os.Create gives). The directory
// must exist.
func Create(path string) (*File, error) {
	dir, base := filepath.Split(path)
	if base == "" {
		return nil, fmt.Errorf("atomicfile: %q names a directory", path)
	}
	for range 100 {
		tmp := filepath.Join(dir, "."+base+".tmp-"+strconv.FormatUint(rand.Uint64()&(1<<40-1), 36))
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("atomicfile: %w", err)
		}
		return &File{File: f, path: path}, nil
	}
	return nil, fmt.Errorf("atomicfile: cannot create a temporary file for %s", path)
}

// Path returns the path the file will have after Commit. (Name returns
// the temporary file's path.)
func (f *File) Path() string { return f.path }

// Commit syncs the temporary file, closes it, renames it to the target
// path (replacing any file there) and syncs the directory, so the new
// file survives a crash. On failure the temporary file is removed and the
// target is left as it was, unless the rename itself succeeded.
func (f *File) Commit() error {
	if f.done {
		return fmt.Errorf("atomicfile: %s: Commit after Commit or Abort", f.path)
	}
	f.done = true
	tmp := f.Name()
	err := f.Sync()
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, f.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("atomicfile: %s: %w", f.path, err)
	}
	if err := SyncDir(filepath.Dir(f.path)); err != nil {
		return fmt.Errorf("atomicfile: %s: syncing directory: %w", f.path, err)
	}
	return nil
}

// Abort closes and removes the temporary file, leaving the target as it
// was. After Commit it does nothing and returns nil, so that
// "defer f.Abort()" is a safe cleanup for every error path.
func (f *File) Abort() error {
	if f.done {
		return nil
	}
	f.done = true
	f.File.Close()
	if err := os.Remove(f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("atomicfile: %w", err)
	}
	return nil
}

// Close is Abort: a File is finished with Commit; closing it any other way
// discards it.
func (f *File) Close() error { return f.Abort() }

// SyncDir fsyncs directory dir, so that creations and renames in it are
// durable. File systems that cannot sync a directory (os.ErrInvalid) are
// not an error.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if errors.Is(err, os.ErrInvalid) {
		err = nil
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
