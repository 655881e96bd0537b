package outdir

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Work directories.
//
// Output is built in a work directory beside the destination (Beside):
// convert's ".DST.qconv-partial", which a rerun or another part of a
// partitioned run reopens, and dequant's ".DST.qconv-tmp-*". Whoever can
// write to DST's parent directory can put something at those names first:
// a directory of planted symbolic links, a symbolic link to another
// directory, files with forged done markers. So a work directory is trusted
// only if qconv made it:
//
//   - CreateDir makes it with mkdir, which fails if anything exists at the
//     name, with mode 0700, and writes the marker file ".qconv-work"
//     (created with O_EXCL) holding a random identity;
//   - OpenDir reopens one only if the name is a directory (not a symbolic
//     link), owned by the user running qconv, not writable by group or
//     others, and holds a marker that is a regular file owned by the user;
//     anything else is refused with ErrNotOurs, never reused or written
//     through;
//   - every file inside is reached through the directory's file descriptor
//     (os.Root: openat on Unix, which cannot leave the directory) and
//     never through a symbolic link: files are created with O_EXCL (which
//     does not follow links) after removing what was at the name, and
//     opened for reading only after Lstat shows a regular file, which the
//     opened file must then be (os.SameFile).
//
// Install restores the permissions the user's umask gives a new directory
// before the work directory becomes DST.

// MarkerName is the file that identifies a work directory made by qconv.
const MarkerName = ".qconv-work"

// ErrNotOurs is returned (wrapped, with the reason) by OpenDir for a path
// that exists but is not a work directory made by qconv for this user.
var ErrNotOurs = errors.New("not a work directory made by qconv for this user")

// A Dir is an open work directory.
type Dir struct {
	path string
	root *os.Root
	info fs.FileInfo // of the directory when it was opened
	id   string
	lock *os.File // the marker, locked (Lock)
}

// errLocked is returned by Lock when another process holds the lock.
var errLocked = errors.New("in use by another process")

// Lock takes an exclusive lock on the directory (on its marker, with
// flock(2)) until Close, without waiting: it fails if another process
// holds it. A run that may leave its work directory behind when killed
// holds the lock, so that a later run can tell an abandoned directory
// (see CleanTemps) from one in use.
func (d *Dir) Lock() error {
	f, err := d.Open(MarkerName)
	if err != nil {
		return err
	}
	if err := flock(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", d.path, err)
	}
	d.lock = f
	return nil
}

type marker struct {
	Magic string `json:"magic"`
	ID    string `json:"id"`
	Kind  string `json:"kind"`
}

const markerMagic = "qconv work directory"

// CreateDir creates the work directory path, which must not exist, and
// its marker; kind says what it is for ("convert", "dequant"). The
// directory appears with its marker or not at all: it is made under a
// temporary name and renamed into place, which fails (with an error
// wrapping fs.ErrExist) if another process made path first.
func CreateDir(path, kind string) (*Dir, error) { return createDir(path, kind, false) }

// createDir is CreateDir; with lock, the directory is locked (Lock)
// before it appears at path.
func createDir(path, kind string, lock bool) (*Dir, error) {
	var r [8]byte
	rand.Read(r[:])
	tmp := path + ".tmp-" + hex.EncodeToString(r[:])
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, err
	}
	d, err := openRoot(tmp)
	if err != nil {
		os.Remove(tmp)
		return nil, err
	}
	var id [16]byte
	rand.Read(id[:])
	d.id = hex.EncodeToString(id[:])
	b, _ := json.Marshal(marker{Magic: markerMagic, ID: d.id, Kind: kind})
	f, err := d.root.OpenFile(MarkerName, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		_, err = f.Write(append(b, '\n'))
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = d.Sync()
	}
	if err == nil && lock {
		err = d.Lock()
	}
	if err == nil {
		if _, lerr := os.Lstat(path); lerr == nil {
			err = &fs.PathError{Op: "mkdir", Path: path, Err: fs.ErrExist}
		} else if err = os.Rename(tmp, path); err != nil && (errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, fs.ErrExist)) {
			err = &fs.PathError{Op: "mkdir", Path: path, Err: fs.ErrExist}
		}
	}
	if err != nil {
		d.RemoveAll()
		return nil, err
	}
	d.path = path
	if fi, err := os.Lstat(path); err != nil || !os.SameFile(fi, d.info) {
		d.Close()
		return nil, fmt.Errorf("%s was replaced while it was created", path)
	}
	return d, nil
}

