package bnb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/qconv/qconv/formats/dtype"
)

// This file quantizes tensor bytes as they lie in a safetensors file
// (little-endian F32, BF16 or F16), rounding them to the model dtype on the
// way, without widening the whole input to a float32 slice first. Every
// entry point gives exactly the bytes of QuantizeBlocks (or BlockAbsmax) on
// the values DecodeRaw produces. Every dtype pair but F32→F32 has values
// that are BF16 or F16 numbers, so it goes through the 16-bit fast loop
// (half), after a rounding pass where the source is not already in that
// format; the fast loop hands any block that needs care (a NaN, an
// infinity, a BF16 subnormal, a partial block) to that reference path.
// F32→F32 runs the float32 vector kernels (f32) where the CPU has them, and
// otherwise decodes to float32 in chunks and runs QuantizeBlocks.

// ErrUnsupportedDType is returned (wrapped) by the raw entry points for a
// source or model dtype other than F32, BF16 and F16.
var ErrUnsupportedDType = errors.New("bnb: unsupported dtype")

// RawSupported reports whether QuantizeRaw, BlockAbsmaxRaw and DecodeRaw
// accept source dtype src and model dtype model: both must be F32, BF16 or
// F16 (all nine pairs are supported).
func RawSupported(src, model dtype.DType) bool {
	return rawFloat(src) && rawFloat(model)
}

func rawFloat(d dtype.DType) bool { return d == dtype.F32 || d == dtype.BF16 || d == dtype.F16 }

// checkRaw validates the dtypes and the length of src and returns the
// number of elements.
func checkRaw(fn string, src []byte, srcType, modelType dtype.DType) (int, error) {
	if !RawSupported(srcType, modelType) {
		return 0, fmt.Errorf("bnb: %s: %v source as %v model dtype: %w", fn, srcType, modelType, ErrUnsupportedDType)
	}
	size := srcType.Size()
	if len(src)%size != 0 {
		return 0, fmt.Errorf("bnb: %s: %d bytes are not a whole number of %v elements", fn, len(src), srcType)
	}
	return len(src) / size, nil
}

// DecodeRaw decodes len(dst) little-endian elements of dtype srcType from
// src, rounds each to modelType as torch's .to(dtype) does (round to
// nearest even; F32 to BF16 turns every NaN into the quiet NaN 0x7FC0) and
// widens the result back to float32 exactly. These are the values that
// bitsandbytes quantizes when a model of dtype modelType is loaded from a
// srcType checkpoint; QuantizeRaw quantizes exactly them. A converter can
// use it to report the value of the element that QuantizeRaw found
// non-finite.
//
// src must hold at least len(dst) elements. DecodeRaw does not allocate; it
// returns an error wrapping ErrUnsupportedDType for other dtypes.
func DecodeRaw(dst []float32, src []byte, srcType, modelType dtype.DType) error {
	if !RawSupported(srcType, modelType) {
		return fmt.Errorf("bnb: DecodeRaw: %v source as %v model dtype: %w", srcType, modelType, ErrUnsupportedDType)
	}
	if len(src) < len(dst)*srcType.Size() {
		return fmt.Errorf("bnb: DecodeRaw: %d bytes hold fewer than %d %v elements", len(src), len(dst), srcType)
	}
	decodeRaw(dst, src, srcType, modelType)
	return nil
}

// decodeRaw is DecodeRaw for validated arguments.
func decodeRaw(dst []float32, src []byte, srcType, modelType dtype.DType) {
	switch srcType {
	case dtype.F32:
		src = src[:4*len(dst)]
		switch modelType {
		case dtype.BF16:
			for i := range dst {
				f := math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
				dst[i] = dtype.BF16ToF32(dtype.F32ToBF16(f))
			}
		case dtype.F16:
			for i := range dst {
				f := math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
				dst[i] = f16ToF32(f32ToF16(math.Float32bits(f)))
			}
		default:
			for i := range dst {
				dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
			}
		}
	case dtype.BF16:
		src = src[:2*len(dst)]
		switch modelType {
		case dtype.F16:
			for i := range dst {
				dst[i] = f16ToF32(f32ToF16(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16))
			}
		default: // BF16 and F32: widening is exact
			for i := range dst {
				dst[i] = dtype.BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
			}
		}
	case dtype.F16:
		src = src[:2*len(dst)]
		switch modelType {
		case dtype.BF16:
			for i := range dst {
				dst[i] = dtype.BF16ToF32(dtype.F32ToBF16(f16ToF32(binary.LittleEndian.Uint16(src[2*i:]))))
			}
		default: // F16 and F32: widening is exact
			for i := range dst {
				dst[i] = f16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
			}
		}
	}
}

