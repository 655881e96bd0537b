package convert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/qconv/qconv/convert/internal/outdir"
)

// Partial output and resume.
//
// The output is built in the work directory ".<dst>.qconv-partial" beside
// dst, whose name depends only on dst, so that a rerun of an interrupted
// conversion and the processes of a partitioned one (Options.Part) find
// it. Because anyone who can write beside dst could plant something at
// that name, it is made and reopened as an outdir.Dir: created by qconv
// with a marker holding a random identity, owned by the user, not
// writable by others, never a symbolic link, and every file in it reached
// through the directory's descriptor without following links; anything
// else at the name is refused, never reused or written through. It holds:
//
//   - .qconv-plan.json: the options that change bytes, each source
//     file's fingerprint (fingerprint.go) and the output file names.
//     Every run compares it with its own and refuses to go on with a work
//     directory made with other options (Options.Restart discards it
//     instead); changed source files are noted and the plan state is
//     updated;
//   - the output weight files, written in place under their final names;
//   - .<file>.done next to each finished file: the file's key (fileKeys:
//     a hash of the settings, its tensors and the fingerprints of the
//     source files it is made from), the work directory's identity, the
//     file's size and its CRC-32C, written (atomically) after the file is
//     synced. A file without a valid marker is incomplete and is
//     rewritten; so is one whose key changed (its source changed); a file
//     with a valid marker is checked against size and checksum before it
//     is kept.
//
// When every file is done, the finishing step (the end of a whole run, or
// Options.Finalize after a partitioned one) checks them all, removes
// files that are not outputs of this plan, writes the index, config.json
// and the copied files, removes the state files, writes the record of the
// conversion beside dst (".<dst>.qconv.json": settings, file keys and
// sizes, see doneRecord) and installs the directory as dst
// (outdir.Install). dst therefore never looks complete unless it is. A
// rerun finding a record of the same settings and keys, and dst's files
// at their sizes, does nothing ("already complete").

const (
	planStateName = ".qconv-plan.json"
	doneSuffix    = ".done"
	workSuffix    = ".qconv-partial"
)

// planState is the content of .qconv-plan.json.
type planState struct {
	Version  int               `json:"version"`
	Settings map[string]string `json:"settings"`
	Sources  []sourceState     `json:"sources"`
	Files    []string          `json:"files"`
}