// OpenDir opens the existing work directory path of the given kind. It
// returns an error wrapping fs.ErrNotExist if there is none, and one
// wrapping ErrNotOurs, with the reason, if what is there is not a work
// directory qconv made for this user.
func OpenDir(path, kind string) (*Dir, error) { return openDir(path, kind, true) }

// openDir is OpenDir; strict also refuses a directory writable by group
// or others.
func openDir(path, kind string, strict bool) (*Dir, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	notOurs := func(why string) error {
		return fmt.Errorf("%q %s: %w; qconv does not reuse or write into it (remove it if it is yours, or choose another destination)", path, why, ErrNotOurs)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return nil, notOurs("is a symbolic link")
	case !fi.IsDir():
		return nil, notOurs("is not a directory")
	case !ownedByUser(fi):
		return nil, notOurs(fmt.Sprintf("is owned by another user (%s)", owner(fi)))
	case strict && writableByOthers(fi):
		return nil, notOurs(fmt.Sprintf("is writable by others (mode %v)", fi.Mode().Perm()))
	}
	d, err := openRoot(path)
	if err != nil {
		return nil, err
	}
	if !os.SameFile(fi, d.info) {
		d.Close()
		return nil, notOurs("was replaced while it was opened")
	}
	mi, err := d.root.Lstat(MarkerName)
	if err != nil || !mi.Mode().IsRegular() || !ownedByUser(mi) || mi.Size() > 4096 {
		d.Close()
		return nil, notOurs("has no marker file " + MarkerName + " written by qconv")
	}
	b, err := d.ReadFile(MarkerName, 4096)
	var m marker
	if err != nil || json.Unmarshal(b, &m) != nil || m.Magic != markerMagic || m.ID == "" {
		d.Close()
		return nil, notOurs("has no valid marker file " + MarkerName)
	}
	if m.Kind != kind {
		d.Close()
		return nil, notOurs(fmt.Sprintf("is a %s work directory, not a %s one", m.Kind, kind))
	}
	d.id = m.ID
	return d, nil
}

func openRoot(path string) (*Dir, error) {
	root, err := os.OpenRoot(path)
	if err != nil {
		return nil, err
	}
	info, err := root.Stat(".")
	if err != nil {
		root.Close()
		return nil, err
	}
	return &Dir{path: path, root: root, info: info}, nil
}

// Path returns the directory's path.
func (d *Dir) Path() string { return d.path }

// ID returns the random identity recorded in the directory's marker.
func (d *Dir) ID() string { return d.id }

// Close closes the directory (and releases its lock).
func (d *Dir) Close() error {
	if d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
	return d.root.Close()
}

// Join returns the path of name (slash-separated, relative) in the
// directory, for messages.
func (d *Dir) Join(name string) string { return filepath.Join(d.path, filepath.FromSlash(name)) }

// check rejects names that are not plain relative paths.
func check(name string) error {
	if name == "" || !fs.ValidPath(name) || name == "." {
		return fmt.Errorf("invalid file name %q in work directory", name)
	}
	return nil
}

// Create creates the file name (slash-separated, relative; its
// directories are created as needed) for reading and writing, replacing
// whatever was at that name: it is removed first and the new file is
// created with O_EXCL, which never follows a symbolic link.
func (d *Dir) Create(name string) (*os.File, error) {
	if err := check(name); err != nil {
		return nil, err
	}
	if dir := pathDir(name); dir != "" {
		if err := d.mkdirAll(dir); err != nil {
			return nil, err
		}
	}
	if err := d.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	f, err := d.root.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// mkdirAll creates directory dir and its parents, refusing any that is
// a symbolic link.
func (d *Dir) mkdirAll(dir string) error {
	parts := strings.Split(dir, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		fi, err := d.root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := d.root.Mkdir(p, 0o777); err != nil {
				return err
			}
		case err != nil:
			return err
		case !fi.IsDir():
			return fmt.Errorf("%s is not a directory (a symbolic link or file is in the way)", d.Join(p))
		}
	}
	return nil
}