// f16ToF32 is dtype.F16ToF32 (NaNs quieted, payload kept) without its
// normalisation loop: the F16 bits moved into float32 position are the
// value times 2^-112, exactly (a subnormal float32 for an F16 subnormal),
// and the multiply by 2^112 is exact.
func f16ToF32(h uint16) float32 {
	if h&0x7c00 == 0x7c00 { // Inf or NaN
		u := uint32(h&0x8000)<<16 | 0x7f800000 | uint32(h&0x3ff)<<13
		if h&0x3ff != 0 {
			u |= 0x00400000
		}
		return math.Float32frombits(u)
	}
	return math.Float32frombits(uint32(int32(uint32(h)<<16)>>3)&0x8fffe000) * 0x1p112
}

// f32ToF16 is dtype.F32ToF16 on the bit pattern u: round to nearest even,
// overflow to ±Inf, and a NaN to a quiet NaN with the top mantissa bits.
func f32ToF16(u uint32) uint16 {
	sign := uint16(u>>16) & 0x8000
	a := u & 0x7fffffff
	switch {
	case a > 0x7f800000: // NaN
		return sign | 0x7e00 | uint16(a&0x7fffff>>13)
	case a >= 0x477ff000: // rounds to 65536 or more, or Inf
		return sign | 0x7c00
	case a >= 0x38800000: // normal: rebias, then round (a carry is right)
		return f16Normal(u)
	case a < 0x33000000: // below 2^-25: zero
		return sign
	}
	// Subnormal: the significand with its implicit bit, shifted right by
	// 14..24 with round to nearest even.
	shift := 126 - a>>23
	m := a&0x7fffff | 0x800000
	h := m >> shift
	rest := m & (1<<shift - 1)
	if half := uint32(1) << (shift - 1); rest > half || rest == half && h&1 == 1 {
		h++
	}
	return sign | uint16(h)
}

// f16Normal is f32ToF16 for u whose magnitude lies in [2^-14, 65520), the
// F16 normal range after rounding.
func f16Normal(u uint32) uint16 {
	a := u & 0x7fffffff
	return uint16(u>>16)&0x8000 | uint16((a-0x38000000+0xfff+(a>>13)&1)>>13)
}

// firstNonFinite returns the index of the first NaN or ±Inf in v, or -1.
func firstNonFinite(v []float32) int {
	for i, f := range v {
		if math.Float32bits(f)&0x7f800000 == 0x7f800000 {
			return i
		}
	}
	return -1
}

// rawChunk is the number of elements decoded to float32 at a time by the
// generic path (a multiple of every block size).
const rawChunk = 8 << 10

// QuantizeRaw quantizes the little-endian srcType elements of src exactly
// as QuantizeBlocks quantizes the values DecodeRaw gives for them, that is,
// as bitsandbytes quantizes a srcType checkpoint loaded with model dtype
// modelType: the same dst and absmax, the same layout rules (src is a run of
// whole blocks, except that the last run of a tensor may end in a partial
// block), the same panics for an invalid q or blocksize or a short dst or
// absmax.
//
// It returns the index in src of the first element whose decoded value is
// NaN or ±Inf, or -1: a converter that rejects such weights needs no
// separate scan (the codes are written either way, as the GPU would). Note
// that rounding can make a finite F32 element infinite in BF16 or F16.
//
// Every pair but F32→F32 has values that are BF16 or F16 numbers, and runs
// a loop on 16-bit patterns (a source in another format is first rounded
// to them, a chunk at a time). On amd64 CPUs with AVX2 the block
// statistics, the code selection and F32 to BF16 rounding run vector
// kernels, for F32→F32 too (the code selection with AVX-512 where the CPU
// has AVX-512 F and BW); elsewhere, or built with the purego tag,
// portable Go loops that give the same bytes (F32→F32: QuantizeBlocks on
// chunks). QuantizeRaw does not allocate and is safe for concurrent use. It returns an error wrapping ErrUnsupportedDType for
// other dtypes, and an error if len(src) is not a multiple of the element
// size.
func QuantizeRaw(dst []byte, absmax []float32, src []byte, srcType, modelType dtype.DType, blocksize int, q QuantType) (nonFinite int, err error) {
	return quantizeRaw(dst, absmax, src, srcType, modelType, blocksize, q, true)
}

