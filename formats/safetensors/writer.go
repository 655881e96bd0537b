package safetensors

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/qconv/qconv/formats/dtype"
)

// TensorSpec is what the writer needs to know about a tensor before its
// data: everything but the bytes.
type TensorSpec struct {
	Name  string
	DType dtype.DType
	Shape []int64 // nil or empty for a scalar
}

// A Plan is the layout of a file to be written: its header bytes and where
// each tensor's data goes. It is computed from names, dtypes and shapes
// alone, so a plan can be made before any tensor data exists.
type Plan struct {
	// Header is everything before the data section: the 8-byte
	// little-endian length, the JSON header and its space padding. Write
	// it at file offset 0.
	Header []byte
	// Tensors lists the tensors in write order, which is also data-offset
	// order. Begin and End are relative to the data section, which starts
	// at file offset len(Header).
	Tensors []TensorInfo
	// Order[i] is the index in NewPlan's specs of Tensors[i].
	Order []int
	// DataSize is the size of the data section in bytes.
	DataSize int64
}

// DataOffset returns the file offset of the data section, len(p.Header).
func (p *Plan) DataOffset() int64 { return int64(len(p.Header)) }

// FileSize returns the size of the complete file, len(p.Header)+p.DataSize.
func (p *Plan) FileSize() int64 { return int64(len(p.Header)) + p.DataSize }

// NewPlan lays out a file holding the given tensors and metadata exactly
// as the reference writer (the safetensors Rust crate, which transformers
// uses) does:
//
//   - tensors sorted by dtype, descending in [dtype] enum order, then by
//     name in byte order; their data contiguous in that order, unpadded;
//   - compact JSON with "__metadata__" first (keys sorted), then the
//     tensors in data order, each as {"dtype","shape","data_offsets"};
//     strings escaped as serde_json does (raw UTF-8; only '"', '\' and
//     control characters escaped);
//   - the JSON padded with spaces to a multiple of 8 bytes.
//
// Metadata keys are sorted for determinism: the upstream crate writes a
// HashMap, whose order is unspecified when there are two keys or more
// (transformers writes one). A nil metadata map writes no "__metadata__"
// key; a non-nil empty map
// writes "__metadata__":{}, as the reference does for Some(empty).
// transformers always passes {"format": "pt"}.
//
// Names must be unique, valid UTF-8 and not "__metadata__"; dtypes valid;
// dimensions non-negative; sizes must fit in int64 and sub-byte tensors
// fill whole bytes. The specs slice is not modified; the plan's tensors
// share the specs' shape slices (a plan holds no copy of them: convert
// lays out millions of tensors).
func NewPlan(metadata map[string]string, specs []TensorSpec) (*Plan, error) {
	l, err := NewLayout(metadata, len(specs), func(i int) TensorSpec { return specs[i] })
	if err != nil {
		return nil, err
	}
	header := make([]byte, 0, l.HeaderLen)
	if err := l.WriteHeader(func(b []byte) error { header = append(header, b...); return nil }); err != nil {
		return nil, err
	}
	p := &Plan{Header: header, Tensors: make([]TensorInfo, len(specs)), DataSize: l.DataSize, Order: make([]int, len(specs))}
	for i, j := range l.Order {
		s := specs[j]
		p.Order[i] = int(j)
		p.Tensors[i] = TensorInfo{Name: s.Name, DType: s.DType, Shape: s.Shape, Begin: l.Begin[i], End: l.End(i)}
	}
	return p, nil
}

// A Layout is a Plan without its tensor list or header bytes: the order
// of the tensors, where each one's data begins, and the header's length;
// WriteHeader writes the header. NewLayout makes one for millions of
// tensors in 12 bytes a tensor (a Plan holds about 150).
type Layout struct {
	// HeaderLen is the length of the header (Plan.Header).
	HeaderLen int64
	// Order[i] is the index of the i-th tensor in write (data-offset)
	// order; Begin[i] is its data offset, relative to the data section.
	Order []int32
	Begin []int64
	// DataSize is the size of the data section in bytes.
	DataSize int64

	metadata map[string]string
	spec     func(int) TensorSpec
}

// End returns the end of the data of the i-th tensor in write order.
func (l *Layout) End(i int) int64 {
	if i+1 < len(l.Begin) {
		return l.Begin[i+1]
	}
	return l.DataSize
}

// DataOffset returns the file offset of the data section, HeaderLen.
func (l *Layout) DataOffset() int64 { return l.HeaderLen }

// FileSize returns the size of the complete file.
func (l *Layout) FileSize() int64 { return l.HeaderLen + l.DataSize }