// sourceState is the fingerprint of a source file (see fingerprint.go).
type sourceState struct {
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`
	Change  int64  `json:"ctime_ns,omitempty"`
	Inode   uint64 `json:"inode,omitempty"`
	Sample  string `json:"sampled_crc32c"`
}

// doneState is the content of a .<file>.done marker.
type doneState struct {
	Plan   string `json:"plan"` // the file's key (fileKeys)
	Dir    string `json:"dir"`  // the work directory's identity (outdir.Dir.ID)
	Size   int64  `json:"size"`
	CRC32C uint32 `json:"crc32c"`
}

// workDir is an open work directory.
type workDir struct {
	dir  *outdir.Dir
	keys map[string]string // output file name -> key
	log  io.Writer

	mu    sync.Mutex
	fresh map[string]bool // files marked done by this process
}

// path returns the work directory's path, for messages.
func (w *workDir) path() string { return w.dir.Path() }

// workDirFor returns the work directory of dst.
func workDirFor(dst string) (string, error) {
	dir, err := outdir.Beside(dst, workSuffix)
	if err != nil {
		return "", fmt.Errorf("convert: %w", err)
	}
	return dir, nil
}

// workKind is the kind recorded in convert's work directory markers.
const workKind = "convert"

// maxStateSize bounds the state files read from a work directory.
const maxStateSize = 1 << 20

// newPlanState describes what the plan's output depends on.
func newPlanState(p *Plan, in *source) (*planState, error) {
	s := p.s
	st := &planState{Version: 1, Settings: map[string]string{
		"quant-type":     s.quant.String(),
		"blocksize":      fmt.Sprint(s.blocksize),
		"double-quant":   fmt.Sprint(s.doubleQuant),
		"dtype":          p.ModelDType.TorchName(),
		"compute-dtype":  p.ComputeDType.TorchName(),
		"skip":           strings.Join(s.skip, " "),
		"include":        strings.Join(s.include, " "),
		"max-shard-size": fmt.Sprint(s.maxShard),
	}}
	if s.dense {
		st.Settings["dense"] = "true"
	}
	for k, v := range in.state {
		st.Settings[k] = v
	}
	for _, sh := range in.ck.Shards {
		fp, err := fingerprint(sh)
		if err != nil {
			return nil, err
		}
		st.Sources = append(st.Sources, fp)
	}
	for _, path := range in.inputs {
		fp, err := fingerprintPath(path)
		if err != nil {
			return nil, err
		}
		st.Sources = append(st.Sources, fp)
	}
	for _, f := range p.Files {
		st.Files = append(st.Files, f.Name)
	}
	return st, nil
}

// openWorkDir creates or reopens the work directory of dst for the plan.
// An existing one made for another plan is an error, or is discarded if
// restart is set. One that qconv did not make (see outdir.OpenDir) is
// always an error.
func openWorkDir(dst string, st *planState, keys map[string]string, restart bool, log io.Writer) (*workDir, error) {
	path, err := workDirFor(dst)
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	b = append(b, '\n')
	if log == nil {
		log = io.Discard
	}
	w := &workDir{keys: keys, log: log}
	d, err := outdir.OpenDir(path, workKind)
	if err == nil && restart {
		if err := d.RemoveAll(); err != nil {
			return nil, fmt.Errorf("convert: %w", err)
		}
		d, err = nil, fs.ErrNotExist
	}
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o777); err != nil {
			return nil, fmt.Errorf("convert: %w", err)
		}
		d, err = outdir.CreateDir(path, workKind)
		if errors.Is(err, fs.ErrExist) {
			// Another part of a partitioned run made it just now.
			d, err = outdir.OpenDir(path, workKind)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("convert: work directory: %w", err)
	}
	w.dir = d
	old, err := d.ReadFile(planStateName, maxStateSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// A new work directory (or one left by a run that failed before
		// writing this): start from scratch. Another process of a
		// partitioned run may be doing the same right now, so the file is
		// published only if it does not exist yet, and whichever process
		// lost the race must agree with what the winner wrote.
		if err := d.CreateOnce(planStateName, b); err != nil {
			d.Close()
			return nil, fmt.Errorf("convert: %w", err)
		}
		if again, err := d.ReadFile(planStateName, maxStateSize); err != nil || !bytes.Equal(again, b) {
			d.Close()
			return nil, fmt.Errorf("convert: %s was written at the same time by a run with other arguments", d.Join(planStateName))
		}
	case err != nil:
		d.Close()
		return nil, fmt.Errorf("convert: %w", err)
	case !bytes.Equal(old, b):
		var o planState
		if json.Unmarshal(old, &o) != nil || o.Version != st.Version || !maps.Equal(o.Settings, st.Settings) {
			d.Close()
			return nil, fmt.Errorf("convert: %s holds partial output of a conversion with %s; rerun with the same arguments to continue it, or pass --restart to discard it", path, diffStates(old, st))
		}
		// Same options, changed sources: the output files made from
		// them have other keys and are redone.
		fmt.Fprintf(log, "qconv: the source changed since the partial output in %s was made (%s); output files made from changed source files are redone\n", path, diffStates(old, st))
		if err := d.WriteFileAtomic(planStateName, b); err != nil {
			d.Close()
			return nil, fmt.Errorf("convert: %w", err)
		}
	}
	return w, nil
}

// diffStates says how the plan state in old differs from st.
func diffStates(old []byte, st *planState) string {
	var o planState
	if err := json.Unmarshal(old, &o); err != nil || o.Version != st.Version {
		return "an unknown format"
	}
	var diffs []string
	keys := make([]string, 0, len(st.Settings))
	for k := range st.Settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if o.Settings[k] != st.Settings[k] {
			diffs = append(diffs, fmt.Sprintf("%s %q (now %q)", k, o.Settings[k], st.Settings[k]))
		}
	}
	oldSrc := map[string]sourceState{}
	for _, s := range o.Sources {
		oldSrc[s.Name] = s
	}
	for _, s := range st.Sources {
		switch os, ok := oldSrc[s.Name]; {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("no source file %s", s.Name))
		case os.Size != s.Size:
			diffs = append(diffs, fmt.Sprintf("source file %s of %d bytes (now %d)", s.Name, os.Size, s.Size))
		case os != s:
			diffs = append(diffs, fmt.Sprintf("source file %q modified since", s.Name))
		}
	}
	if len(o.Sources) != len(st.Sources) {
		diffs = append(diffs, fmt.Sprintf("%d source files (now %d)", len(o.Sources), len(st.Sources)))
	}
	if !slices.Equal(o.Files, st.Files) && len(diffs) == 0 {
		diffs = append(diffs, fmt.Sprintf("output files %v (now %v)", o.Files, st.Files))
	}
	if len(diffs) == 0 {
		return "other settings"
	}
	return strings.Join(diffs, ", ")
}

func donePath(name string) string { return "." + name + doneSuffix }

// fileCRC returns the size and CRC-32C of file name in the work directory.
func (w *workDir) fileCRC(name string) (int64, uint32, error) {
	f, err := w.dir.Open(name)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	return n, h.Sum32(), err
}

// markDone records that output file name is complete, reading it back
// for its checksum. The file must be synced.
func (w *workDir) markDone(name string) error {
	size, crc, err := w.fileCRC(name)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	return w.markDoneCRC(name, size, crc)
}

// markDoneCRC records that output file name, of the given size and
// CRC-32C, is complete. The file must be synced.
func (w *workDir) markDoneCRC(name string, size int64, crc uint32) error {
	b, err := json.Marshal(doneState{Plan: w.keys[name], Dir: w.dir.ID(), Size: size, CRC32C: crc})
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if err := w.dir.WriteFileAtomic(donePath(name), append(b, '\n')); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	w.mu.Lock()
	if w.fresh == nil {
		w.fresh = map[string]bool{}
	}
	w.fresh[name] = true
	w.mu.Unlock()
	return nil
}

// isDone reports whether output file name is complete: it has a marker of
// this plan and this work directory, and its size and checksum match the
// marker. A file that fails the check loses its marker (and will be
// rewritten).
func (w *workDir) isDone(name string) (bool, error) {
	w.mu.Lock()
	fresh := w.fresh[name]
	w.mu.Unlock()
	if fresh {
		return true, nil
	}
	b, err := w.dir.ReadFile(donePath(name), maxStateSize)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err == nil {
		var d doneState
		if json.Unmarshal(b, &d) == nil && d.Dir == w.dir.ID() {
			if d.Plan != w.keys[name] {
				fmt.Fprintf(w.log, "qconv: %s in %s was made from other source data; redone\n", name, w.path())
			} else if size, crc, err := w.fileCRC(name); err == nil && size == d.Size && crc == d.CRC32C {
				return true, nil
			}
		}
	}
	if err := w.dir.Remove(donePath(name)); err != nil {
		return false, fmt.Errorf("convert: %w", err)
	}
	return false, nil
}

// anyDone reports whether any output file has a done marker.
func (w *workDir) anyDone() bool {
	names, _ := w.dir.Names()
	for _, n := range names {
		if strings.HasSuffix(n, doneSuffix) {
			return true
		}
	}
	return false
}

// prune removes the entries of the work directory that are neither
// output files of the plan, their done markers, the plan state nor the
// marker: files of an earlier plan (a changed source can change the
// split into files), which must not be installed with the output.
func (w *workDir) prune() error {
	names, err := w.dir.Names()
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "."), doneSuffix)
		if _, ok := w.keys[base]; ok || n == planStateName || n == outdir.MarkerName {
			continue
		}
		if err := os.RemoveAll(w.dir.Join(n)); err != nil {
			return fmt.Errorf("convert: %w", err)
		}
	}
	return nil
}

// removeState removes the plan state and the done markers, leaving the
// output files.
func (w *workDir) removeState(files []string) error {
	for _, f := range files {
		if err := w.dir.Remove(donePath(f)); err != nil {
			return fmt.Errorf("convert: %w", err)
		}
	}
	if err := w.dir.Remove(planStateName); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	return nil
}