// quantizeRaw is QuantizeRaw; simd false keeps it off the vector kernels
// (for the tests of the portable path).
func quantizeRaw(dst []byte, absmax []float32, src []byte, srcType, modelType dtype.DType, blocksize int, q QuantType, simd bool) (int, error) {
	n, err := checkRaw("QuantizeRaw", src, srcType, modelType)
	if err != nil {
		return -1, err
	}
	if !q.Valid() {
		panic("bnb: QuantizeRaw: invalid quant type " + q.String())
	}
	if !ValidBlocksize(blocksize) {
		panic("bnb: QuantizeRaw: invalid blocksize")
	}
	if int64(len(dst)) < PackedBytes(int64(n)) || int64(len(absmax)) < NumBlocks(int64(n), blocksize) {
		panic("bnb: QuantizeRaw: dst or absmax too short")
	}
	k := rawKernel{q: q, simd: simd, tab: tableFor(q), rcp: rcpTable(), bs: blocksize}
	return k.run(dst, absmax, src, n, srcType, modelType), nil
}

// BlockAbsmaxRaw computes the absmax of each block of the little-endian
// srcType elements of src exactly as QuantizeRaw does, without encoding
// (the statistics pass of a double-quantizing converter). It returns the
// index of the first non-finite decoded element, or -1, and errors, like
// QuantizeRaw; it panics if blocksize is invalid or absmax too short. It
// does not allocate.
func BlockAbsmaxRaw(absmax []float32, src []byte, srcType, modelType dtype.DType, blocksize int) (nonFinite int, err error) {
	return blockAbsmaxRaw(absmax, src, srcType, modelType, blocksize, true)
}

// blockAbsmaxRaw is BlockAbsmaxRaw; simd false keeps it off the vector
// kernels.
func blockAbsmaxRaw(absmax []float32, src []byte, srcType, modelType dtype.DType, blocksize int, simd bool) (int, error) {
	n, err := checkRaw("BlockAbsmaxRaw", src, srcType, modelType)
	if err != nil {
		return -1, err
	}
	if !ValidBlocksize(blocksize) {
		panic("bnb: BlockAbsmaxRaw: invalid blocksize")
	}
	if int64(len(absmax)) < NumBlocks(int64(n), blocksize) {
		panic("bnb: BlockAbsmaxRaw: absmax too short")
	}
	k := rawKernel{simd: simd, rcp: rcpTable(), bs: blocksize}
	return k.run(nil, absmax, src, n, srcType, modelType), nil
}

// A rawKernel runs one QuantizeRaw or BlockAbsmaxRaw call. A nil tab means
// absmax only (dst is then nil too).
type rawKernel struct {
	q    QuantType
	simd bool // use the vector kernels where the CPU has them
	tab  *codeTable
	rcp  *[rcpTableLen / 4]byte
	bs   int
}

// run dispatches on the dtype pair; src holds n elements.
func (k *rawKernel) run(dst []byte, absmax []float32, src []byte, n int, srcType, modelType dtype.DType) int {
	switch {
	case srcType == dtype.F32 && modelType == dtype.F32:
		if k.simd && haveAVX2 {
			return k.f32(dst, absmax, src)
		}
		return k.generic(dst, absmax, src, n, srcType, modelType)
	case srcType == modelType || modelType == dtype.F32:
		// BF16 or F16 values, widened exactly.
		return k.half(dst, absmax, src, srcType == dtype.F16)
	}
	return k.converted(dst, absmax, src, n, srcType, modelType)
}

