package audit

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// CheckpointDirs maps files, as a pre-commit hook or git diff --name-only
// lists them, to the checkpoint directories to audit, each once.
//
// A file named *.safetensors, *.safetensors.index.json, config.json or
// adapter_config.json stands for the directory that holds it; such a
// file need not exist, so that a shard deleted by a commit still names the
// directory whose index it breaks. Of those directories, the ones that
// hold a checkpoint (a .safetensors file or model.safetensors.index.json,
// what [Run] needs) are returned, and also any that cannot be read, so
// that Run reports why. A path that is a directory stands for itself and
// is always returned. dirs are cleaned and sorted, without duplicates.
//
// Every other path is returned in ignored, in the order given: files of
// other kinds (README.md, tokenizer.json) and member names in directories
// that hold no checkpoint (the config.json of some other tool) or no
// longer exist.
func CheckpointDirs(paths []string) (dirs, ignored []string) {
	verdict := map[string]bool{} // directory -> audit it
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			d := filepath.Clean(p)
			verdict[d] = true
			continue
		}
		if !isCheckpointMember(filepath.Base(p)) {
			ignored = append(ignored, p)
			continue
		}
		d := filepath.Dir(p) // cleaned
		ok, seen := verdict[d]
		if !seen {
			ok = holdsCheckpoint(d)
			verdict[d] = ok
		}
		if !ok {
			ignored = append(ignored, p)
		}
	}
	for d, ok := range verdict {
		if ok {
			dirs = append(dirs, d)
		}
	}
	slices.Sort(dirs)
	return dirs, ignored
}

// isCheckpointMember reports whether a file of this name is part of a
// checkpoint that an audit reads.
func isCheckpointMember(name string) bool {
	return strings.HasSuffix(name, ".safetensors") ||
		strings.HasSuffix(name, ".safetensors.index.json") ||
		name == ConfigName || name == adapterConfigName
}

// holdsCheckpoint reports whether dir holds what [Run] audits in a
// directory (a regular .safetensors file or the index), or cannot be read
// for another reason than not existing.
func holdsCheckpoint(dir string) bool {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil {
		return true // let Run report it
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".safetensors") && name != IndexName {
			continue
		}
		// Stat follows symlinks, as load does (Hub caches link to blobs).
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return false
}
