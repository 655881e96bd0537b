package convert

import (
	"errors"
	"fmt"
	"io"
)

// transposedReader presents a row-major [rows, cols] tensor as its
// [cols, rows] transpose: ReadAt(p, off) reads elements of the transpose.
// transformers quantizes GPT-2 style Conv1D weights, stored [in, out], as
// their transpose, so the quantization jobs read them through it.
//
// A read of n elements that spans transposed rows c0..c1 (source columns)
// reads, for each of the rows source rows, the cols c0..c1 of that row:
// rows reads of about n/rows + 2 elements, so reads stay large for the
// sub-chunks (128 Ki elements) that the pipeline uses.
type transposedReader struct {
	src        io.ReaderAt
	rows, cols int64 // the source shape
	size       int64 // bytes per element
}

// ReadAt implements io.ReaderAt over the transposed tensor.
func (t *transposedReader) ReadAt(p []byte, off int64) (int, error) {
	if off%t.size != 0 || int64(len(p))%t.size != 0 {
		return 0, fmt.Errorf("convert: transposed read of %d bytes at %d is not element-aligned", len(p), off)
	}
	e0, n := off/t.size, int64(len(p))/t.size
	total := t.rows * t.cols
	if n == 0 {
		return 0, nil
	}
	if e0 < 0 || e0 >= total {
		return 0, io.EOF
	}
	short := false
	if e0+n > total {
		n, short = total-e0, true
	}
	c0, c1 := e0/t.rows, (e0+n-1)/t.rows+1 // transposed rows = source columns [c0, c1)
	w := c1 - c0
	buf := make([]byte, w*t.size)
	for r := int64(0); r < t.rows; r++ {
		got, err := t.src.ReadAt(buf, (r*t.cols+c0)*t.size)
		if got < len(buf) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		for c := c0; c < c1; c++ {
			e := c*t.rows + r
			if e < e0 || e >= e0+n {
				continue
			}
			copy(p[(e-e0)*t.size:(e-e0+1)*t.size], buf[(c-c0)*t.size:(c-c0+1)*t.size])
		}
	}
	if short {
		return int(n * t.size), io.EOF
	}
	return len(p), nil
}