// generic decodes rawChunk elements at a time to float32 and runs the
// float32 kernels on them.
func (k *rawKernel) generic(dst []byte, absmax []float32, src []byte, n int, srcType, modelType dtype.DType) int {
	size := srcType.Size()
	nonFinite := -1
	var buf [rawChunk]float32
	for off := 0; off < n; off += rawChunk {
		m := min(rawChunk, n-off)
		vals := buf[:m]
		decodeRaw(vals, src[off*size:(off+m)*size], srcType, modelType)
		if nonFinite < 0 {
			if i := firstNonFinite(vals); i >= 0 {
				nonFinite = off + i
			}
		}
		k.float32s(dst, absmax, vals, off)
	}
	return nonFinite
}

// float32s quantizes (or, with a nil table, takes the absmax of) vals, the
// decoded elements from index off on, into dst and absmax.
func (k *rawKernel) float32s(dst []byte, absmax []float32, vals []float32, off int) {
	if k.tab == nil {
		BlockAbsmax(absmax[off/k.bs:], vals, k.bs)
		return
	}
	quantizeBlocks(dst[off/2:], absmax[off/k.bs:], vals, k.bs, k.tab, k.rcp)
}

// converted rounds the source elements to 16-bit patterns of the model
// dtype (BF16 or F16, which the source is not) rawChunk at a time and runs
// the 16-bit kernel on them.
func (k *rawKernel) converted(dst []byte, absmax []float32, src []byte, n int, srcType, modelType dtype.DType) int {
	nonFinite := -1
	size := srcType.Size()
	f16 := modelType == dtype.F16
	var buf [2 * rawChunk]byte
	for off := 0; off < n; off += rawChunk {
		m := min(rawChunk, n-off)
		h, in := buf[:2*m], src[off*size:(off+m)*size]
		switch {
		case srcType == dtype.F32 && f16:
			roundF32ToF16(h, in)
		case srcType == dtype.F32:
			if !k.simd || !roundBF16SIMD(h, in) {
				roundF32ToBF16(h, in)
			}
		case f16: // from BF16
			for i := range m {
				binary.LittleEndian.PutUint16(h[2*i:], f32ToF16(uint32(binary.LittleEndian.Uint16(in[2*i:]))<<16))
			}
		default: // F16 to BF16
			for i := range m {
				f := f16ToF32(binary.LittleEndian.Uint16(in[2*i:]))
				binary.LittleEndian.PutUint16(h[2*i:], uint16(bf16RNE(math.Float32bits(f))))
			}
		}
		var d []byte
		if dst != nil {
			d = dst[off/2:]
		}
		if i := k.half(d, absmax[off/k.bs:], h, f16); i >= 0 && nonFinite < 0 {
			nonFinite = off + i
		}
	}
	return nonFinite
}

// roundF32ToBF16 rounds the F32 elements of src to BF16 patterns in dst
// (dtype.F32ToBF16: round to nearest even, NaN to 0x7FC0).
func roundF32ToBF16(dst, src []byte) {
	n := min(len(src)/4, len(dst)/2)
	for i := 0; i+2 <= n; i += 2 {
		w := binary.LittleEndian.Uint64(src[4*i:])
		binary.LittleEndian.PutUint32(dst[2*i:], bf16RNE(uint32(w))|bf16RNE(uint32(w>>32))<<16)
	}
	if n%2 == 1 {
		binary.LittleEndian.PutUint16(dst[2*n-2:], uint16(bf16RNE(binary.LittleEndian.Uint32(src[4*n-4:]))))
	}
}

// bf16RNE is dtype.F32ToBF16 on bit patterns, without a branch.
func bf16RNE(u uint32) uint32 {
	h := (u + 0x7fff + (u>>16)&1) >> 16
	if u&0x7fffffff > 0x7f800000 {
		h = 0x7fc0
	}
	return h
}

