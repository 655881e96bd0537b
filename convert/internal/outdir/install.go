package outdir

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/qconv/qconv/internal/atomicfile"
)

// Installing the output.
//
// The finished output is complete in its work directory. Install makes it
// DST so that DST never holds a set of files that looks complete and is
// not one run's output:
//
//  1. the install journal ".qconv-install.json" is written (and synced)
//     into the work directory: the name the old DST will be moved aside
//     to and its device/inode numbers;
//  2. an existing DST is renamed aside, to ".DST.qconv-old-XXXXXXXX";
//  3. the work directory is renamed to DST (one rename: DST goes from
//     "absent" to "the complete new output");
//  4. the files of the old DST that are not part of an output (not
//     weights, index or config.json, see replaced) and not in the new
//     output are moved into DST one by one (what --force keeps);
//  5. the old DST is removed;
//  6. the journal and the work directory's marker are removed and DST
//     gets the permissions a new directory gets under the user's umask.
//
// Interrupted anywhere (kill -9, power loss), DST is the old DST (before
// 3), absent with the old one beside it (between 2 and 3), or the new
// output with none, some or all of the old DST's other files (after 3).
// Recover, run by the next convert or dequant into DST, finishes the
// install from where it stopped: from the journal in the work directory
// (before 3) or in DST (after 3).

const journalName = ".qconv-install.json"

// oldInfix is in the name of an old DST moved aside during an install.
const oldInfix = ".qconv-old-"

type journal struct {
	Aside string    `json:"aside,omitempty"` // base name beside DST; "" if DST did not exist
	Old   [2]uint64 `json:"old,omitempty"`   // its device and inode numbers
}

// replaced matches the files of an old DST that a new output replaces
// even when it has none of that name, so that new weights never sit next
// to an old index, old shards or an old config (as transformers'
// save_pretrained cleans them), and qconv's own bookkeeping files.
var replaced = regexp.MustCompile(`^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$|^config\.json$|^\.qconv-`)

// InstallOptions controls Install and Recover.
type InstallOptions struct {
	// Force allows a non-empty DST: see Install.
	Force bool
	// Step, if not nil, is called before each step that changes the file
	// system ("aside", "install", "move NAME", "remove old", "clean up");
	// an error from it stops Install at once, without any cleanup, as a
	// crash at that point would. For tests.
	Step func(step string) error
}

func (o *InstallOptions) step(name string) error {
	if o.Step == nil {
		return nil
	}
	return o.Step(name)
}

