package verify

import (
	"fmt"
	"io"
	"math"

	"github.com/qconv/qconv/convert/dequant"
	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/convert/internal/jobs"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
)

// Slack for float32 rounding in the bound checks. The quantizer scales by
// an approximate reciprocal (a few ulps), so a value within about 2^-21
// (relative) of a midpoint may take the farther code; the dequantized
// product and the double-quant sum are rounded to float32 (2^-24 each).
// tolRel covers these with a wide margin while staying far below any real
// fault (a one-step error in the 8-bit absmax code is over 2^-8 relative).
// tolAbs covers flushed subnormals.
const (
	tolRel = 0x1p-18
	tolAbs = 0x1p-125
)

// measure compares the blocks of one quantized weight with the original.
type measure struct {
	w      *dequant.Weight
	orig   io.ReaderAt // the original tensor's values, in the quant state's order
	code   [16]float64 // value of each 4-bit code (before scaling)
	cell4  []float64   // halfCells of the 4-bit code book
	cell8  []float64   // halfCells of the nested 8-bit code book (double quant)
	to     dtype.DType // the quant state's dtype
	dq     bool
	offset float64
	bsize  int64
}

func newMeasure(w *dequant.Weight) *measure {
	cb := bnb.CodeBook(w.State.QuantType)
	m := &measure{w: w, cell4: halfCells(cb[:]), to: w.DType, dq: w.State.DoubleQuant,
		offset: float64(w.State.NestedOffset), bsize: int64(w.State.Blocksize)}
	for i, v := range cb {
		m.code[i] = float64(v)
	}
	if m.dq {
		nm := w.NestedMap()
		m.cell8 = halfCells(nm[:])
	}
	return m
}

// blocks compares count blocks starting at block b0 (a multiple of 256).
//
// For each block it takes the original values x (cast to the quant
// state's dtype, since that is what bitsandbytes quantized) and their true
// absmax A, then checks
//
//   - the stored absmax A': equal to A without double quantization; within
//     d = halfCells8[k] × nested_absmax of A with it, k being the block's
//     8-bit code (the rounding error of the double quantization);
//   - every element: |x − w| ≤ halfCells4[c] × A + |code[c]| × d, where w is
//     the dequantized value and c its 4-bit code. x/A rounds to code[c], so
//     |x − code[c]·A| ≤ halfCells4[c]·A, and w = code[c]·A' adds
//     |code[c]|·|A − A'|.
//
// Elements whose block holds a NaN or an infinity are counted, not
// checked.
func (m *measure) blocks(s *scratch, a *acc, o checkpoint.Tensor, b0, count int64) error {
	b := &s.blocks
	if err := m.w.ReadBlocks(b, b0, count); err != nil {
		return err
	}
	n := b.Elements
	e0 := b0 * m.bsize
	osz := int64(o.DType.Size())
	s.raw = jobs.Grow(s.raw, n*int(osz))
	if _, err := m.orig.ReadAt(s.raw, e0*osz); err != nil {
		return fmt.Errorf("verify: %s: tensor %q: %w", o.Shard.Path, o.Name, err)
	}
	s.x = jobs.Grow(s.x, n)
	s.y = jobs.Grow(s.y, n)
	cast.Decode(s.x, s.raw, o.DType, m.to)
	m.w.Dequantize(s.y, b)

	for blk := 0; blk*int(m.bsize) < n; blk++ {
		lo := blk * int(m.bsize)
		hi := min(n, lo+int(m.bsize))
		xs, ws := s.x[lo:hi], s.y[lo:hi]
		absmax, finite := blockAbsmax(xs)
		if !finite {
			a.nonFinite += int64(len(xs))
			continue
		}
		stored := float64(b.Absmax[blk])
		var d, tolBlock float64
		if m.dq {
			d = m.cell8[b.Codes[blk]] * float64(b.Nested[blk/bnb.NestedBlocksize])
			tolBlock = tolRel*(absmax+math.Abs(m.offset)+float64(b.Nested[blk/bnb.NestedBlocksize])) + tolAbs
		} else {
			tolBlock = tolRel*absmax + tolAbs
		}
		if !(math.Abs(stored-absmax) <= d+tolBlock) {
			a.badBlock(b0+int64(blk), stored, absmax)
		}
		// The stored absmax may be off by d plus its own rounding
		// (tolBlock), and the product code·absmax is rounded once more.
		d += tolBlock
		tolElem := tolRel*(absmax+math.Abs(stored)) + tolAbs
		var bound [16]float64
		for c := range bound {
			bound[c] = m.cell4[c]*absmax + math.Abs(m.code[c])*d + tolElem
		}
		packed := b.Packed[lo/2:]
		for i := range xs {
			c := packed[i/2]
			if i%2 == 0 {
				c >>= 4
			} else {
				c &= 15
			}
			a.check(e0+int64(lo+i), float64(xs[i]), float64(ws[i]), bound[c])
		}
		if (blk+1)%bnb.NestedBlocksize == 0 {
			a.cut()
		}
	}
	a.cut()
	return nil
}

// blockAbsmax returns the largest |x| of a block as the CUDA kernel sees
// it (subnormals count as zero), and whether every value is finite.
func blockAbsmax(xs []float32) (float64, bool) {
	var m float32
	for _, v := range xs {
		a := float32(math.Abs(float64(v)))
		if a > math.MaxFloat32 || a != a {
			return 0, false
		}
		if a > m && a >= 0x1p-126 {
			m = a
		}
	}
	return float64(m), true
}