// roundF32ToF16 rounds the F32 elements of src to F16 patterns in dst
// (dtype.F32ToF16: round to nearest even).
func roundF32ToF16(dst, src []byte) {
	n := len(src) / 4
	dst = dst[:2*n]
	for i := range n {
		u := binary.LittleEndian.Uint32(src[4*i:])
		h := f16Normal(u)
		if a := u & 0x7fffffff; a-0x38800000 >= 0x477ff000-0x38800000 {
			h = f32ToF16(u) // zero, subnormal, overflow, Inf or NaN
		}
		binary.LittleEndian.PutUint16(dst[2*i:], h)
	}
}

// Lane constants for SWAR arithmetic on four 16-bit lanes of a uint64.
const (
	lanes16 = 0x0001_0001_0001_0001
	laneTop = 0x8000 * lanes16 // the top bit of every lane
	laneMag = 0x7fff * lanes16 // every lane's magnitude bits
)

// laneMax returns the lane-wise maximum of a and b, whose lanes are below
// 0x8000. (b|top)-a never borrows across lanes; a lane of it is
// 0x8000+b-a, whose top bit says b >= a.
func laneMax(a, b uint64) uint64 {
	d := (b | laneTop) - a
	ge := d & laneTop
	return a + d&(ge-ge>>15)
}

// bf16Stats returns the largest magnitude (bits & 0x7fff) of the BF16
// elements of blk, which holds a multiple of eight, and whether one of
// them is a subnormal, a case the fast loop leaves to the reference path.
// Zeros need no care. A result of 0x7f80 or more means an infinity or a
// NaN.
func bf16Stats(blk []byte) (mx uint32, subnormal bool) {
	var m0, m1 uint64
	normal := uint64(laneTop) // a lane's top bit is cleared by a zero or subnormal
	for b := blk; len(b) >= 16; b = b[16:] {
		w0 := binary.LittleEndian.Uint64(b) & laneMag
		w1 := binary.LittleEndian.Uint64(b[8:]) & laneMag
		// m+0x7f80 reaches the top bit exactly when m >= 0x80.
		normal &= (w0 + 0x7f80*lanes16) & (w1 + 0x7f80*lanes16)
		m0, m1 = laneMax(m0, w0), laneMax(m1, w1)
	}
	m := laneMax(m0, m1)
	m = laneMax(m, m>>32)
	mx = max(uint32(m)&0xffff, uint32(m>>16)&0xffff)
	if normal != laneTop { // a zero or a subnormal: which?
		for i := 0; i+2 <= len(blk); i += 2 {
			if m := binary.LittleEndian.Uint16(blk[i:]) & 0x7fff; m != 0 && m < 0x80 {
				return mx, true
			}
		}
	}
	return mx, false
}

// bf16Rcp holds rcpApprox of the float32 with the bit pattern mx<<16 for
// every positive, normal, finite BF16 magnitude pattern mx (0x80 <= mx <
// 0x7f80; the other entries are 0): 128 KiB that replace a division and a
// table lookup per block.
var bf16Rcp = sync.OnceValue(func() *[0x8000]float32 {
	t := rcpTable()
	r := new([0x8000]float32)
	for mx := uint32(0x80); mx < 0x7f80; mx++ {
		r[mx] = rcpApproxT(t, math.Float32frombits(mx<<16))
	}
	return r
})