// NewLayout is NewPlan for n tensors whose specs spec returns. spec is
// called several times for each tensor, also by WriteHeader, and must
// return the same spec each time; it should be cheap. The header bytes
// WriteHeader writes are NewPlan's.
func NewLayout(metadata map[string]string, n int, spec func(i int) TensorSpec) (*Layout, error) {
	for k, v := range metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("safetensors: plan: metadata %q is not valid UTF-8", k)
		}
	}
	if n > math.MaxInt32 {
		return nil, fmt.Errorf("safetensors: plan: %d tensors", n)
	}
	order := make([]int32, n)
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int {
		sa, sb := spec(int(a)), spec(int(b))
		return cmp.Or(cmp.Compare(sb.DType, sa.DType), cmp.Compare(sa.Name, sb.Name))
	})
	l := &Layout{Order: order, Begin: make([]int64, n), metadata: metadata, spec: spec}
	var prev string
	for i, j := range order {
		s := spec(int(j))
		if i > 0 && s.Name == prev {
			return nil, fmt.Errorf("safetensors: plan: duplicate tensor name %q", s.Name)
		}
		prev = s.Name
		size, err := specSize(s)
		if err != nil {
			return nil, err
		}
		if size > math.MaxInt64-l.DataSize {
			return nil, fmt.Errorf("safetensors: plan: tensor %q: data section size overflows int64", s.Name)
		}
		l.Begin[i] = l.DataSize
		l.DataSize += size
	}
	jsonLen := int64(0)
	l.emitJSON(func(b []byte) error { jsonLen += int64(len(b)); return nil })
	padded := (jsonLen + 7) / 8 * 8
	if padded > MaxHeaderLen {
		return nil, fmt.Errorf("safetensors: plan: header would be %d bytes, over the %d-byte limit", padded, MaxHeaderLen)
	}
	l.HeaderLen = prefixLen + padded
	return l, nil
}

// Drop frees the tensor order and offsets (and the spec function): only
// HeaderLen and DataSize remain, and WriteHeader can no longer be called.
func (l *Layout) Drop() { l.Order, l.Begin, l.spec = nil, nil, nil }

// WriteHeader passes the header's bytes, in order, to write, a piece of
// at most 64 KiB at a time (the pieces are reused: write must not keep
// them). It stops at write's first error.
func (l *Layout) WriteHeader(write func([]byte) error) error {
	var prefix [prefixLen]byte
	binary.LittleEndian.PutUint64(prefix[:], uint64(l.HeaderLen-prefixLen))
	if err := write(prefix[:]); err != nil {
		return err
	}
	jsonLen := int64(0)
	if err := l.emitJSON(func(b []byte) error { jsonLen += int64(len(b)); return write(b) }); err != nil {
		return err
	}
	pad := make([]byte, l.HeaderLen-prefixLen-jsonLen)
	for i := range pad {
		pad[i] = ' '
	}
	return write(pad)
}

// emitJSON produces the header's JSON (without prefix and padding) in
// pieces of about 64 KiB.
func (l *Layout) emitJSON(emit func([]byte) error) error {
	const piece = 64 << 10
	b := make([]byte, 0, piece+1024)
	flush := func(force bool) error {
		if len(b) == 0 || (!force && len(b) < piece) {
			return nil
		}
		err := emit(b)
		b = b[:0]
		return err
	}
	b = append(b, '{')
	if l.metadata != nil {
		b = appendJSONString(b, "__metadata__")
		b = append(b, ':', '{')
		for i, k := range slices.Sorted(maps.Keys(l.metadata)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, l.metadata[k])
			if err := flush(false); err != nil {
				return err
			}
		}
		b = append(b, '}')
	}
	for i, j := range l.Order {
		t := l.spec(int(j))
		if i > 0 || l.metadata != nil {
			b = append(b, ',')
		}
		b = appendJSONString(b, t.Name)
		b = append(b, `:{"dtype":`...)
		b = appendJSONString(b, t.DType.String())
		b = append(b, `,"shape":[`...)
		for k, d := range t.Shape {
			if k > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, d, 10)
		}
		b = append(b, `],"data_offsets":[`...)
		b = strconv.AppendInt(b, l.Begin[i], 10)
		b = append(b, ',')
		b = strconv.AppendInt(b, l.End(i), 10)
		b = append(b, ']', '}')
		if err := flush(false); err != nil {
			return err
		}
	}
	b = append(b, '}')
	return flush(true)
}

// specSize checks s and returns its data size in bytes.
func specSize(s TensorSpec) (int64, error) {
	fail := func(format string, args ...any) (int64, error) {
		return 0, fmt.Errorf("safetensors: plan: tensor %q: "+format, append([]any{s.Name}, args...)...)
	}
	if s.Name == "__metadata__" {
		return fail("name is reserved")
	}
	if !utf8.ValidString(s.Name) {
		return fail("name is not valid UTF-8")
	}
	if !s.DType.Valid() {
		return fail("invalid dtype %v", s.DType)
	}
	n := int64(1)
	for _, d := range s.Shape {
		if d < 0 {
			return fail("negative dimension in shape %v", s.Shape)
		}
		if d != 0 && n > math.MaxInt64/d {
			return fail("number of elements of shape %v overflows int64", s.Shape)
		}
		n *= d
	}
	bits := int64(s.DType.Bits())
	if n > math.MaxInt64/bits {
		return fail("size of %d %s elements overflows int64", n, s.DType)
	}
	if n*bits%8 != 0 {
		return fail("%d %s elements are not a whole number of bytes", n, s.DType)
	}
	return n * bits / 8, nil
}

