package convert

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/qconv/qconv/convert/internal/outdir"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/internal/regular"
)

// doneRecord is what the record beside a finished dst holds (see
// outdir.WriteRecord): everything a rerun needs to tell that dst already
// holds its output.
type doneRecord struct {
	Version  int               `json:"version"`
	Settings map[string]string `json:"settings"`
	Files    []recordFile      `json:"files"`
	Index    string            `json:"index,omitempty"`
	// Config is the hex SHA-256 of the output config.json ("" if none).
	Config string `json:"config,omitempty"`
	// Aux are the copied files: name, size and modification time of the
	// source file.
	Aux []auxState `json:"aux,omitempty"`
}

type recordFile struct {
	Name string `json:"name"`
	Key  string `json:"key"`
	Size int64  `json:"size"`
}

type auxState struct {
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`
}

// expectedRecord returns the record a conversion of p would leave, sizes
// aside (zero).
func expectedRecord(p *Plan, in *source, st *planState, keys []string) (*doneRecord, error) {
	r := &doneRecord{Version: 1, Settings: st.Settings}
	for i, f := range p.Files {
		r.Files = append(r.Files, recordFile{Name: f.Name, Key: keys[i]})
	}
	if p.Sharded() {
		r.Index = checkpoint.IndexFileName
	}
	if in.config != nil {
		sum := sha256.Sum256(p.ConfigJSON(in.config))
		r.Config = hex.EncodeToString(sum[:])
	}
	copied, _, err := outdir.AuxFiles(in.ck)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	for _, name := range copied {
		fi, err := os.Stat(filepath.Join(in.ck.Dir, filepath.FromSlash(name)))
		if err != nil {
			return nil, fmt.Errorf("convert: %w", err)
		}
		r.Aux = append(r.Aux, auxState{Name: name, Size: fi.Size(), ModTime: fi.ModTime().UnixNano()})
	}
	return r, nil
}

// errOtherConversion is returned (wrapped) by checkRecord when dst holds
// the output of a conversion with other settings.
var errOtherConversion = errors.New("holds the output of a conversion with other arguments")

// checkRecord compares dst's record with want. It reports whether dst
// already holds this conversion: same settings, same file keys (so the
// same source data), its files present at their recorded sizes and its
// config.json as expected. It returns sameSettings true when dst holds a
// conversion with the same settings (complete or from an older source),
// and an error wrapping errOtherConversion for other settings. No record
// (or an invalid one) is neither.
func checkRecord(dst string, want *doneRecord) (complete, sameSettings bool, err error) {
	b, err := outdir.ReadRecord(dst)
	if err != nil {
		return false, false, nil
	}
	var got doneRecord
	if json.Unmarshal(b, &got) != nil || got.Version != want.Version {
		return false, false, nil
	}
	if !maps.Equal(got.Settings, want.Settings) {
		return false, false, fmt.Errorf("destination %s %w (%s)", dst, errOtherConversion, diffSettings(got.Settings, want.Settings))
	}
	if got.Index != want.Index || got.Config != want.Config || !slices.Equal(got.Aux, want.Aux) ||
		!slices.EqualFunc(got.Files, want.Files, func(a, b recordFile) bool { return a.Name == b.Name && a.Key == b.Key }) {
		return false, true, nil
	}
	for _, f := range got.Files {
		if fi, err := os.Lstat(filepath.Join(dst, f.Name)); err != nil || !fi.Mode().IsRegular() || fi.Size() != f.Size {
			return false, true, nil
		}
	}
	if got.Index != "" {
		if fi, err := os.Lstat(filepath.Join(dst, got.Index)); err != nil || !fi.Mode().IsRegular() {
			return false, true, nil
		}
	}
	if got.Config != "" {
		cfg, err := regular.ReadFile(filepath.Join(dst, checkpoint.ConfigFileName), checkpoint.MaxConfigSize)
		sum := sha256.Sum256(cfg)
		if err != nil || hex.EncodeToString(sum[:]) != got.Config {
			return false, true, nil
		}
	}
	for _, a := range got.Aux {
		if _, err := os.Lstat(filepath.Join(dst, filepath.FromSlash(a.Name))); errors.Is(err, fs.ErrNotExist) {
			return false, true, nil
		}
	}
	return true, true, nil
}

// diffSettings says how settings old differ from now.
func diffSettings(old, now map[string]string) string {
	var b bytes.Buffer
	for _, k := range slices.Sorted(maps.Keys(now)) {
		if old[k] != now[k] {
			if b.Len() > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s %q, now %q", k, old[k], now[k])
		}
	}
	if b.Len() == 0 {
		return "other settings"
	}
	return b.String()
}

// writeRecord writes the record of the finished output in w beside dst.
func writeRecord(dst string, w *workDir, rec *doneRecord) error {
	r := *rec
	r.Files = slices.Clone(rec.Files)
	for i := range r.Files {
		fi, err := w.dir.Lstat(r.Files[i].Name)
		if err != nil {
			return fmt.Errorf("convert: %w", err)
		}
		r.Files[i].Size = fi.Size()
	}
	b, err := json.Marshal(&r)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if err := outdir.WriteRecord(dst, w.dir, b); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	return nil
}