// half quantizes (or takes the absmax of) the BF16 elements of src, or
// with f16 set the F16 elements. Whole blocks whose values need no care
// take the fast loop; the others (and a partial last block) go through
// float32s, so that both give the same bytes:
//   - BF16: blocks with an infinity, a NaN or a subnormal (which the GPU
//     reads as zero);
//   - F16: blocks with an infinity or a NaN, and blocks whose absmax is
//     below 2^-14, whose reciprocal is too large for the scaled multiply of
//     encodeF16. F16 subnormals are normal float32 values, which need no
//     flushing.
//
// Blocks go in chunks of up to halfChunk: first the absmax and reciprocal
// of each, then the codes of the whole chunk (in one call of the vector
// kernel where there is one), then the blocks that need care.
func (k *rawKernel) half(dst []byte, absmax []float32, src []byte, f16 bool) int {
	const halfChunk = 128
	t := dtype.BF16
	if f16 {
		t = dtype.F16
	}
	var rs [halfChunk]float32
	var slow [halfChunk]bool
	var st [halfChunk]uint32 // block statistics, as blockStatsSIMD writes them
	bt, ft := bf16Rcp(), f16Rcp()
	nonFinite := -1
	bpb := 2 * k.bs // bytes per block
	full := len(src) / bpb
	for b0 := 0; b0 < full; b0 += halfChunk {
		nb := min(halfChunk, full-b0)
		am := absmax[b0 : b0+nb]
		anySlow := false
		if !k.simd || !blockStatsSIMD(st[:nb], src[b0*bpb:(b0+nb)*bpb], k.bs) {
			for j := range nb {
				blk := src[(b0+j)*bpb : (b0+j+1)*bpb]
				if f16 {
					st[j] = halfMax(blk)
				} else {
					mx, sub := bf16Stats(blk)
					st[j] = mx
					if sub {
						st[j] |= 1 << 16
					}
				}
			}
		}
		if f16 {
			anySlow = f16Scales(am, rs[:nb], slow[:nb], st[:nb], ft)
		} else {
			anySlow = bf16Scales(am, rs[:nb], slow[:nb], st[:nb], bt)
		}
		if k.tab != nil {
			out := dst[b0*k.bs/2 : (b0+nb)*k.bs/2]
			in := src[b0*bpb : (b0+nb)*bpb]
			if !k.simd || !encodeBlocksSIMD(out, in, rs[:nb], k.bs, f16, k.q) {
				for j := range nb {
					o, blk := out[j*k.bs/2:(j+1)*k.bs/2], in[j*bpb:(j+1)*bpb]
					if f16 {
						encodeF16(o, blk, rs[j], k.tab)
					} else {
						encodeBF16(o, blk, rs[j], k.tab)
					}
				}
			}
		}
		if anySlow {
			for j := range nb {
				if slow[j] {
					e0 := (b0 + j) * k.bs
					if i := k.slowBlock(dst, absmax, src[2*e0:2*e0+bpb], e0, t); i >= 0 && nonFinite < 0 {
						nonFinite = i
					}
				}
			}
		}
	}
	if e0 := full * k.bs; 2*e0 < len(src) {
		if i := k.slowBlock(dst, absmax, src[2*e0:], e0, t); i >= 0 && nonFinite < 0 {
			nonFinite = i
		}
	}
	return nonFinite
}

// bf16Scales sets the absmax am[j] and reciprocal rs[j] of each block
// from its statistics st[j] (the largest magnitude pattern, plus 1<<16 if
// an element is a BF16 subnormal), and reports whether a block is slow[j]:
// a block is fast where the reciprocal table rcp has an entry for it,
// 0x80 <= st < 0x7f80 (no subnormal, infinity or NaN). All-zero blocks get
// r = +Inf; slow ones am = r = 0, for the reference path to fill in. (A
// loop of its own, apart from half's many live values, which kept the
// compiler spilling in the loop.)
func bf16Scales(am, rs []float32, slow []bool, st []uint32, rcp *[0x8000]float32) (anySlow bool) {
	am, rs, slow = am[:len(st)], rs[:len(st)], slow[:len(st)]
	for j, s := range st {
		a, r, sl := math.Float32frombits(s<<16), rcp[s&0x7fff], false
		if s-0x80 >= 0x7f80-0x80 {
			a, r = 0, float32(math.Inf(1))
			if s != 0 {
				r, sl, anySlow = 0, true, true
			}
		}
		am[j], rs[j], slow[j] = a, r, sl
	}
	return anySlow
}

