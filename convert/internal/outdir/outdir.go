package outdir

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/internal/atomicfile"
)

// Check refuses a destination that is empty, inside the source checkpoint
// (or is its directory), contains it, or exists and is not a directory;
// and, unless force, one that is a directory holding files.
func Check(ck *checkpoint.Checkpoint, dst string, force bool) error {
	if dst == "" {
		return errors.New("empty destination")
	}
	d, err := canonical(dst)
	if err != nil {
		return err
	}
	srcDir, err := canonical(ck.Dir)
	if err != nil {
		return err
	}
	if ck.Layout != checkpoint.LayoutFile && within(d, srcDir) {
		return fmt.Errorf("destination %s overlaps the source %s: it is inside the source", dst, ck.Path)
	}
	if within(srcDir, d) {
		return fmt.Errorf("destination %s overlaps the source %s: the source is inside the destination", dst, ck.Path)
	}
	fi, err := os.Lstat(dst)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSymlink != 0:
		return symlinkDst(dst)
	case !fi.IsDir():
		return fmt.Errorf("destination %s exists and is not a directory", dst)
	}
	ents, err := os.ReadDir(dst)
	if err != nil {
		return err
	}
	if len(ents) > 0 && !force {
		return notEmpty(dst)
	}
	return nil
}

// symlinkDst is the error for a destination that is a symbolic link:
// qconv never writes through one, nor replaces it.
func symlinkDst(dst string) error {
	return fmt.Errorf("destination %q is a symbolic link; qconv does not write through links or replace them (give the directory it points to)", dst)
}

func notEmpty(dst string) error {
	return fmt.Errorf("destination %s is not empty (use --force to replace its files)", dst)
}

// canonical returns the absolute, symlink-resolved form of path; the part
// that does not exist yet is appended as given.
func canonical(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	var rest []string
	p := abs
	for {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(append([]string{r}, rest...)...), nil
		}
		parent := filepath.Dir(p)
		if parent == p {
			return abs, nil
		}
		rest = append([]string{filepath.Base(p)}, rest...)
		p = parent
	}
}

// within reports whether path is dir or inside it (both canonical).
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// Beside returns the path of the hidden directory "."+name+suffix next to
// dst (whose last element is name), in which an output is built so that
// the final rename stays on one file system.
func Beside(dst, suffix string) (string, error) {
	abs, err := filepath.Abs(dst)
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(abs), "."+filepath.Base(abs)+suffix), nil
}

// MkTemp creates a new work directory (CreateDir) of the given kind
// beside dst (see Beside), with a random name ending
// ".qconv-tmp-XXXXXXXX", and the parent directory if needed.
func MkTemp(dst, kind string) (*Dir, error) {
	base, err := Beside(dst, TempInfix)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(base), 0o777); err != nil {
		return nil, err
	}
	for range 100 {
		d, err := CreateDir(base+strconv.FormatUint(rand.Uint64()&(1<<40-1), 36), kind)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return d, err
	}
	return nil, fmt.Errorf("cannot create a temporary directory beside %s", dst)
}

// TempInfix ends the name of a MkTemp directory, before its random part.
const TempInfix = ".qconv-tmp-"

// staleWeights matches weight files that a new output replaces, as
// transformers' save_pretrained cleans them.
var staleWeights = regexp.MustCompile(`^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$`)

// Install moves the finished output in work to dst and syncs the
// directories. A dst that does not exist, or is an empty directory, is
// replaced by work. Otherwise, with force, the files of work replace those
// of the same names in dst, one by one, after the weight files of dst that
// are not among outputs (the new weight files and index: stale shards of
// an earlier output, or its index) have been removed, so that dst never
// holds a mix of old and new shards with a matching index; work is then
// removed. Without force a non-empty dst is an error.
func Install(wd *Dir, dst string, force bool, outputs []string) error {
	work := wd.Path()
	if err := wd.Remove(MarkerName); err != nil {
		return err
	}
	if err := os.Chmod(work, 0o777&^umask); err != nil {
		return err
	}
	fi, err := os.Lstat(dst)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Rename(work, dst); err != nil {
			return err
		}
		return atomicfile.SyncDir(filepath.Dir(dst))
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return symlinkDst(dst)
	}
	if !fi.IsDir() {
		return fmt.Errorf("destination %s exists and is not a directory", dst)
	}
	ents, err := os.ReadDir(dst)
	if err != nil {
		return err
	}
	if len(ents) == 0 {
		if err := os.Remove(dst); err != nil {
			return err
		}
		if err := os.Rename(work, dst); err != nil {
			return err
		}
		return atomicfile.SyncDir(filepath.Dir(dst))
	}
	if !force {
		return notEmpty(dst)
	}
	keep := map[string]bool{}
	for _, f := range outputs {
		keep[f] = true
	}
	for _, e := range ents {
		if !e.IsDir() && staleWeights.MatchString(e.Name()) && !keep[e.Name()] {
			if err := os.Remove(filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := moveTree(work, dst); err != nil {
		return err
	}
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	return atomicfile.SyncDir(dst)
}

// moveTree renames every file of the tree src into the same place under
// dst, replacing files there and creating directories as needed.
func moveTree(src, dst string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		from, to := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		if e.IsDir() {
			if err := os.MkdirAll(to, 0o777); err != nil {
				return err
			}
			if err := moveTree(from, to); err != nil {
				return err
			}
			continue
		}
		if err := os.Rename(from, to); err != nil {
			return err
		}
	}
	return nil
}