func pathDir(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[:i]
	}
	return ""
}

// Open opens the regular file name for reading. A symbolic link, FIFO,
// device or directory at that name is an error, and nothing is opened
// through a link.
func (d *Dir) Open(name string) (*os.File, error) {
	if err := check(name); err != nil {
		return nil, err
	}
	fi, err := d.root.Lstat(name)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%v)", d.Join(name), fi.Mode().Type())
	}
	f, err := d.root.Open(name)
	if err != nil {
		return nil, err
	}
	if got, err := f.Stat(); err != nil || !os.SameFile(fi, got) {
		f.Close()
		return nil, fmt.Errorf("%s was replaced while it was opened", d.Join(name))
	}
	return f, nil
}

// ReadFile returns the contents of the regular file name, at most limit
// bytes (more is an error).
func (d *Dir) ReadFile(name string, limit int64) ([]byte, error) {
	f, err := d.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", d.Join(name), limit)
	}
	return b, nil
}

// Lstat returns the FileInfo of name without following a link.
func (d *Dir) Lstat(name string) (fs.FileInfo, error) { return d.root.Lstat(name) }

// WriteFile writes b to a new file name (replacing what was there, as
// Create) and syncs it.
func (d *Dir) WriteFile(name string, b []byte) error {
	f, err := d.Create(name)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", d.Join(name), err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteFileAtomic writes b to name so that readers see the old file or
// the new one: a temporary file is written and synced, then renamed over
// name, and the directory is synced.
func (d *Dir) WriteFileAtomic(name string, b []byte) error {
	tmp, err := d.writeTemp(name, b)
	if err != nil {
		return err
	}
	if err := d.root.Rename(tmp, name); err != nil {
		d.root.Remove(tmp)
		return err
	}
	return d.Sync()
}

// CreateOnce writes b to name unless name exists already, in which case
// it leaves it alone and returns nil. The file appears whole or not at
// all: it is written and synced under a temporary name, then hard-linked
// into place, which fails if name exists (a rename would replace it).
func (d *Dir) CreateOnce(name string, b []byte) error {
	tmp, err := d.writeTemp(name, b)
	if err != nil {
		return err
	}
	defer d.root.Remove(tmp)
	if err := d.root.Link(tmp, name); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return d.Sync()
}

func (d *Dir) writeTemp(name string, b []byte) (string, error) {
	var r [8]byte
	rand.Read(r[:])
	tmp := pathDir(name)
	if tmp != "" {
		tmp += "/"
	}
	tmp += "." + filepath.Base(name) + ".tmp-" + hex.EncodeToString(r[:])
	if err := d.WriteFile(tmp, b); err != nil {
		d.root.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// Remove removes name; a name that does not exist is not an error.
func (d *Dir) Remove(name string) error {
	if err := d.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Names returns the names of the directory's entries.
func (d *Dir) Names() ([]string, error) {
	f, err := d.root.Open(".")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// RemoveAll removes the directory and everything in it (through
// os.RemoveAll, which does not follow symbolic links), and closes it. It
// removes nothing if the path no longer names this directory.
func (d *Dir) RemoveAll() error {
	defer d.Close()
	fi, err := os.Lstat(d.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !os.SameFile(fi, d.info) {
		return fmt.Errorf("%s was replaced by another directory; not removed", d.path)
	}
	return os.RemoveAll(d.path)
}

// Sync fsyncs the directory, so that creations and renames in it are
// durable. File systems that cannot sync a directory are not an error.
func (d *Dir) Sync() error {
	f, err := d.root.Open(".")
	if err != nil {
		return err
	}
	err = f.Sync()
	if errors.Is(err, os.ErrInvalid) {
		err = nil
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