// Install moves the finished output in the work directory wd to dst, as
// described above, and closes wd. A dst that does not exist, or is an
// empty directory, is replaced by wd. Otherwise, with o.Force, the old
// dst is replaced and its files other than weights, the index and
// config.json that the new output does not have are kept; without
// o.Force a non-empty dst is an error. A dst that is a symbolic link is
// always an error.
func Install(wd *Dir, dst string, o InstallOptions) error {
	defer wd.Close()
	var j journal
	b, err := wd.ReadFile(journalName, 4096)
	if err == nil {
		// An install that was interrupted before step 3: go on with it.
		if err := json.Unmarshal(b, &j); err != nil || !validAside(j.Aside, dst) {
			return fmt.Errorf("%s: invalid install journal", wd.Join(journalName))
		}
		if fi, lerr := os.Lstat(dst); lerr == nil && (j.Aside == "" || fileID(fi) != j.Old) {
			// DST appeared, or is not the one that was to be moved
			// aside: start the install again.
			j, err = journal{}, fs.ErrNotExist
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		fi, err := os.Lstat(dst)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return err
		case fi.Mode()&fs.ModeSymlink != 0:
			return symlinkDst(dst)
		case !fi.IsDir():
			return fmt.Errorf("destination %s exists and is not a directory", dst)
		default:
			ents, err := os.ReadDir(dst)
			if err != nil {
				return err
			}
			if len(ents) > 0 && !o.Force {
				return notEmpty(dst)
			}
			var r [4]byte
			rand.Read(r[:])
			j = journal{Aside: "." + filepath.Base(dst) + oldInfix + hex.EncodeToString(r[:]), Old: fileID(fi)}
		}
		b, _ := json.Marshal(j)
		if err := wd.WriteFileAtomic(journalName, append(b, '\n')); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	parent := filepath.Dir(dst)
	if j.Aside != "" {
		aside := filepath.Join(parent, j.Aside)
		if fi, err := os.Lstat(dst); err == nil && fileID(fi) == j.Old {
			if err := o.step("aside"); err != nil {
				return err
			}
			if err := os.Rename(dst, aside); err != nil {
				return err
			}
			if err := atomicfile.SyncDir(parent); err != nil {
				return err
			}
		}
	}
	if err := o.step("install"); err != nil {
		return err
	}
	if err := os.Rename(wd.Path(), dst); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(parent); err != nil {
		return err
	}
	wd.path = dst
	return finishInstall(wd, j, o)
}

// validAside reports whether name is a name Install gives an old dst.
func validAside(name, dst string) bool {
	return name == "" || (strings.HasPrefix(name, "."+filepath.Base(dst)+oldInfix) && !strings.ContainsAny(name, `/\`))
}

// finishInstall carries out steps 4 to 6 in d, the new DST.
func finishInstall(d *Dir, j journal, o InstallOptions) error {
	if j.Aside != "" {
		aside := filepath.Join(filepath.Dir(d.Path()), j.Aside)
		fi, err := os.Lstat(aside)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// Already removed (step 5 done).
		case err != nil:
			return err
		case !fi.IsDir() || fileID(fi) != j.Old:
			return fmt.Errorf("%s is not the old destination that the install journal recorded; left alone", aside)
		default:
			if err := mergeInto(aside, d.Path(), true, o); err != nil {
				return err
			}
			if err := o.step("remove old"); err != nil {
				return err
			}
			if err := os.RemoveAll(aside); err != nil {
				return err
			}
		}
	}
	if err := o.step("clean up"); err != nil {
		return err
	}
	if err := os.Chmod(d.Path(), 0o777&^umask); err != nil {
		return err
	}
	if err := d.Remove(journalName); err != nil {
		return err
	}
	if err := d.Remove(MarkerName); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(d.Path()))
}

// mergeInto moves the entries of directory from that to does not have
// into to, recursing into directories both have; at the top level
// (top), the files that an output replaces are left out.
func mergeInto(from, to string, top bool, o InstallOptions) error {
	ents, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if top && replaced.MatchString(e.Name()) {
			continue
		}
		src, dst := filepath.Join(from, e.Name()), filepath.Join(to, e.Name())
		fi, err := os.Lstat(dst)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := o.step("move " + e.Name()); err != nil {
				return err
			}
			if err := os.Rename(src, dst); err != nil {
				return err
			}
		case err != nil:
			return err
		case fi.IsDir() && e.IsDir():
			if err := mergeInto(src, dst, false, o); err != nil {
				return err
			}
		}
	}
	return atomicfile.SyncDir(to)
}

// Recover finishes an install into dst that was interrupted (see above),
// if there is one: work is the path of the work directory that may hold
// a journal ("" if none is at a fixed name), kind its kind. It reports
// whether it finished one.
func Recover(dst, work, kind string, o InstallOptions) (bool, error) {
	// After step 3: DST is our work directory, with its journal.
	if d, err := openInstalled(dst, kind); err == nil {
		b, err := d.ReadFile(journalName, 4096)
		var j journal
		if err == nil {
			if json.Unmarshal(b, &j) != nil || !validAside(j.Aside, dst) {
				d.Close()
				return false, fmt.Errorf("%s: invalid install journal", d.Join(journalName))
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			d.Close()
			return false, err
		}
		defer d.Close()
		return true, finishInstall(d, j, o)
	}
	// Before step 3: the work directory has a journal.
	if work == "" {
		return false, nil
	}
	d, err := OpenDir(work, kind)
	if err != nil {
		return false, nil // reported, if it matters, when it is opened
	}
	if _, err := d.Lstat(journalName); err != nil {
		d.Close()
		return false, nil
	}
	return true, Install(d, dst, o)
}

// openInstalled opens dst if it is a directory that Install made from a
// work directory of the given kind and did not finish: owned by the user,
// not a link, with a valid marker. (Unlike OpenDir it may be writable by
// group: step 6 sets the final permissions before it removes the journal
// and the marker.)
func openInstalled(dst, kind string) (*Dir, error) {
	fi, err := os.Lstat(dst)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() || !ownedByUser(fi) {
		return nil, ErrNotOurs
	}
	if mi, err := os.Lstat(filepath.Join(dst, MarkerName)); err != nil || !mi.Mode().IsRegular() {
		return nil, ErrNotOurs
	}
	return openDir(dst, kind, false)
}

// CleanTemps deals with the work directories of the given kind that
// MkTemp made beside dst for runs that ended without cleaning up (killed):
// one holding an install journal is complete and is installed (Install,
// which finishes the interrupted install), the others are removed. A
// directory whose run still holds its lock (Dir.Lock) is left alone, as
// is anything at those names that qconv did not make. It reports whether
// it finished an install.
func CleanTemps(dst, kind string, o InstallOptions) (bool, error) {
	base, err := Beside(dst, TempInfix)
	if err != nil {
		return false, err
	}
	ents, err := os.ReadDir(filepath.Dir(base))
	if err != nil {
		return false, nil
	}
	finished := false
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), filepath.Base(base)) || strings.Contains(e.Name(), ".tmp-") {
			continue
		}
		d, err := OpenDir(filepath.Join(filepath.Dir(base), e.Name()), kind)
		if err != nil {
			continue
		}
		if err := d.Lock(); err != nil {
			d.Close()
			continue
		}
		if _, err := d.Lstat(journalName); err == nil && !finished {
			if err := Install(d, dst, o); err != nil {
				return false, err
			}
			finished = true
			continue
		}
		if err := d.RemoveAll(); err != nil {
			return finished, err
		}
	}
	return finished, nil
}
