//go:build !unix

package outdir

import (
	"io/fs"
	"os"
)

// ownedByUser reports whether fi belongs to the user; without Unix
// ownership every file does.
func ownedByUser(fs.FileInfo) bool { return true }

func owner(fs.FileInfo) string { return "unknown" }

// umask: new directories get 0755.
const umask fs.FileMode = 0o022

func writableByOthers(fs.FileInfo) bool { return false }

// fileID returns zeros: identities are not compared without Unix inodes.
func fileID(fs.FileInfo) [2]uint64 { return [2]uint64{} }

// flock: without Unix locks, every work directory counts as in use.
func flock(*os.File) error { return errLocked }
