package safetensors

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/regular"
)

// MaxHeaderLen is the largest header, in bytes, that a file may declare.
// It is the limit of the reference implementation.
const MaxHeaderLen = 100_000_000

// prefixLen is the size of the little-endian header length at offset 0.
const prefixLen = 8

// TensorInfo describes one tensor of a file.
type TensorInfo struct {
	Name  string
	DType dtype.DType
	Shape []int64 // empty (not nil) for a scalar
	// Begin and End are the tensor's data_offsets: its bytes are
	// [Begin, End) relative to the start of the data section.
	Begin, End int64
}

// NumElements returns the product of the shape (1 for a scalar). For a
// TensorInfo from a Reader it never overflows; others are not checked.
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Size returns the tensor's size in bytes, End-Begin.
func (t TensorInfo) Size() int64 { return t.End - t.Begin }

// A Reader gives access to a safetensors file through an io.ReaderAt. It
// holds the parsed header and nothing else: tensor data is read on demand.
type Reader struct {
	r         io.ReaderAt
	size      int64
	headerLen int64
	tensors   []TensorInfo // in data-offset order
	byName    []int32      // indexes of tensors, sorted by name
	metadata  map[string]string
}

// NewReader reads and validates the header of the safetensors file r of
// the given size. It reads only the 8-byte prefix and the header, and
// checks every structural rule there, so that a Reader that exists
// describes a valid file: each tensor's size matches its dtype and shape,
// and the tensors tile the data section exactly, which ends at size.
//
// Memory use is bounded by a small multiple of the header length, which
// is checked against size and MaxHeaderLen before anything is allocated.
// Format problems are reported as *FormatError; I/O errors are returned
// wrapped.
func NewReader(r io.ReaderAt, size int64) (*Reader, error) {
	if size < prefixLen {
		return nil, formatErr(CodeTooShort, 0, "", "file is %d bytes, shorter than the 8-byte header length", max(size, 0))
	}
	var prefix [prefixLen]byte
	if err := readFull(r, prefix[:], 0); err != nil {
		return nil, fmt.Errorf("safetensors: reading header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(prefix[:])
	if n > MaxHeaderLen {
		return nil, formatErr(CodeHeaderTooLarge, 0, "", "header length %d is over the %d-byte limit", n, MaxHeaderLen)
	}
	if n > uint64(size-prefixLen) {
		return nil, formatErr(CodeHeaderOutOfBounds, 0, "", "header length %d runs past the end of the %d-byte file", n, size)
	}
	buf := make([]byte, n)
	if err := readFull(r, buf, prefixLen); err != nil {
		return nil, fmt.Errorf("safetensors: reading header: %w", err)
	}
	dataOff := prefixLen + int64(n)
	dataLen := size - dataOff
	hd, err := parseHeader(buf, prefixLen, dataLen)
	if err != nil {
		return nil, err
	}
	rd := &Reader{
		r:         r,
		size:      size,
		headerLen: int64(n),
		tensors:   hd.tensors,
		metadata:  hd.metadata,
	}
	slices.SortFunc(rd.tensors, func(a, b TensorInfo) int {
		return cmp.Or(cmp.Compare(a.Begin, b.Begin), cmp.Compare(a.End, b.End), cmp.Compare(a.Name, b.Name))
	})
	if err := checkLayout(rd.tensors, dataOff, dataLen); err != nil {
		return nil, err
	}
	rd.byName = sortedByName(rd.tensors)
	return rd, nil
}

// checkLayout checks that tensors, sorted by offset, tile [0, dataLen)
// with no gap, overlap or sharing. Empty tensors may sit at any tensor
// boundary.
func checkLayout(tensors []TensorInfo, dataOff, dataLen int64) error {
	var pos int64 // end of the data covered so far
	last := -1    // index of the last non-empty tensor
	for i, t := range tensors {
		switch {
		case t.Begin > pos:
			if pos == 0 {
				return formatErr(CodeOffsetsGap, dataOff, t.Name, "first tensor data starts at %d, not 0", t.Begin)
			}
			return formatErr(CodeOffsetsGap, dataOff+pos, t.Name, "gap of %d bytes before the tensor's data at %d", t.Begin-pos, t.Begin)
		case t.Begin < pos:
			prev := tensors[last]
			if t.Size() > 0 && prev.Begin == t.Begin && prev.End == t.End {
				return formatErr(CodeOffsetsShared, dataOff+t.Begin, t.Name, "shares data_offsets [%d,%d] with tensor %q", t.Begin, t.End, prev.Name)
			}
			return formatErr(CodeOffsetsOverlap, dataOff+t.Begin, t.Name, "data_offsets [%d,%d] overlap tensor %q at [%d,%d]", t.Begin, t.End, prev.Name, prev.Begin, prev.End)
		}
		if t.Size() > 0 {
			pos = t.End
			last = i
		}
	}
	if pos != dataLen {
		return formatErr(CodeTrailingBytes, dataOff+pos, "", "trailing bytes after the last tensor's data (%d of the %d data bytes)", dataLen-pos, dataLen)
	}
	return nil
}

// readFull reads len(b) bytes at off, treating io.EOF after a full read as
// success (io.ReaderAt allows it).
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Tensors returns the tensors in data-offset order. The slice belongs to
// the Reader and must not be modified.
func (r *Reader) Tensors() []TensorInfo { return r.tensors }

// Tensor returns the tensor with the given name.
func (r *Reader) Tensor(name string) (TensorInfo, bool) {
	k, ok := slices.BinarySearchFunc(r.byName, name, func(i int32, name string) int { return strings.Compare(r.tensors[i].Name, name) })
	if !ok {
		return TensorInfo{}, false
	}
	return r.tensors[r.byName[k]], true
}

// Metadata returns the __metadata__ map, or nil if the header has none.
// The map belongs to the Reader and must not be modified.
func (r *Reader) Metadata() map[string]string { return r.metadata }

// HeaderLen returns the header length N from the 8-byte prefix (the JSON
// and its padding, without the prefix).
func (r *Reader) HeaderLen() int64 { return r.headerLen }

// DataOffset returns the absolute file offset of the data section, 8+N.
func (r *Reader) DataOffset() int64 { return prefixLen + r.headerLen }

// Size returns the file size given to NewReader.
func (r *Reader) Size() int64 { return r.size }

// SectionReader returns a reader of t's bytes. t must come from this
// Reader. Each call returns a new SectionReader; several may be used from
// different goroutines at once if the underlying io.ReaderAt allows
// parallel calls, as *os.File does.
func (r *Reader) SectionReader(t TensorInfo) *io.SectionReader {
	return io.NewSectionReader(r.r, r.DataOffset()+t.Begin, t.Size())
}

// ReadTensor reads the named tensor's bytes into memory. It is meant for
// small tensors (quantization statistics, code books); stream large ones
// through SectionReader.
func (r *Reader) ReadTensor(name string) ([]byte, error) {
	t, ok := r.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoTensor, name)
	}
	b := make([]byte, t.Size())
	if err := readFull(r.r, b, r.DataOffset()+t.Begin); err != nil {
		return nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
	}
	return b, nil
}

// A File is a Reader over an open file.
type File struct {
	*Reader
	f *os.File
}

// Open opens and validates the safetensors file at path. Errors name the
// path, and wrap a *FormatError for format problems.
func Open(path string) (*File, error) {
	f, fi, err := regular.Open(path)
	if err != nil {
		return nil, err // names the file
	}
	r, err := NewReader(f, fi.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &File{Reader: r, f: f}, nil
}

// Close closes the file. Readers obtained from it stop working.
func (f *File) Close() error { return f.f.Close() }

// Name returns the path the file was opened with.
func (f *File) Name() string { return f.f.Name() }

// Stat returns the FileInfo of the open file.
func (f *File) Stat() (fs.FileInfo, error) { return f.f.Stat() }

// SyscallConn returns the raw connection of the open file, for a caller
// that maps it into memory. The File keeps owning the descriptor.
func (f *File) SyscallConn() (syscall.RawConn, error) { return f.f.SyscallConn() }

// ReadAt reads the file's bytes at off (header and data alike), as
// io.ReaderAt.
func (f *File) ReadAt(b []byte, off int64) (int, error) { return f.f.ReadAt(b, off) }
