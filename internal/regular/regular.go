// Package regular opens input files for reading only if they are regular
// files (or symbolic links to one), without blocking: a FIFO in place of a
// shard or a config.json would block open(2) until a writer appears, and a
// device such as /dev/zero would be read forever.
//
// It is for every file qconv reads as input. It is not a sandbox: the
// file is opened by its path, following symbolic links.
package regular

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// ErrNotRegular is wrapped by the errors of Open for a path that is not a
// regular file.
var ErrNotRegular = errors.New("not a regular file")

// Error is the error for a path that is not a regular file.
type Error struct {
	Path string
	Mode fs.FileMode
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: not a regular file but %s", e.Path, Describe(e.Mode))
}

// Unwrap returns ErrNotRegular.
func (e *Error) Unwrap() error { return ErrNotRegular }

// Describe names the type of a file mode: "a directory", "a named pipe
// (FIFO)", ...
func Describe(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsRegular():
		return "a regular file"
	}
	return "not a file"
}

// Open opens path for reading if it is a regular file, following symbolic
// links, and returns it with its FileInfo. Anything else is an *Error
// (wrapping ErrNotRegular) and is not left open. The check is made before
// the open (stat) and again on the open file (fstat), and the open itself
// does not block (O_NONBLOCK on Unix), so a file swapped for a FIFO in
// between cannot hang the caller either.
func Open(path string) (*os.File, fs.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, &Error{Path: path, Mode: fi.Mode()}
	}
	f, err := os.OpenFile(path, os.O_RDONLY|nonblock, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err = f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, &Error{Path: path, Mode: fi.Mode()}
	}
	return f, fi, nil
}

// ReadFile returns the contents of the regular file path, at most limit
// bytes; a larger file is an error.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, _, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}
