//go:build !unix

package outdir

import "io/fs"

// ownedByUser reports whether fi belongs to the user; without Unix
// ownership every file does.
func ownedByUser(fs.FileInfo) bool { return true }

func owner(fs.FileInfo) string { return "unknown" }

// umask: new directories get 0755.
const umask fs.FileMode = 0o022

func writableByOthers(fs.FileInfo) bool { return false }
