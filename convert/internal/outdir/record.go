package outdir

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/qconv/qconv/internal/atomicfile"
	"github.com/qconv/qconv/internal/regular"
)

// Records of finished outputs.
//
// A record is a small file beside DST (Beside(dst, RecordSuffix)) that
// says what DST was made from, so that a rerun of the same command can
// tell that DST already holds its output. It names DST's device and inode
// numbers and is believed only while DST is that directory, is owned by
// the user and is not a link, and while DST has no unfinished install: a
// DST removed and made again, or replaced by other means, has no record.

// RecordSuffix ends the name of a record beside DST.
const RecordSuffix = ".qconv.json"

type record struct {
	Dst    [2]uint64       `json:"dst"`
	Record json.RawMessage `json:"record"`
}

// WriteRecord writes b (JSON) as the record of dst, which the work
// directory wd is about to become (Install keeps its inode).
func WriteRecord(dst string, wd *Dir, b []byte) error {
	path, err := Beside(dst, RecordSuffix)
	if err != nil {
		return err
	}
	rb, err := json.Marshal(record{Dst: fileID(wd.info), Record: b})
	if err != nil {
		return err
	}
	f, err := atomicfile.Create(path)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(append(rb, '\n')); err != nil {
		return err
	}
	return f.Commit()
}

// ReadRecord returns the record of dst, or an error wrapping
// fs.ErrNotExist if dst has no valid one.
func ReadRecord(dst string) ([]byte, error) {
	path, err := Beside(dst, RecordSuffix)
	if err != nil {
		return nil, err
	}
	none := fmt.Errorf("%s: no record: %w", path, fs.ErrNotExist)
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || !ownedByUser(fi) || fi.Size() > 64<<20 {
		return nil, none
	}
	di, err := os.Lstat(dst)
	if err != nil || !di.IsDir() || !ownedByUser(di) {
		return nil, none
	}
	if _, err := os.Lstat(filepath.Join(dst, journalName)); !errors.Is(err, fs.ErrNotExist) {
		return nil, none
	}
	b, err := regular.ReadFile(path, 64<<20)
	if err != nil {
		return nil, none
	}
	var r record
	if json.Unmarshal(b, &r) != nil || r.Dst != fileID(di) {
		return nil, none
	}
	return r.Record, nil
}

// RemoveRecord removes the record of dst, if any.
func RemoveRecord(dst string) error {
	path, err := Beside(dst, RecordSuffix)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
