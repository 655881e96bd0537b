// Package transpose reads and writes a row-major [rows, cols] tensor as
// its [cols, rows] transpose, in bounded pieces. transformers quantizes a
// GPT-2 style Conv1D weight, stored [in, out], as its [out, in]
// transpose (the quant state's shape), so convert reads such a weight
// through a Reader to quantize it, dequant writes it back through a Writer,
// and verify reads the original through a Reader.
//
// Element e of the transpose, e = c*rows + r, is element r*cols + c of the
// tensor. A piece of n consecutive elements of the transpose touches
// every row of the tensor, in a run of about n/rows + 1 consecutive
// elements each, so both types do one I/O call per row of the tensor.
//
// This package does not transpose whole tensors in memory, and it knows
// nothing of which weights are transposed (formats/arch does).
package transpose

import (
	"errors"
	"fmt"
	"io"
)

// Shape is a row-major tensor's shape and element size.
type Shape struct {
	Rows, Cols int64 // the tensor's shape (not its transpose's)
	Size       int64 // bytes per element
}

// A Reader presents a row-major [Rows, Cols] tensor read through Src as its
// [Cols, Rows] transpose. It is safe for concurrent use if Src is.
type Reader struct {
	Src io.ReaderAt // the tensor's bytes, from offset 0
	Shape
}

// ReadAt reads len(p) bytes of the transpose at off. Both must be whole
// elements. It returns io.EOF with the bytes up to the end where p runs
// past it.
func (t *Reader) ReadAt(p []byte, off int64) (int, error) {
	e0, n, short, err := t.span(p, off)
	if err != nil || n == 0 {
		return 0, err
	}
	// Source columns c0..c1 hold the transposed rows the piece touches;
	// reading them whole from each row reads at most two rows' worth
	// more than needed.
	c0, c1 := e0/t.Rows, (e0+n-1)/t.Rows+1
	buf := make([]byte, (c1-c0)*t.Size)
	for r := int64(0); r < t.Rows; r++ {
		if got, err := t.Src.ReadAt(buf, (r*t.Cols+c0)*t.Size); got < len(buf) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		lo, hi := t.colRange(r, e0, n)
		scatter(p, buf[(lo-c0)*t.Size:(hi-c0)*t.Size], lo*t.Rows+r-e0, t.Rows, t.Size)
	}
	if short {
		return int(n * t.Size), io.EOF
	}
	return len(p), nil
}

// A Writer presents a row-major [Rows, Cols] tensor written through Dst as
// its [Cols, Rows] transpose: WriteAt takes elements of the transpose and
// writes each where it belongs in the tensor, and only there, so that
// writers of disjoint pieces may run concurrently if Dst allows it.
type Writer struct {
	Dst io.WriterAt // the tensor's bytes, from offset 0
	Shape
}

// WriteAt writes p, whole elements of the transpose starting at byte off.
func (t *Writer) WriteAt(p []byte, off int64) (int, error) {
	e0, n, short, err := t.span(p, off)
	if err != nil || n == 0 {
		return 0, err
	}
	if short {
		return 0, fmt.Errorf("transpose: write of %d elements at element %d runs past the end of a [%d, %d] tensor", len(p)/int(t.Size), e0, t.Rows, t.Cols)
	}
	buf := make([]byte, 0, (n/t.Rows+1)*t.Size)
	for r := int64(0); r < t.Rows; r++ {
		lo, hi := t.colRange(r, e0, n)
		if lo >= hi {
			continue
		}
		run := buf[:(hi-lo)*t.Size]
		gather(run, p, lo*t.Rows+r-e0, t.Rows, t.Size)
		if _, err := t.Dst.WriteAt(run, (r*t.Cols+lo)*t.Size); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// span checks a piece of p at off and returns its first element and
// element count, clipped to the tensor (short reports a clip).
func (s Shape) span(p []byte, off int64) (e0, n int64, short bool, err error) {
	if s.Size <= 0 || s.Rows < 0 || s.Cols < 0 {
		return 0, 0, false, fmt.Errorf("transpose: bad shape [%d, %d] of %d-byte elements", s.Rows, s.Cols, s.Size)
	}
	if off < 0 || off%s.Size != 0 || int64(len(p))%s.Size != 0 {
		return 0, 0, false, fmt.Errorf("transpose: %d bytes at offset %d are not whole %d-byte elements", len(p), off, s.Size)
	}
	e0, n = off/s.Size, int64(len(p))/s.Size
	total := s.Rows * s.Cols
	if n == 0 {
		return e0, 0, false, nil
	}
	if e0 >= total {
		return 0, 0, false, io.EOF
	}
	if e0+n > total {
		n, short = total-e0, true
	}
	return e0, n, short, nil
}

// colRange returns the columns c of row r whose transposed position
// c*rows + r lies in [e0, e0+n): lo = ceil((e0-r)/rows), hi =
// floor((e0+n-1-r)/rows) + 1, clipped to [0, cols].
func (s Shape) colRange(r, e0, n int64) (lo, hi int64) {
	lo = max(0, ceilDiv(e0-r, s.Rows))
	last := e0 + n - 1 - r
	if last < 0 {
		return 0, 0
	}
	hi = min(s.Cols, last/s.Rows+1)
	return lo, max(lo, hi)
}

func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return -((-a) / b)
	}
	return (a + b - 1) / b
}

// gather copies the elements first, first+stride, ... of src into dst,
// len(dst)/size of them.
func gather(dst, src []byte, first, stride, size int64) {
	n := int64(len(dst)) / size
	switch size {
	case 2:
		for i := int64(0); i < n; i++ {
			j := 2 * (first + i*stride)
			dst[2*i], dst[2*i+1] = src[j], src[j+1]
		}
	case 4:
		for i := int64(0); i < n; i++ {
			j := 4 * (first + i*stride)
			copy(dst[4*i:4*i+4], src[j:j+4])
		}
	default:
		for i := int64(0); i < n; i++ {
			j := size * (first + i*stride)
			copy(dst[size*i:size*(i+1)], src[j:j+size])
		}
	}
}

// scatter copies the elements of src, len(src)/size of them, to the
// elements first, first+stride, ... of dst.
func scatter(dst, src []byte, first, stride, size int64) {
	n := int64(len(src)) / size
	switch size {
	case 2:
		for i := int64(0); i < n; i++ {
			j := 2 * (first + i*stride)
			dst[j], dst[j+1] = src[2*i], src[2*i+1]
		}
	default:
		for i := int64(0); i < n; i++ {
			j := size * (first + i*stride)
			copy(dst[j:j+size], src[size*i:size*(i+1)])
		}
	}
}