// f16Scales is bf16Scales for F16 blocks: st[j] & 0xffff is the largest
// magnitude pattern (the subnormal bit does not matter), and a block is
// fast where 0x0400 <= it < 0x7c00 (no infinity or NaN, and an absmax of
// at least 2^-14, as encodeF16's scaled multiply needs).
func f16Scales(am, rs []float32, slow []bool, st []uint32, rcp *[0x8000]float32) (anySlow bool) {
	am, rs, slow = am[:len(st)], rs[:len(st)], slow[:len(st)]
	for j, s := range st {
		s &= 0xffff
		a, r, sl := math.Float32frombits(s<<13+(127-15)<<23), rcp[s&0x7fff], false
		if s-0x0400 >= 0x7c00-0x0400 {
			a, r = 0, float32(math.Inf(1))
			if s != 0 {
				r, sl, anySlow = 0, true, true
			}
		}
		am[j], rs[j], slow[j] = a, r, sl
	}
	return anySlow
}

// f32 quantizes (or takes the absmax of) the F32 elements of src with the
// vector kernels, as half does for 16-bit elements. Blocks with an
// infinity, a NaN or a subnormal go through float32s. The reciprocals of
// a chunk are looked up together, as in quantizeBlocks, so that the misses
// in the 2 MiB table overlap.
func (k *rawKernel) f32(dst []byte, absmax []float32, src []byte) int {
	const chunk = 128
	var rs [chunk]float32
	var st [chunk]uint32
	nonFinite := -1
	bpb := 4 * k.bs // bytes per block
	full := len(src) / bpb
	for b0 := 0; b0 < full; b0 += chunk {
		nb := min(chunk, full-b0)
		in := src[b0*bpb : (b0+nb)*bpb]
		blockStats32SIMD(st[:nb], in, k.bs)
		am := absmax[b0 : b0+nb]
		anySlow := false
		for j, s := range st[:nb] {
			switch {
			case s >= 0x7f800000: // a subnormal (bit 31), an infinity or a NaN
				am[j] = 0
				anySlow = true
			case s == 0:
				am[j] = 0
			default:
				am[j] = math.Float32frombits(s)
			}
		}
		for j, a := range am {
			if st[j] == 0 {
				rs[j] = float32(math.Inf(1))
			} else {
				rs[j] = rcpApproxT(k.rcp, a)
			}
		}
		if k.tab != nil {
			encodeBlocks32SIMD(dst[b0*k.bs/2:(b0+nb)*k.bs/2], in, rs[:nb], k.bs, k.q)
		}
		if anySlow {
			for j, s := range st[:nb] {
				if s >= 0x7f800000 {
					e0 := (b0 + j) * k.bs
					if i := k.slowBlock(dst, absmax, src[4*e0:4*e0+bpb], e0, dtype.F32); i >= 0 && nonFinite < 0 {
						nonFinite = i
					}
				}
			}
		}
	}
	if e0 := full * k.bs; 4*e0 < len(src) {
		if i := k.slowBlock(dst, absmax, src[4*e0:], e0, dtype.F32); i >= 0 && nonFinite < 0 {
			nonFinite = i
		}
	}
	return nonFinite
}

// slowBlock quantizes the block blk of BF16, F16 or F32 elements (dtype
// t), which starts at element e0, through float32s. It returns the index
// of its first non-finite element, or -1. (Its buffer is on the stack,
// sized for small blocks where it can be: Go clears it on every call.)
func (k *rawKernel) slowBlock(dst []byte, absmax []float32, blk []byte, e0 int, t dtype.DType) int {
	n := len(blk) / t.Size()
	if n <= 256 {
		var buf [256]float32
		return k.slowBlockIn(buf[:n], dst, absmax, blk, e0, t)
	}
	var buf [4096]float32
	return k.slowBlockIn(buf[:n], dst, absmax, blk, e0, t)
}

func (k *rawKernel) slowBlockIn(vals []float32, dst []byte, absmax []float32, blk []byte, e0 int, t dtype.DType) int {
	decodeRaw(vals, blk, t, t)
	k.float32s(dst, absmax, vals, e0)
	if i := firstNonFinite(vals); i >= 0 {
		return e0 + i
	}
	return -1
}

// halfMax returns the largest magnitude (bits & 0x7fff) of the 16-bit
// elements of blk, which holds a multiple of eight.
func halfMax(blk []byte) uint32 {
	var m0, m1 uint64
	for b := blk; len(b) >= 16; b = b[16:] {
		m0 = laneMax(m0, binary.LittleEndian.Uint64(b)&laneMag)
		m1 = laneMax(m1, binary.LittleEndian.Uint64(b[8:])&laneMag)
	}
	m := laneMax(m0, m1)
	m = laneMax(m, m>>32)
	return max(uint32(m)&0xffff, uint32(m>>16)&0xffff)
}

