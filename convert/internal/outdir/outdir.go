package outdir

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/qconv/qconv/formats/checkpoint"
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
// ".qconv-tmp-XXXXXXXX", and the parent directory if needed. It is locked
// (Dir.Lock) until it is closed, so that CleanTemps leaves it alone.
func MkTemp(dst, kind string) (*Dir, error) {
	base, err := Beside(dst, TempInfix)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(base), 0o777); err != nil {
		return nil, err
	}
	for range 100 {
		d, err := createDir(base+strconv.FormatUint(rand.Uint64()&(1<<40-1), 36), kind, true)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return d, err
	}
	return nil, fmt.Errorf("cannot create a temporary directory beside %s", dst)
}

// TempInfix ends the name of a MkTemp directory, before its random part.
const TempInfix = ".qconv-tmp-"
