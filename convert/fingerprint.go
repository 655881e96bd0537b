package convert

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/internal/regular"
)

// Source fingerprints.
//
// Resume and "already complete" decide whether an output file made
// earlier still matches its source files by a fingerprint of each source
// file, cheap enough for a 1 TB checkpoint: its size, modification time,
// and on Linux its inode change time (ctime, which every write and every
// utimes call that restores an mtime updates; no user can set it) and
// inode number, plus the CRC-32C of sampled bytes: the 8-byte length and
// header (up to fingerprintHeaderBytes), fingerprintSamples windows of
// fingerprintWindow bytes spread evenly over the file, and its last
// window. That reads at most about 1.5 MiB per file (300 MiB for 200
// shards of 5 GB). A change anywhere changes the ctime; the samples catch
// changes on file systems or platforms without one. Copying a checkpoint
// (new inodes) or chmod/chown on it also changes the fingerprint, which
// only costs a redo.
const (
	fingerprintHeaderBytes = 1 << 20
	fingerprintSamples     = 8
	fingerprintWindow      = 64 << 10
)

// fingerprint returns the fingerprint of source shard sh.
func fingerprint(sh *checkpoint.Shard) (sourceState, error) {
	fi, err := sh.Stat()
	if err != nil {
		return sourceState{}, fmt.Errorf("convert: %w", err)
	}
	return fingerprintFile(sh.Name, sh.Path, sh, fi, sh.DataOffset())
}

// fingerprintPath returns the fingerprint of the other input file path
// (Source.Inputs), whose first fingerprintHeaderBytes count as its header.
func fingerprintPath(path string) (sourceState, error) {
	f, fi, err := regular.Open(path)
	if err != nil {
		return sourceState{}, fmt.Errorf("convert: %w", err)
	}
	defer f.Close()
	return fingerprintFile(path, path, f, fi, fingerprintHeaderBytes)
}

// fingerprintFile returns the fingerprint of the file r, whose FileInfo
// is fi and whose first headerLen bytes are its header.
func fingerprintFile(name, path string, r io.ReaderAt, fi fs.FileInfo, headerLen int64) (sourceState, error) {
	st := sourceState{Name: name, Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}
	st.Change, st.Inode = changeTime(fi)
	size := fi.Size()
	h := crc32.New(castagnoli)
	buf := make([]byte, fingerprintWindow)
	add := func(off, n int64) error {
		for n > 0 {
			m := min(n, int64(len(buf)))
			if _, err := r.ReadAt(buf[:m], off); err != nil && err != io.EOF {
				return err
			}
			var o [8]byte
			binary.LittleEndian.PutUint64(o[:], uint64(off))
			h.Write(o[:])
			h.Write(buf[:m])
			off += m
			n -= m
		}
		return nil
	}
	head := min(size, headerLen, fingerprintHeaderBytes)
	err := add(0, head)
	for i := range int64(fingerprintSamples) {
		if err != nil || size <= head {
			break
		}
		off := head + (size-head)*i/fingerprintSamples
		err = add(off, min(fingerprintWindow, size-off))
	}
	if err == nil && size > head {
		off := max(head, size-fingerprintWindow)
		err = add(off, size-off)
	}
	if err != nil {
		return sourceState{}, fmt.Errorf("convert: %s: %w", path, err)
	}
	st.Sample = fmt.Sprintf("%08x", h.Sum32())
	return st, nil
}

// fileKeys returns, per output file of p, the hex SHA-256 of everything
// its bytes depend on: the settings, its tensors (names, dtypes, shapes;
// the length of a quant-state JSON aside, which follows from the data),
// the source tensors they come from (name, dtype, shape, offsets) and the
// fingerprints of the source files those are in, and of every other input
// file (Source.Inputs, which may feed any tensor). A done marker, and the
// record of a finished conversion, hold these keys, so an output file is
// kept only while nothing it depends on has changed.
func fileKeys(p *Plan, st *planState) []string {
	settings, _ := json.Marshal(st.Settings)
	keys := make([]string, len(p.Files))
	for fi, f := range p.Files {
		h := sha256.New()
		fmt.Fprintf(h, "qconv output file v1\n%s\n%s\n", settings, f.Name)
		shards := map[int]bool{}
		for _, ref := range f.entries {
			it := p.items[ref.item]
			e := &it.entries[ref.entry]
			shape := fmt.Sprint(p.entryShape(it, e))
			if e.kind == entryQuantState {
				shape = "?"
			}
			t := it.src
			fmt.Fprintf(h, "%q %v %s <- %d:%q %v %v [%d,%d]\n", p.entryName(it, e), e.dtype, shape, t.shard, t.Name, t.DType, t.Shape, t.Begin, t.End)
			shards[int(t.shard)] = true
		}
		for i, s := range st.Sources {
			if shards[i] || i >= len(p.srcFiles) {
				b, _ := json.Marshal(s)
				fmt.Fprintf(h, "%s\n", b)
			}
		}
		keys[fi] = hex.EncodeToString(h.Sum(nil))
	}
	return keys
}