// f16Rcp holds rcpApprox of the float32 value of mx times 2^112 (the scale
// of encodeF16) for every normal, finite F16 magnitude pattern mx (0x0400
// <= mx < 0x7c00; the other entries are 0; 1/x of such a value is never
// subnormal).
var f16Rcp = sync.OnceValue(func() *[0x8000]float32 {
	t := rcpTable()
	r := new([0x8000]float32)
	for mx := uint32(0x0400); mx < 0x7c00; mx++ {
		r[mx] = rcpApproxT(t, math.Float32frombits(mx<<13+(127-15)<<23)) * 0x1p112
	}
	return r
})

// encodeF16 writes the codes of the F16 elements of blk (a multiple of
// eight) scaled by r2 = r·2^112, two per byte, into out. It multiplies
// the F16 bits moved into float32 position without rebiasing the exponent,
// a value 2^112 times too small (a subnormal float32 for an F16 subnormal,
// exactly), by r2: the exact product, and so its rounding, is that of x·r.
func encodeF16(out []byte, blk []byte, r2 float32, tab *codeTable) {
	for len(blk) >= 16 && len(out) >= 4 {
		w0 := binary.LittleEndian.Uint64(blk)
		w1 := binary.LittleEndian.Uint64(blk[8:])
		a, b, c, d := uint32(w0), uint32(w0>>32), uint32(w1), uint32(w1>>32)
		p0 := tab.pack(mulBits(f16Lo(a), r2), mulBits(f16Hi(a), r2))
		p1 := tab.pack(mulBits(f16Lo(b), r2), mulBits(f16Hi(b), r2))
		p2 := tab.pack(mulBits(f16Lo(c), r2), mulBits(f16Hi(c), r2))
		p3 := tab.pack(mulBits(f16Lo(d), r2), mulBits(f16Hi(d), r2))
		binary.LittleEndian.PutUint32(out, uint32(p0)|uint32(p1)<<8|uint32(p2)<<16|uint32(p3)<<24)
		blk, out = blk[16:], out[4:]
	}
}

// f16Lo and f16Hi move the F16 in the low or high half of w into float32
// position (sign to bit 31, exponent and mantissa to bits 27-13): the
// arithmetic shift copies the sign into bits 30-28, which the mask clears.
func f16Lo(w uint32) uint32 { return uint32(int32(w<<16)>>3) & 0x8fffe000 }
func f16Hi(w uint32) uint32 { return uint32(int32(w)>>3) & 0x8fffe000 }

// encodeBF16 writes the codes of the BF16 elements of blk (a multiple of
// eight, no subnormals) scaled by r, two per byte, into out.
func encodeBF16(out []byte, blk []byte, r float32, tab *codeTable) {
	for len(blk) >= 16 && len(out) >= 4 {
		w0 := binary.LittleEndian.Uint64(blk)
		w1 := binary.LittleEndian.Uint64(blk[8:])
		a, b, c, d := uint32(w0), uint32(w0>>32), uint32(w1), uint32(w1>>32)
		p0 := tab.pack(mulBits(a<<16, r), mulBits(a&0xffff0000, r))
		p1 := tab.pack(mulBits(b<<16, r), mulBits(b&0xffff0000, r))
		p2 := tab.pack(mulBits(c<<16, r), mulBits(c&0xffff0000, r))
		p3 := tab.pack(mulBits(d<<16, r), mulBits(d&0xffff0000, r))
		binary.LittleEndian.PutUint32(out, uint32(p0)|uint32(p1)<<8|uint32(p2)<<16|uint32(p3)<<24)
		blk, out = blk[16:], out[4:]
	}
}

// mulBits returns the bit pattern of the float32 with bit pattern u times r.
func mulBits(u uint32, r float32) uint32 {
	return math.Float32bits(math.Float32frombits(u) * r)
}