// appendJSONString appends s as a JSON string the way serde_json writes
// it: UTF-8 as is; '"' and '\' escaped; control characters as \b \t \n
// \f \r or \u00xx (lowercase hex). s must be valid UTF-8.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\t':
			b = append(b, '\\', 't')
		case '\n':
			b = append(b, '\\', 'n')
		case '\f':
			b = append(b, '\\', 'f')
		case '\r':
			b = append(b, '\\', 'r')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// ErrDataSize is returned (wrapped) by Writer when more or fewer data
// bytes are written than the plan holds.
var ErrDataSize = errors.New("safetensors: data size does not match the plan")

// A Writer writes a safetensors file to an io.Writer, following a Plan.
//
// Contract: after NewWriter has written the header, the caller writes the
// bytes of p.Tensors, in that order, with no gaps: exactly p.DataSize bytes
// in all, in as many Write calls as it likes. Writes past the end of the
// data fail; Close fails if the data is incomplete. Any error is sticky.
// A Writer is not safe for concurrent use; to write tensors in parallel,
// write p.Header and the data at their planned offsets with WriteAt
// instead.
type Writer struct {
	w      io.Writer
	plan   *Plan
	n      int64 // data bytes written
	err    error // sticky
	closed bool
}

// NewWriter writes p.Header to w and returns a Writer for the data.
func NewWriter(w io.Writer, p *Plan) (*Writer, error) {
	if _, err := w.Write(p.Header); err != nil {
		return nil, fmt.Errorf("safetensors: writing header: %w", err)
	}
	return &Writer{w: w, plan: p}, nil
}

// current returns the name of the tensor that data byte w.n belongs to.
func (w *Writer) current() string {
	ts := w.plan.Tensors
	i, _ := slices.BinarySearchFunc(ts, w.n, func(t TensorInfo, n int64) int {
		if t.End <= n {
			return -1
		}
		return 1
	})
	for i < len(ts) && ts[i].Size() == 0 {
		i++
	}
	if i < len(ts) {
		return ts[i].Name
	}
	return ""
}

// Write writes data bytes. It fails, writing only the bytes that fit, if b
// runs past the end of the planned data.
func (w *Writer) Write(b []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, errors.New("safetensors: write after Close")
	}
	over := int64(len(b)) - (w.plan.DataSize - w.n)
	if over > 0 {
		b = b[:int64(len(b))-over]
	}
	n, err := w.w.Write(b)
	w.n += int64(n)
	if err != nil {
		w.err = fmt.Errorf("safetensors: writing tensor %q: %w", w.current(), err)
		return n, w.err
	}
	if over > 0 {
		w.err = fmt.Errorf("%w: %d bytes past the end of the %d-byte data section", ErrDataSize, over, w.plan.DataSize)
		return n, w.err
	}
	return n, nil
}

// WriteTensor copies the data of the named tensor from r. The tensor must
// be the next one in plan order (empty tensors may be skipped), and r must
// supply at least its size in bytes; extra bytes in r are not read.
func (w *Writer) WriteTensor(name string, r io.Reader) error {
	if w.err != nil {
		return w.err
	}
	i := slices.IndexFunc(w.plan.Tensors, func(t TensorInfo) bool { return t.Name == name })
	if i < 0 {
		return fmt.Errorf("%w: %q is not in the plan", ErrNoTensor, name)
	}
	t := w.plan.Tensors[i]
	if t.Begin != w.n {
		return fmt.Errorf("safetensors: writing tensor %q out of order: it starts at data byte %d, the writer is at %d (in tensor %q)",
			name, t.Begin, w.n, w.current())
	}
	n, err := io.CopyN(w, r, t.Size())
	if err == io.EOF {
		err = fmt.Errorf("%w: tensor %q: source ended after %d of %d bytes", ErrDataSize, name, n, t.Size())
	}
	return err
}

// Written returns the number of data bytes written so far.
func (w *Writer) Written() int64 { return w.n }

// Close checks that all the planned data was written. It does not close
// the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err != nil {
		return w.err
	}
	if w.n != w.plan.DataSize {
		w.err = fmt.Errorf("%w: closed after %d of %d data bytes, in tensor %q",
			ErrDataSize, w.n, w.plan.DataSize, w.current())
	}
	return w.err
}
